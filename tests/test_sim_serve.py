"""`twin sim --serve`: the live view of the simulated fleet while it runs."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from sim.cli import _LiveView
from sim.config import SimConfig, SimConfigError
from sim.faults import load_faults
from sim.runner import run_simulation
from twin.cli import main


def test_the_live_view_serves_the_running_fleet_and_stops_with_the_run() -> None:
    live = _LiveView("127.0.0.1:0", stay=False)
    seen: dict[str, Any] = {}

    def started(fleet: Any) -> None:
        live.start(fleet)
        with urllib.request.urlopen(f"{live.server.url}api/rollups") as reply:
            seen["rollups"] = json.load(reply)

    def finishing(fleet: Any) -> None:
        with urllib.request.urlopen(f"{live.server.url}readyz") as reply:
            seen["ready"] = reply.status
        live.finish(fleet)

    config = SimConfig(assets=60, duration_s=300.0)
    run_simulation(config, load_faults("none"), on_fleet=started, before_close=finishing)
    assert seen["ready"] == 200
    assert seen["rollups"]                                  # the tree was served
    with pytest.raises(OSError):                            # and is gone with the run
        urllib.request.urlopen(f"{live.server.url}healthz", timeout=2)


def test_serve_prints_the_address_on_stderr(capsys: Any) -> None:
    assert main(["sim", "--assets", "50", "--duration", "5m", "--faults", "none",
                 "--serve", "127.0.0.1:0"]) == 0
    assert "twin sim: live view at http://127.0.0.1:" in capsys.readouterr().err


def test_serving_beyond_loopback_without_a_token_is_refused_naming_the_option(
        monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.delenv("TWIN_TOKEN", raising=False)
    assert main(["sim", "--assets", "50", "--duration", "5m", "--serve", "0.0.0.0:0"]) == 2
    assert "--serve 0.0.0.0:0" in capsys.readouterr().err


def test_a_malformed_serve_address_is_refused() -> None:
    with pytest.raises(SimConfigError, match=r"--serve takes \[HOST:\]PORT, got 'x:y'"):
        _LiveView("x:y", stay=False)
