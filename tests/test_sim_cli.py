"""``twin sim`` on the command line: options, outputs, files and errors."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import re
import threading
from pathlib import Path

import pytest

from sim.cli import add_parser
from sim.config import SimConfigError, parse_duration, parse_mix, parse_speed
from twin import FleetModel

SHORT = ["--assets", "60", "--duration", "10m", "--seed", "4"]


def sim(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="twin")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sim", *argv])
    code: int = args.run(args)
    return code


def test_json_prints_the_report_and_nothing_else_on_stdout(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert sim([*SHORT, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["quality"]["all_match"] is True
    assert report["scenario"]["assets"] == 60


def test_summary_is_plain_text_off_a_terminal_with_progress_lines_on_stderr(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert sim(SHORT) == 0
    out, err = capsys.readouterr()
    assert "60 assets (3 owners, 8 regions" in out
    for title in ("Data quality", "Offline detection", "Roll-ups at the end", "Run"):
        assert f"\n{title}\n" in out
    assert re.search(r"accepted\s+[\d,]+\s+[\d,]+\s+ok", out)
    assert "\x1b[" not in out                       # no terminal escapes in a pipe
    assert "twin sim: 100% (600 s of virtual time" in err
    assert "actor_failed" not in err                # runtime logs stay quiet by default


def test_report_file_and_fleet_out_are_written_and_the_fleet_loads_back(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet, report = tmp_path / "fleet.json", tmp_path / "report.json"
    assert sim([*SHORT, "--fleet-out", str(fleet), "--report", str(report)]) == 0
    model = FleetModel.load(fleet)
    assert len(model.assets) == 60
    first = json.loads(report.read_text())
    # the written fleet, simulated again, gives the same report
    assert sim(["--fleet", str(fleet), "--duration", "10m", "--seed", "4", "--report",
                str(report)]) == 0
    second = json.loads(report.read_text())
    for section in ("truth", "quality", "offline_detection", "rollups"):
        assert first[section] == second[section]
    capsys.readouterr()


def test_mix_sites_and_report_intervals_shape_the_generated_fleet(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert sim(["--assets", "100", "--duration", "2m", "--mix", "battery=3,charger=1",
                "--sites", "10", "--owners", "2", "--regions", "4", "--report-every",
                "battery=20", "--faults", "none", "--json"]) == 0
    scenario = json.loads(capsys.readouterr().out)["scenario"]
    assert scenario["kinds"] == {"battery": 75, "charger": 25}
    assert (scenario["owners"], scenario["regions"], scenario["sites"]) == (2, 4, 10)


@pytest.mark.parametrize(("argv", "message"), [
    (["--mix", "turbine=0.5,solar=0.5"], "--mix: unknown kind 'solar' (valid: turbine, battery, "
                                         "charger)"),
    (["--mix", "turbine=half"], "--mix: turbine='half' is not a number"),
    (["--duration", "2 weeks"], "--duration: '2 weeks' is not a duration (examples: 90s, 15m"),
    (["--speed", "fast"], "--speed: 'fast' is neither a factor (e.g. 60) nor 'max'"),
    (["--step", "60s"], "--step: expected 1 to 20 seconds, got 60"),
    (["--assets", "0"], "--assets: expected at least 1 asset, got 0"),
    (["--faults", "nope.json"], "--faults nope.json: cannot read it"),
    (["--deadband", "turbine"], "--deadband: 'turbine' is not kind=value"),
    (["--dispatch", "acme:lots@1m-2m"], "--dispatch 'acme:lots@1m-2m': 'lots' is not a power in "
                                        "kW (examples: 500, -250, 1.5MW)"),
    (["--dispatch", "acme@1m-2m"], "--dispatch 'acme@1m-2m': expected PATH:KW@START-END"),
    (["--assets", "50", "--dispatch", "nowhere:5@1m-2m"],
     "--dispatch 'nowhere:5@1m-2m': unknown path 'nowhere' (valid, e.g.: acme, borealis"),
    (["--dispatch", "none", "--dispatch", "acme:5@1m-2m"], "--dispatch none: runs no dispatch, "
                                                           "so it cannot be given with other"),
    (["--scenario", "nope.json"], "--scenario nope.json: cannot read it"),
])
def test_bad_options_are_refused_with_the_option_and_its_value(
        argv: list[str], message: str) -> None:
    with pytest.raises(SimConfigError, match=re.escape(message)):
        sim(argv)


def test_help_documents_every_option_with_an_example(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    with pytest.raises(SystemExit):
        sim(["--help"])
    text = capsys.readouterr().out
    for option in ("--assets", "--fleet", "--owners", "--regions", "--sites", "--mix",
                   "--duration", "--speed", "--seed", "--faults", "--report", "--json",
                   "--fleet-out", "--store", "--step", "--batch", "--report-every",
                   "--deadband", "--verbose", "--dispatch", "--scenario"):
        assert option in text
    assert "twin sim --assets 2000 --duration 2h --speed max --faults default" in text
    assert "docs/simulator.md" in text


def test_parsers_read_the_usual_spellings() -> None:
    assert parse_duration("90") == parse_duration("90s") == 90.0
    assert parse_duration("15m") == 900.0
    assert parse_duration("2h") == 7200.0
    assert parse_duration("1.5d") == 129600.0
    assert parse_speed("max") is None
    assert parse_speed("60x") == parse_speed("60") == 60.0
    assert parse_mix("turbine=2,battery=2") == {"turbine": 0.5, "battery": 0.5}


def test_dispatch_options_and_a_scenario_file_run_and_the_summary_shows_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"dispatch": [
        {"path": "borealis", "target_kw": -300, "start": "2m", "end": "8m"}]}))
    assert sim([*SHORT, "--dispatch", "cirrus:500@1m-9m", "--scenario", str(scenario),
                "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(d["path"], d["target_kw"], d["start_s"], d["end_s"]) for d in
            report["scenario"]["dispatches"]] == [("borealis", -300.0, 120.0, 480.0),
                                                  ("cirrus", 500.0, 60.0, 540.0)]
    assert {d["path"] for d in report["control"]["dispatches"].values()} == {"cirrus",
                                                                              "borealis"}
    assert sim([*SHORT, "--dispatch", "none"]) == 0
    out = capsys.readouterr().out
    assert "\nControl\n" in out and "dispatch d-" not in out
    assert sim(SHORT) == 0
    assert re.search(r"dispatch d-1 on \w+/\w+ .* kW from 1 min to 9 min", capsys.readouterr().out)


def test_with_a_store_the_run_keeps_a_durable_log(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'sim.db'}"
    codes: list[int] = []
    # in a thread with a deadline: a store that never acknowledges fails the test, not the run
    runner = threading.Thread(target=lambda: codes.append(
        sim(["--assets", "30", "--duration", "3m", "--store", url, "--json"])), daemon=True)
    runner.start()
    runner.join(30)
    assert not runner.is_alive(), "the run with a store did not finish within 30 s"
    assert codes == [0]
    report = json.loads(capsys.readouterr().out)
    assert report["quality"]["all_match"] is True
    assert report["scenario"]["store"] is True
    assert (tmp_path / "sim.db").stat().st_size > 0


@pytest.mark.skipif(importlib.util.find_spec("twin.web.cli") is None,
                    reason="twin.cli also needs twin.web.cli (the live view, in progress)")
def test_twin_cli_runs_sim_and_turns_bad_options_into_exit_status_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    from twin.cli import main

    assert main(["sim", *SHORT, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quality"]["all_match"] is True
    assert main(["sim", "--mix", "wind=1"]) == 2
    assert "twin sim: --mix: unknown kind 'wind'" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_summary_is_drawn_with_rich_and_progress_is_a_bar(
        monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = _Terminal(), _Terminal()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    assert sim(["--assets", "20", "--duration", "5m"]) == 0
    text = out.getvalue()
    assert "Data quality" in text
    assert "│" in text or "┃" in text                # rich's table borders
    assert "twin sim: 100%" not in err.getvalue()   # a bar, not plain lines
