"""The house stands: every module imports on its own, and imports point down the layer table
of DESIGN.md (read from the source with ``ast``, so a cycle or an upward import fails here)."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

from twin.core.rollup import (
    ROW_CAPACITY_W,
    ROW_OFFLINE,
    ROW_ONLINE,
    ROW_POWER_W,
    ROW_QUARANTINED,
    ROW_UNKNOWN,
    ROW_WIDTH,
)
from twin.core.states import OFFLINE, ONLINE, QUARANTINED, STATE_NAMES, UNKNOWN

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("twin", "actors", "supervisors", "sim")
THIRD_PARTY_OF_CORE = {"msgpack", "structlog"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def all_modules() -> list[str]:
    return sorted(module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                  if p.name != "__main__.py")


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every module ``module`` imports, at any depth of its code (``TYPE_CHECKING`` included)."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(found)


def top(name: str) -> str:
    return name.split(".", maxsplit=1)[0]


def under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def offenders(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{m} imports {i}" for m in modules for i in sorted(imports_of(m))
            if under(i, *forbidden)]


MODULES = all_modules()


def import_alone(module: str) -> str | None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return None if done.returncode == 0 else f"{module}: {done.stderr.strip()[-300:]}"


def test_every_module_imports_on_its_own_as_a_programs_first_import() -> None:
    # one fresh interpreter per module (a cycle hides when something else was imported first)
    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [f for f in pool.map(import_alone, MODULES) if f is not None]
    assert len(MODULES) > 50 and failures == []


def test_python_dash_m_twin_runs_the_command() -> None:
    done = subprocess.run([sys.executable, "-m", "twin", "--help"], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "COMMAND" in done.stdout
    for command in ("demo", "check", "node", "serve", "sim"):
        assert command in done.stdout


def test_the_domain_core_imports_only_the_stdlib_msgpack_structlog_and_itself() -> None:
    core = [m for m in MODULES if under(m, "twin.core")]
    assert core
    stdlib = sys.stdlib_module_names
    bad = [f"{m} imports {i}" for m in core for i in sorted(imports_of(m))
           if top(i) not in stdlib and top(i) not in THIRD_PARTY_OF_CORE
           and not under(i, "twin.core") and i != "__future__"]
    assert bad == []


def test_wire_imports_only_the_core() -> None:
    assert [i for i in imports_of("twin.wire") if under(i, "twin", "actors", "supervisors")
            and not under(i, "twin.core")] == []


def test_thespian_is_imported_only_under_twin_hosting() -> None:
    assert [m for m in MODULES if any(top(i) == "thespian" for i in imports_of(m))
            and not under(m, "twin.hosting")] == []


def test_sqlalchemy_and_database_drivers_are_imported_only_under_twin_store() -> None:
    drivers = {"sqlalchemy", "psycopg", "psycopg2", "sqlite3"}
    assert [m for m in MODULES if any(top(i) in drivers for i in imports_of(m))
            and not under(m, "twin.store")] == []


def test_aiohttp_is_imported_only_under_twin_web() -> None:
    assert [m for m in MODULES if any(top(i) == "aiohttp" for i in imports_of(m))
            and not under(m, "twin.web")] == []


def test_actors_and_supervisors_never_reach_above_the_core() -> None:
    low = [m for m in MODULES if under(m, "actors", "supervisors")]
    assert offenders(low, ("twin.fleet", "twin.hosting", "twin.store", "twin.web",
                           "twin.runtime", "twin.control", "twin.adapters", "sim")) == []
    assert [f"{m} imports {i}" for m in low for i in imports_of(m)
            if i == "twin"] == []        # the package's public face sits above them


def test_the_runtime_knows_nothing_of_hosting_store_facade_or_edges() -> None:
    runtime = [m for m in MODULES if under(m, "twin.runtime")]
    assert runtime
    assert offenders(runtime, ("twin.hosting", "twin.store", "twin.fleet", "twin.web",
                               "twin.cli", "twin.aio", "twin.testing", "sim")) == []


def test_control_sits_on_the_core_and_runtime_only() -> None:
    control = [m for m in MODULES if under(m, "twin.control")]
    assert len(control) >= 6
    assert offenders(control, ("twin.hosting", "twin.store", "twin.fleet", "twin.web",
                               "twin.adapters", "twin.cli", "twin.aio", "twin.testing",
                               "sim")) == []
    # the runtime, hosting and store know nothing of control's decisions
    lower = [m for m in MODULES if under(m, "twin.core", "twin.runtime", "twin.hosting",
                                         "twin.store", "actors", "supervisors")]
    assert offenders(lower, ("twin.control",)) == []


def test_hosting_and_store_stay_below_the_facade() -> None:
    lower = [m for m in MODULES if under(m, "twin.hosting", "twin.store")]
    assert offenders(lower, ("twin.fleet", "twin.web", "twin.cli", "twin.aio", "sim")) == []
    store = [m for m in MODULES if under(m, "twin.store")]
    # the store may use supervisors' pure restart-intensity function, nothing above the core
    assert offenders(store, ("twin.hosting", "twin.runtime", "actors")) == []


def test_nothing_in_twin_imports_the_simulator() -> None:
    assert offenders([m for m in MODULES if under(m, "twin")], ("sim",)) == []


def test_roll_up_rows_are_indexed_by_the_state_codes() -> None:
    assert (ROW_UNKNOWN, ROW_ONLINE, ROW_OFFLINE, ROW_QUARANTINED) == (
        UNKNOWN, ONLINE, OFFLINE, QUARANTINED)
    counted = {ROW_UNKNOWN, ROW_ONLINE, ROW_OFFLINE, ROW_QUARANTINED}
    assert ROW_POWER_W not in counted and ROW_CAPACITY_W not in counted
    assert ROW_WIDTH == len(counted) + 2 == ROW_CAPACITY_W + 1
    assert [STATE_NAMES[i] for i in sorted(counted)] == [
        "unknown", "online", "offline", "quarantined"]
