# twin: developer entry points. Every target builds and uses the project's own .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv test demo bench lint clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-7s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $@

venv: $(STAMP) ## create .venv and install twin with its test and dev extras

test: $(STAMP) ## run the test suite
	$(BIN)/python -m pytest

demo: $(STAMP) ## simulate 1,000 assets with faults for a minute, live at http://127.0.0.1:8080
	$(BIN)/twin sim --assets 1000 --duration 1h --speed 60 --seed 7 --faults default --serve

bench: $(STAMP) ## run the benchmarks and print their tables (BENCH_ARGS=--quick for a short run)
	$(BIN)/python bench/bench_core.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_ingest.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_multiproc.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_allocation.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_control.py $(BENCH_ARGS)

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check twin actors supervisors sim tests bench
	$(BIN)/mypy

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
