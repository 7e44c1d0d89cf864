"""Several actor systems joined by a Thespian convention, as machines would be: here two on
loopback with different ports. A node is killed whole (SIGKILL to its every process); the
fleet's heartbeats notice and restart its shard on the live machine from snapshot and log."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisors import SupervisionPolicy
from tests.polling import wait_until
from tests.test_multiproc import alive, descendants, parent
from twin import Fleet, FleetModel, Sample, TwinError, VirtualClock
from twin.hosting.system import free_port
from twin.testing import capture_logs, fleet_dict

pytestmark = pytest.mark.slow

START = 1767225600.0


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start_node(leader: int) -> subprocess.Popen[str]:
    """`twin node` joining the fleet's actor system (the convention leader) at ``leader``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "twin.cli", "node", "--join", f"127.0.0.1:{leader}",
         "--name", "n1", "--port", str(free_port())],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    assert "joined" in proc.stdout.readline()
    return proc


@contextlib.contextmanager
def stopped_at_exit(proc: subprocess.Popen[str]) -> Iterator[None]:
    """However the test ends, the node it started leaves (SIGTERM: it shuts its system)."""
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def open_with_node(**options: Any) -> tuple[Fleet, subprocess.Popen[str]]:
    """Open a fleet that waits for node n1, and start that node meanwhile (an operator
    would start the fleet, then `twin node` on each machine)."""
    leader = free_port()
    opened: list[Fleet | BaseException] = []

    def open_() -> None:
        try:
            opened.append(Fleet(admin_port=leader, nodes=["local", "n1"], **options))
        except BaseException as error:
            opened.append(error)

    opener = threading.Thread(target=open_)
    opener.start()
    # Thespian forks its admin without exec: a Popen in this thread at that moment would
    # leave the admin holding Popen's exec-status pipe, and Popen waiting on it for ever.
    # Start the node once the admin listens (later actors are forked by the admin itself).
    wait_until(lambda: listening(leader), timeout_s=30)
    proc = start_node(leader)
    opener.join(timeout=60)
    result = opened[0]
    if isinstance(result, BaseException):
        proc.terminate()
        raise result
    return result, proc


def kill_node(launcher: int, shard_pid: int) -> set[int]:
    """SIGKILL every process of the node: its launcher, its (detached) admin and all below."""
    admin = parent(shard_pid)
    doomed = {launcher, admin} | descendants(admin) | descendants(launcher)
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    return doomed


def test_a_dead_node_is_detected_by_heartbeat_and_its_shard_restarts_on_a_live_machine(
        tmp_path: Path) -> None:
    model = FleetModel.from_dict(fleet_dict(owners=2, regions=1, sites=4, assets=5, seed=1))
    clock = VirtualClock(START)
    fleet, proc = open_with_node(
        model=model, clock=clock, system="multiprocTCPBase", shards=2, join_timeout_s=30,
        heartbeat_timeout_s=1.0, store=f"sqlite:///{tmp_path / 'fleet.db'}",
        shard_restart=SupervisionPolicy(backoff_base_s=0.05, backoff_max_s=0.1))
    with fleet, stopped_at_exit(proc):
        placed = fleet.shards()
        assert [s["node"] for s in placed] == ["local", "n1"]
        remote_pid = placed[1]["pid"]
        assert parent(parent(remote_pid)) != parent(parent(placed[0]["pid"]))  # another system
        samples = [Sample(a, clock.now(), {"power_kw": 0.01}) for a in sorted(model.assets)]
        assert fleet.ingest(samples).accepted == len(samples)

        with capture_logs() as logs:
            doomed = kill_node(proc.pid, remote_pid)
            wait_until(lambda: not any(alive(p) for p in doomed))
            wait_until(lambda: (fleet.wait_for_shards(timeout_s=1)[1]["generation"],
                                fleet.shards()[1]["status"]) == (1, "running"), timeout_s=30)

        after = fleet.shards()[1]
        assert (after["status"], after["node"]) == ("running", "local")
        assert any(e["event"] == "shard_down" and "no heartbeat from node 'n1'" in e["reason"]
                   for e in logs)
        for rollup in fleet.rollups("owner").values():
            assert rollup.reporting == rollup.expected       # restored from the store
        assert fleet.asset(samples[-1].asset_id).last_sample_ts == START


def test_a_node_that_never_joins_fails_the_fleet_naming_it() -> None:
    model = FleetModel.from_dict(fleet_dict(owners=1, regions=1, sites=2, assets=2))
    with pytest.raises(TwinError, match=r"node\(s\) ghost did not join .* within 0.5s"):
        Fleet(model, clock=VirtualClock(START), system="multiprocTCPBase", shards=2,
              nodes=["local", "ghost"], join_timeout_s=0.5)


def test_nodes_need_the_tcp_base() -> None:
    model = FleetModel.from_dict(fleet_dict(owners=1, regions=1, sites=2, assets=2))
    with pytest.raises(TwinError, match="needs system='multiprocTCPBase'"):
        Fleet(model, nodes=["local", "n1"])


def test_twin_node_rejects_a_malformed_join_address(capsys: Any) -> None:
    from twin.cli import main

    assert main(["node", "--join", "nowhere", "--name", "n1"]) == 2
    assert "--join must be HOST:PORT" in capsys.readouterr().err
