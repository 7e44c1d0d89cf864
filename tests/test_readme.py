"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_embedding_example_runs_and_prints_what_it_says(capsys) -> None:  # type: ignore[no-untyped-def]
    block = next(b for b in python_blocks() if "from twin import Fleet, FleetModel" in b)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "acme/north/alpha: 2.100 MW now, 1 of 3 reporting (missing: b-01, c-01)" in out
    assert "asset 'b-01' is unknown (never reported)" in out


def test_the_custom_kind_example_defines_a_usable_kind() -> None:
    block = next(b for b in python_blocks() if "class HeatPump" in b)
    raw_model = {"owners": [{"id": "o", "regions": [{"id": "r", "sites": [{"id": "s", "assets": [
        {"id": "hp-1", "kind": "heat_pump", "rated_kw": 8, "refrigerant": "R290"}]}]}]}]}
    scope: dict[str, object] = {"raw_model": raw_model}
    exec(compile(block, "README.md", "exec"), scope)
    from twin import Fleet, Sample, VirtualClock

    clock = VirtualClock(1767225600.0)
    with Fleet(scope["model"], clock=clock) as fleet:  # type: ignore[arg-type]
        report = fleet.ingest([Sample("hp-1", clock.now(), {"power_kw": -3.0,
                                                             "flow_temp_c": 45.0})])
        assert report.accepted == 1
        assert fleet.asset("hp-1").reported["cop"] == 3.5
        assert fleet.asset("hp-1").expected["refrigerant"] == "R290"
