"""Shard hosts in processes of their own: killed, restarted, refilled; honest meanwhile.

These tests start real processes (Thespian's multiprocTCPBase) and kill them with SIGKILL.
They wait for real processes with deadlines (a restart is a process starting), never with a
bare sleep; time inside the fleet is a VirtualClock as everywhere else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisors import SupervisionPolicy
from tests.polling import wait_until
from twin import AddAsset, Fleet, FleetClosed, FleetModel, Sample, VirtualClock
from twin.core.errors import ShardDown
from twin.testing import capture_logs, fleet_dict

pytestmark = pytest.mark.slow

START = 1767225600.0
PROCS = "multiprocTCPBase"
QUICK = SupervisionPolicy(max_restarts=3, within_s=60.0, backoff_base_s=0.05,
                          backoff_max_s=0.2)
SLOW = SupervisionPolicy(max_restarts=3, within_s=60.0, backoff_base_s=60.0,
                         backoff_max_s=60.0, first_restart_immediate=False)

OpenFleet = Callable[..., Fleet]


@pytest.fixture
def model_dict() -> dict[str, Any]:
    return fleet_dict(owners=2, regions=2, sites=3, assets=5, seed=3)


@pytest.fixture
def open_fleet(tmp_path: Path, model_dict: dict[str, Any]) -> Iterator[OpenFleet]:
    opened: list[Fleet] = []

    def open_(*, store: bool = True, restart: SupervisionPolicy = QUICK, shards: int = 2
              ) -> Fleet:
        fleet = Fleet(FleetModel.from_dict(model_dict), clock=VirtualClock(START),
                      system=PROCS, shards=shards, shard_restart=restart,
                      store=f"sqlite:///{tmp_path / 'fleet.db'}" if store else None)
        opened.append(fleet)
        return fleet

    yield open_
    for fleet in opened:
        fleet.close()


def kill_shard(fleet: Fleet, index: int) -> int:
    pid = fleet.shards()[index]["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    return pid


def shard_status(fleet: Fleet, index: int) -> str:
    fleet.tick()
    return str(fleet.shards()[index]["status"])


def batch(fleet: Fleet, power: float) -> list[Sample]:
    now = fleet.clock.now()
    return [Sample(a, now, {"power_kw": power}) for a in sorted(fleet.model.assets)]


def assets_on(fleet: Fleet, index: int) -> set[str]:
    return {a for a, spec in fleet.model.assets.items() if fleet.placement[spec.site] == index}


def test_a_killed_shard_is_restarted_and_every_acknowledged_sample_is_reflected(
        open_fleet: OpenFleet) -> None:
    fleet = open_fleet()
    newest: dict[str, tuple[float, float]] = {}
    killed_at = 0.0
    deferred = 0
    for n in range(20):
        if n == 8:
            kill_shard(fleet, 0)
            killed_at = time.monotonic()
        samples = batch(fleet, power=0.005 * (n + 1))   # within every kind's bounds
        report = fleet.ingest(samples)              # returned: acknowledged, hence durable
        deferred += report.deferred
        for s in samples:
            newest[s.asset_id] = (s.ts, s.signals["power_kw"])
        fleet.advance(1.0)
    states = fleet.wait_for_shards(timeout_s=20)
    recovered_after = time.monotonic() - killed_at

    assert [s["status"] for s in states] == ["running", "running"]
    assert states[0]["generation"] == 1 and states[0]["restarts"] == 1
    assert deferred > 0                             # the kill did land mid-ingest
    for asset_id, (ts, power) in newest.items():
        view = fleet.asset(asset_id)
        assert (view.last_sample_ts, view.reported["power_kw"]) == (ts, power), asset_id
    for rollup in fleet.rollups("owner").values():
        assert rollup.reporting == rollup.expected and rollup.missing == ()
    total = sum(r.power_kw for r in fleet.rollups("owner").values())
    assert total == pytest.approx(sum(p for _, p in newest.values()))
    assert recovered_after < 10.0                   # the bound this test holds roll-ups to
    assert fleet.metrics()["shard_recoveries"] == 1


def test_while_a_shard_is_down_its_assets_count_as_unknown_and_are_listed_missing(
        open_fleet: OpenFleet) -> None:
    fleet = open_fleet(restart=SLOW)
    fleet.ingest(batch(fleet, power=0.02))
    down = assets_on(fleet, 0)
    with capture_logs() as logs:
        kill_shard(fleet, 0)
        wait_until(lambda: shard_status(fleet, 0) == "down")

    owners = fleet.rollups("owner").values()
    assert sum(r.expected for r in owners) == len(fleet.model.assets)   # nothing vanished
    assert sum(r.unknown for r in owners) == len(down)
    assert {m for r in owners for m in r.missing} == down
    assert sum(r.power_kw for r in owners) == pytest.approx(0.02 * (len(fleet.model.assets) -
                                                                   len(down)))
    assert any(e["event"] == "shard_down" and e["shard"] == 0 for e in logs)
    asset_id = sorted(down)[0]
    with pytest.raises(ShardDown, match="shard 0 is down"):
        fleet.asset(asset_id)
    report = fleet.ingest(batch(fleet, power=0.03))
    assert report.deferred == len(down)             # logged; applied when the shard is back
    with pytest.raises(ShardDown):
        fleet.apply(AddAsset(sorted(fleet.model.sites)[0],
                             {"id": "t-new", "kind": "turbine", "rated_kw": 100}))
    assert fleet.metrics()["shards_down"] == 1


def test_without_a_store_samples_for_a_down_shard_are_rejected_naming_why(
        open_fleet: OpenFleet) -> None:
    fleet = open_fleet(store=False, restart=SLOW)
    down = assets_on(fleet, 0)
    kill_shard(fleet, 0)
    wait_until(lambda: shard_status(fleet, 0) == "down")
    report = fleet.ingest(batch(fleet, power=0.03))
    assert report.rejected == len(down) and report.deferred == 0
    assert report.accepted == len(fleet.model.assets) - len(down)
    assert {e.asset_id for e in report.errors} == down
    assert "no store to keep the sample" in report.errors[0].reason


def test_without_a_store_a_restarted_shard_comes_back_with_its_assets_unknown(
        open_fleet: OpenFleet) -> None:
    fleet = open_fleet(store=False)
    fleet.ingest(batch(fleet, power=0.02))
    down = assets_on(fleet, 0)
    kill_shard(fleet, 0)
    wait_until(lambda: fleet.metrics()["shard_downs"] == 1)
    assert fleet.wait_for_shards(timeout_s=20)[0]["status"] == "running"
    # nothing can bring their states back: unknown until they report, never "online"
    owners = fleet.rollups("owner").values()
    assert sum(r.unknown for r in owners) == len(down)
    assert sum(r.reporting for r in owners) == len(fleet.model.assets) - len(down)
    assert fleet.asset(sorted(down)[0]).state == "unknown"


def test_a_crash_looping_shard_escalates_past_the_intensity_without_a_restart_storm(
        open_fleet: OpenFleet) -> None:
    policy = SupervisionPolicy(max_restarts=2, within_s=600.0, backoff_base_s=0.05,
                               backoff_max_s=0.1)
    fleet = open_fleet(restart=policy)
    fleet.ingest(batch(fleet, power=0.01))
    down = assets_on(fleet, 0)
    for _ in range(2):
        kill_shard(fleet, 0)
        wait_until(lambda: fleet.metrics()["shard_downs"] > fleet.metrics()["shard_recoveries"])
        fleet.wait_for_shards(timeout_s=20)
    kill_shard(fleet, 0)
    wait_until(lambda: shard_status(fleet, 0) == "failed")

    state = fleet.shards()[0]
    assert state["restarts"] == 2 and state["generation"] == 2
    assert "restart intensity exceeded" in state["reason"]
    owners = fleet.rollups("owner").values()
    assert sum(r.unknown for r in owners) == len(down)
    assert {m for r in owners for m in r.missing} == down
    # it stays failed: no further restart however long we look
    assert fleet.wait_for_shards(timeout_s=1)[0]["status"] == "failed"
    assert fleet.shards()[0]["generation"] == 2
    assert fleet.metrics()["shard_restarts"] == 2
    text = fleet.metrics_text()
    assert b"twin_shard_restarts_total 2.0" in text and b"twin_shards_down 1.0" in text


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def actor_system_processes(shard_pids: list[int]) -> set[int]:
    """A fleet's processes: its admin (Thespian detaches it: its parent is init) and all
    below it, found from a shard host: shard → fleet supervisor → admin."""
    admin = parent(parent(shard_pids[0]))
    return {admin} | descendants(admin)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_clean_close_leaves_no_process_behind(open_fleet: OpenFleet) -> None:
    fleet = open_fleet()
    shard_pids = [s["pid"] for s in fleet.shards()]
    started = actor_system_processes(shard_pids)
    assert set(shard_pids) < started and len(started) >= 4   # admin, supervisor, shards
    fleet.close()
    wait_until(lambda: not any(alive(p) for p in started))


CHILD = """
import os, sys
from twin import Fleet, FleetModel, VirtualClock
from twin.testing import fleet_dict
fleet = Fleet(FleetModel.from_dict(fleet_dict()), clock=VirtualClock(0.0),
              system="multiprocTCPBase", shards=2)
print(" ".join(str(s["pid"]) for s in fleet.shards()), flush=True)
sys.stdin.read()
"""


def test_a_killed_fleet_process_takes_its_shard_processes_with_it() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        shard_pids = [int(p) for p in child.stdout.readline().split()]
        everything = actor_system_processes(shard_pids)
        assert len(shard_pids) == 2 and all(alive(p) for p in shard_pids)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        wait_until(lambda: not any(alive(p) for p in everything), timeout_s=15)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def lock_held_elsewhere(fleet: Fleet) -> bool:
    lock = fleet._core.lock
    if lock.acquire(blocking=False):
        lock.release()
        return False
    return True


def test_close_ends_a_call_in_flight_at_once_instead_of_at_its_deadline(
        open_fleet: OpenFleet) -> None:
    """A stop signal may take the processes that would say a shard is gone with it: a call
    waiting on such a shard must not hold ``close`` for its whole deadline (60 s)."""
    fleet = open_fleet(store=False)
    pid = fleet.shards()[0]["pid"]
    asset = next(a for a, s in fleet.model.assets.items()
                 if fleet.placement[s.site] == 0)
    outcome: list[BaseException | None] = []

    def ask() -> None:
        try:
            fleet.asset(asset)
            outcome.append(None)
        except BaseException as error:        # what the waiting caller gets
            outcome.append(error)

    os.kill(pid, signal.SIGSTOP)              # alive, silent: its supervisor sees it running
    try:
        caller = threading.Thread(target=ask)
        caller.start()
        wait_until(lambda: lock_held_elsewhere(fleet), timeout_s=10)   # the call waits
        started = time.monotonic()
        closer = threading.Thread(target=fleet.close)
        closer.start()
        caller.join(timeout=10)
        assert not caller.is_alive() and time.monotonic() - started < 5
        assert isinstance(outcome[0], FleetClosed), outcome
    finally:
        os.kill(pid, signal.SIGCONT)
        closer.join(timeout=60)
