"""The twin command: the demo and the model check."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from twin._demo import run_demo
from twin.cli import main


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """main() configures structlog for the process, as a command should; undo it."""
    yield
    structlog.reset_defaults()


def test_demo_prints_the_tree_with_expected_and_reporting_counts() -> None:
    out = io.StringIO()
    fleet = run_demo(out, assets=120, minutes=2, seed=3)
    text = out.getvalue()
    for owner in fleet.model.owners:
        assert f"\n{owner}: " in text
    assert "of the" in text and "assets we expect are reporting" in text
    assert "quarantined" in text           # the crash-looping asset is reported


def test_demo_is_deterministic_for_a_seed() -> None:
    first, second = io.StringIO(), io.StringIO()
    run_demo(first, assets=80, minutes=1, seed=5)
    run_demo(second, assets=80, minutes=1, seed=5)
    assert first.getvalue() == second.getvalue()


def test_twin_demo_runs_as_a_command_with_its_store_in_the_data_directory(
        tmp_path: Path) -> None:
    env = {**os.environ, "TWIN_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "twin.cli", "demo", "--assets", "60",
                           "--minutes", "1"], capture_output=True, text=True, check=True, env=env)
    assert "reporting" in done.stdout
    assert "actor_failed" not in done.stdout      # logs go to stderr
    assert f"store: sqlite:///{tmp_path}/demo.db (6 batches in the durable log" in done.stdout
    assert (tmp_path / "demo.db").exists()


def test_check_prints_a_models_size(tmp_path: Path, example_dict: dict[str, Any],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(example_dict))
    assert main(["check", str(path)]) == 0
    assert "5 assets" in capsys.readouterr().out


def test_check_names_the_bad_field(tmp_path: Path, example_dict: dict[str, Any],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    example_dict["owners"][0]["regions"][0]["sites"][0]["assets"][0]["rated_kw"] = -3
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(example_dict))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "owners[0].regions[0].sites[0].assets[0].rated_kw" in err and "-3" in err
