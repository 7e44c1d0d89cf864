"""Control survives a restart from the store (SQLite and PostgreSQL): command states, leases
and their timers, desired versions that keep growing, and dispatches that resume."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from twin import Fleet, FleetModel, Sample, VirtualClock
from twin.control.transport import RecordingTransport

START = 1767225600.0

Opener = Callable[[RecordingTransport], Fleet]


def model_dict() -> dict[str, Any]:
    return {"defaults": {"report_interval_s": 10, "offline_after_s": 30},
            "owners": [{"id": "acme", "regions": [{"id": "north", "sites": [
                {"id": "alpha", "assets": [
                    {"id": f"b-{i}", "kind": "battery", "rated_kw": 100.0,
                     "capacity_kwh": 200.0} for i in range(3)]}]}]}]}


@pytest.fixture
def open_fleet(store_url: str, clock: VirtualClock) -> Iterator[Opener]:
    opened: list[Fleet] = []

    def open_(transport: RecordingTransport) -> Fleet:
        fleet = Fleet(FleetModel.from_dict(model_dict()), clock=clock, store=store_url,
                      transport=transport)
        opened.append(fleet)
        return fleet

    yield open_
    for fleet in reversed(opened):
        fleet.close()


def report(fleet: Fleet, clock: VirtualClock, power: float = 0.0) -> None:
    fleet.ingest([Sample(f"b-{i}", clock.now(), {"power_kw": power, "soc_pct": 50.0})
                  for i in range(3)])


def test_open_commands_and_their_leases_survive_a_restart(
        open_fleet: Opener, clock: VirtualClock) -> None:
    before = RecordingTransport()
    fleet = open_fleet(before)
    report(fleet, clock)
    unacked = fleet.command("b-0", {"setpoint_kw": 30.0}, ttl_s=20)
    applied = fleet.command("b-1", {"setpoint_kw": 0.0})
    rejected = fleet.command("b-2", {"setpoint_kw": 10.0})
    sent = {d.asset_id: d for d in before.take()}
    before.ack(sent["b-1"])
    before.reject(sent["b-2"], "inverter fault")
    fleet.advance(1)
    assert (unacked.state, applied.state, rejected.state) == ("sent", "applied", "rejected")
    fleet.close()

    after = RecordingTransport()
    clock.advance(1)
    reopened = open_fleet(after)
    records = {r.asset_id: r for r in reopened.commands()}
    assert {a: r.state for a, r in records.items()} == {
        "b-0": "sent", "b-1": "applied", "b-2": "rejected"}
    assert records["b-2"].reason == "inverter fault"
    # the unacknowledged one is sent again with its id: a device can tell it is a repeat
    [again] = after.take()
    assert (again.command_id, again.attempt, again.expires_at) == (
        unacked.command_id, 2, START + 20)
    after.ack(again)
    # versions keep growing across the restart
    newer = reopened.command("b-1", {"setpoint_kw": 5.0})
    assert newer.desired_version > rejected.desired_version
    after.take()
    # the lease keeps its end: the default goes out when it comes, not 20 s after the restart
    reopened.advance(18)
    assert [(d.asset_id, dict(d.desired)) for d in after.take()
            if d.asset_id == "b-0"] == [("b-0", {"setpoint_kw": 0.0})]
    # the revert: b-0 already reports 0 kW, so it counts as applied without an ack
    assert reopened.commands("b-0")[-1].state == "applied"
    assert unacked.command_id in {r.command_id for r in reopened.commands("b-0", "expired")}


def test_a_dispatch_resumes_after_a_restart_with_newer_leases(
        open_fleet: Opener, clock: VirtualClock, store_url: str) -> None:
    before = RecordingTransport(auto_ack=True)
    fleet = open_fleet(before)
    report(fleet, clock)
    dispatch = fleet.dispatch("acme", 150.0, duration_s=60)
    fleet.advance(1)
    last_version = max(d.desired_version for d in before.take())
    fleet.close()

    after = RecordingTransport(auto_ack=True)
    clock.advance(2)
    reopened = open_fleet(after)
    report(reopened, clock, 50.0)
    reopened.advance(1)
    [resumed] = reopened.dispatches()
    assert resumed.id == dispatch.id and resumed.status == "active"
    sent = after.take()
    assert {d.asset_id for d in sent} == {"b-0", "b-1", "b-2"}
    assert min(d.desired_version for d in sent) > last_version
    current = resumed.report()
    assert current is not None and current.allocated_kw == pytest.approx(150.0)
    assert current.achieved_kw == pytest.approx(150.0)
    # its reports are in the store
    reopened.flush()
    engine = create_engine(store_url, poolclass=NullPool)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT report FROM twin_dispatch_reports "
                                 "WHERE dispatch_id = 'd-1' ORDER BY id")).all()
    engine.dispose()
    assert len(rows) >= 3 and json.loads(rows[-1].report)["achieved_kw"] == 150.0


def test_a_dispatch_whose_time_ran_out_while_down_is_ended(
        open_fleet: Opener, clock: VirtualClock) -> None:
    fleet = open_fleet(RecordingTransport(auto_ack=True))
    report(fleet, clock)
    fleet.dispatch("acme", 150.0, duration_s=10)
    fleet.close()
    clock.advance(60)
    reopened = open_fleet(RecordingTransport(auto_ack=True))
    assert reopened.dispatches() == []
