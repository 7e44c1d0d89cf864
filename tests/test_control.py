"""Commands as leases: ids and versions, expiry to the kind's default, acknowledgements,
resends with backoff and a fleet budget, convergence and "not following" in roll-ups."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from twin import (
    AssetUnavailable,
    Fleet,
    FleetModel,
    InvalidCommand,
    Sample,
    VirtualClock,
)
from twin.control.retry import RetryPolicy
from twin.control.transport import Delivery, RecordingTransport
from twin.core.errors import VersionConflict
from twin.fleet.control import ControlOptions

START = 1767225600.0


def battery_site(n: int = 4, rated_kw: float = 100.0) -> dict[str, Any]:
    return {
        "defaults": {"report_interval_s": 10, "offline_after_s": 30},
        "owners": [{"id": "acme", "regions": [
            {"id": "north", "sites": [
                {"id": "alpha", "assets": [
                    {"id": f"b-{i}", "kind": "battery", "rated_kw": rated_kw,
                     "capacity_kwh": 2 * rated_kw} for i in range(n)]
                 + [{"id": "t-0", "kind": "turbine", "rated_kw": 3000}]}]}]}],
        "groups": {"pool": ["b-0", "b-1"]},
    }


@pytest.fixture
def fleet(clock: VirtualClock, transport: RecordingTransport) -> Iterator[Fleet]:
    with Fleet(FleetModel.from_dict(battery_site()), clock=clock, transport=transport,
               control=ControlOptions(retry=RetryPolicy(ack_timeout_s=2.0, max_attempts=3,
                                                        budget_per_s=1.0, budget_burst=3.0))
               ) as running:
        report(running, clock, {f"b-{i}": 0.0 for i in range(4)} | {"t-0": 1000.0})
        yield running


def report(fleet: Fleet, clock: VirtualClock, powers: dict[str, float], soc: float = 50.0
           ) -> None:
    fleet.ingest([Sample(a, clock.now(), {"power_kw": p} if a.startswith("t")
                         else {"power_kw": p, "soc_pct": soc}) for a, p in powers.items()])


def only(transport: RecordingTransport) -> Delivery:
    sent = transport.take()
    assert len(sent) == 1, sent
    return sent[0]


# -- a command's life ----------------------------------------------------------------------


def test_a_command_gets_an_id_a_growing_version_and_reaches_the_transport(
        fleet: Fleet, transport: RecordingTransport) -> None:
    first = fleet.command("b-0", {"setpoint_kw": 50.0})
    second = fleet.command("b-1", {"setpoint_kw": -20.0}, ttl_s=30)
    third = fleet.command("b-0", {"setpoint_kw": 40.0})
    assert first.desired_version < second.desired_version < third.desired_version
    sent = transport.take()
    assert [(d.command_id, d.asset_id, dict(d.desired), d.desired_version, d.attempt)
            for d in sent] == [
        (first.command_id, "b-0", {"setpoint_kw": 50.0}, first.desired_version, 1),
        (second.command_id, "b-1", {"setpoint_kw": -20.0}, second.desired_version, 1),
        (third.command_id, "b-0", {"setpoint_kw": 40.0}, third.desired_version, 1)]
    assert sent[1].expires_at == START + 30 and sent[0].expires_at is None
    assert (first.state, second.state, third.state) == ("superseded", "sent", "sent")
    assert fleet.asset("b-0").desired_version == third.desired_version


def test_acknowledged_then_converged_is_applied(fleet: Fleet, clock: VirtualClock,
                                                transport: RecordingTransport) -> None:
    receipt = fleet.command("b-0", {"setpoint_kw": 50.0})
    transport.ack(only(transport))
    assert receipt.state == "delivered"
    assert fleet.asset("b-0").following == "converging"
    fleet.advance(1)
    report(fleet, clock, {"b-0": 49.0})                  # within 0.5 kW + 2 % of 100 kW
    fleet.advance(1)
    assert receipt.state == "applied" and fleet.asset("b-0").following == "converged"


def test_a_device_that_refuses_makes_the_command_rejected_with_its_reason(
        fleet: Fleet, transport: RecordingTransport) -> None:
    receipt = fleet.command("b-0", {"setpoint_kw": 50.0})
    transport.reject(only(transport), "battery in maintenance mode")
    assert receipt.state == "rejected"
    [record] = fleet.commands("b-0", state="rejected")
    assert record.reason == "battery in maintenance mode"


def test_if_version_that_does_not_match_changes_nothing(
        fleet: Fleet, transport: RecordingTransport) -> None:
    receipt = fleet.command("b-0", {"setpoint_kw": 50.0})
    transport.take()
    with pytest.raises(VersionConflict, match=r"if_version=0 does not match its desired "
                                              rf"version {receipt.desired_version}"):
        fleet.command("b-0", {"setpoint_kw": 10.0}, if_version=0)
    assert transport.take() == []
    assert fleet.asset("b-0").desired == {"setpoint_kw": 50.0}
    assert receipt.state == "sent"
    fleet.command("b-0", {"setpoint_kw": 10.0}, if_version=receipt.desired_version)
    assert fleet.asset("b-0").desired == {"setpoint_kw": 10.0}


def test_commands_to_assets_not_online_are_still_refused_with_the_same_messages(
        fleet: Fleet, clock: VirtualClock, transport: RecordingTransport) -> None:
    fleet.advance(31)                                   # everyone silent: offline
    with pytest.raises(AssetUnavailable, match=r"asset 'b-0' is offline \(last seen at "):
        fleet.command("b-0", {"setpoint_kw": 50.0}, ttl_s=10)
    with pytest.raises(InvalidCommand, match="takes no command field 'power_limit_kw'"):
        report(fleet, clock, {"b-0": 0.0})
        fleet.command("b-0", {"power_limit_kw": 5.0})
    with pytest.raises(ValueError, match="ttl_s must be a positive number of seconds, got -1"):
        fleet.command("b-0", {"setpoint_kw": 5.0}, ttl_s=-1)
    assert transport.take() == [] and fleet.commands() == []


# -- leases ---------------------------------------------------------------------------------


def test_an_expired_lease_reverts_to_the_kinds_default_and_tells_the_transport(
        fleet: Fleet, transport: RecordingTransport) -> None:
    battery = fleet.command("b-0", {"setpoint_kw": 50.0}, ttl_s=5)
    turbine = fleet.command("t-0", {"power_limit_kw": 1000.0}, ttl_s=5)
    for delivery in transport.take():
        transport.ack(delivery)
    fleet.advance(4)
    assert transport.take() == [] and battery.state == "delivered"
    fleet.advance(1)
    assert (battery.state, turbine.state) == ("expired", "expired")
    reverts = {d.asset_id: (dict(d.desired), d.expires_at) for d in transport.take()}
    assert reverts == {"b-0": ({"setpoint_kw": 0.0}, None),          # idle
                       "t-0": ({"power_limit_kw": 3000.0}, None)}    # no curtailment
    assert fleet.asset("b-0").desired == {"setpoint_kw": 0.0}
    assert fleet.asset("b-0").desired_version > battery.desired_version


def test_re_issuing_renews_a_lease(fleet: Fleet, transport: RecordingTransport) -> None:
    first = fleet.command("b-0", {"setpoint_kw": 50.0}, ttl_s=5)
    fleet.advance(4)
    second = fleet.command("b-0", {"setpoint_kw": 50.0}, ttl_s=5)
    fleet.advance(4)
    assert (first.state, second.state) == ("superseded", "sent")
    assert fleet.asset("b-0").desired == {"setpoint_kw": 50.0}
    fleet.advance(1)
    assert second.state == "expired"


# -- resends ----------------------------------------------------------------------------------


def test_an_unacknowledged_delivery_is_resent_with_backoff_then_given_up(
        fleet: Fleet, transport: RecordingTransport) -> None:
    receipt = fleet.command("b-0", {"setpoint_kw": 50.0})
    sends = [(0.0, only(transport))]
    for second in range(1, 30):
        fleet.advance(1)
        sends += [(float(second), d) for d in transport.take()]
    assert [d.command_id for _, d in sends] == [receipt.command_id] * 3   # max_attempts
    assert [d.attempt for _, d in sends] == [1, 2, 3]
    waits = [b[0] - a[0] for a, b in itertools.pairwise(sends)]
    assert waits[0] == 2.0                      # ack_timeout_s, at a 1 s tick
    assert 2.0 <= waits[1] <= 5.0               # 4 s ceiling, equal jitter: 2..4 (+ a tick)
    assert receipt.state == "unacknowledged"
    [record] = fleet.commands("b-0")
    assert record.reason == "no acknowledgement after 3 sends" and record.attempts == 3


def test_the_fleet_retry_budget_stops_a_resend_storm(
        fleet: Fleet, clock: VirtualClock, transport: RecordingTransport) -> None:
    receipts = [fleet.command(f"b-{i}", {"setpoint_kw": 10.0}) for i in range(4)]
    receipts.append(fleet.command("t-0", {"power_limit_kw": 100.0}))
    transport.take()
    fleet.advance(2)                             # five resends due, a burst of three allowed
    assert len(transport.take()) == 3
    states = sorted(r.state for r in receipts)
    assert states == ["sent", "sent", "sent", "unacknowledged", "unacknowledged"]
    gave_up = fleet.commands(state="unacknowledged")
    assert {r.reason for r in gave_up} == {
        "the fleet's retry budget is spent (mass outage?); not resent"}
    assert fleet.metrics()["command_resends_refused"] == 2


def test_a_command_sink_that_raises_is_resent(clock: VirtualClock) -> None:
    calls: list[str] = []

    def flaky(asset_id: str, desired: Any) -> None:
        calls.append(asset_id)
        if len(calls) == 1:
            raise ConnectionError("link down")

    with Fleet(FleetModel.from_dict(battery_site()), clock=clock, command_sink=flaky) as fleet:
        report(fleet, clock, {"b-0": 0.0})
        receipt = fleet.command("b-0", {"setpoint_kw": 50.0})
        assert receipt.state == "sent"
        fleet.advance(5)                       # the default ack timeout
        assert calls == ["b-0", "b-0"] and receipt.state == "delivered"


# -- convergence ------------------------------------------------------------------------------


def test_an_asset_that_ignores_its_setpoint_is_counted_not_following_in_every_rollup(
        fleet: Fleet, clock: VirtualClock, transport: RecordingTransport) -> None:
    receipt = fleet.command("b-1", {"setpoint_kw": 60.0})
    transport.ack(only(transport))
    for _ in range(10):                         # dead time 1 s + settle 9 s
        fleet.advance(1)
        report(fleet, clock, {"b-1": 0.0})
        assert fleet.rollup("acme").not_following == ()
    fleet.advance(1)
    assert receipt.state == "not_followed"
    assert fleet.asset("b-1").following == "not_following"
    for path in ("acme", "acme/north", "acme/north/alpha", "pool"):
        assert fleet.rollup(path).not_following == ("b-1",)
        assert fleet.rollup(path).to_dict()["not_following"] == 1
    assert str(fleet.rollup("acme")).endswith("1 not following its setpoint")
    assert fleet.metrics()["assets_not_following"] == 1
    report(fleet, clock, {"b-1": 59.0})          # it follows after all
    fleet.advance(1)
    assert receipt.state == "applied" and fleet.rollup("pool").not_following == ()


def test_following_is_judged_against_the_kinds_rule(
        fleet: Fleet, clock: VirtualClock, transport: RecordingTransport) -> None:
    # a turbine's limit is followed while its power stays under it (plus its tolerance)
    limit = fleet.command("t-0", {"power_limit_kw": 1500.0})
    transport.ack(only(transport))
    report(fleet, clock, {"t-0": 1400.0})
    fleet.advance(1)
    assert limit.state == "applied"


def test_an_offline_asset_is_missing_not_not_following(
        fleet: Fleet, clock: VirtualClock, transport: RecordingTransport) -> None:
    fleet.command("b-2", {"setpoint_kw": 60.0})
    transport.ack(only(transport))
    for _ in range(40):
        fleet.advance(1)
        report(fleet, clock, {"b-0": 0.0})
    rollup = fleet.rollup("acme")
    assert "b-2" in rollup.missing and rollup.not_following == ()


# -- streams and metrics ----------------------------------------------------------------------


def test_subscribers_see_every_state_change_in_order(
        fleet: Fleet, clock: VirtualClock, transport: RecordingTransport) -> None:
    seen: list[tuple[str, str]] = []
    with fleet.subscribe_commands(lambda e: seen.append((e.command_id, e.state))):
        receipt = fleet.command("b-0", {"setpoint_kw": 50.0})
        transport.ack(only(transport))
        fleet.advance(1)
        report(fleet, clock, {"b-0": 50.0})
        fleet.advance(1)
    fleet.command("b-0", {"setpoint_kw": 40.0})
    assert seen == [(receipt.command_id, "sent"), (receipt.command_id, "delivered"),
                    (receipt.command_id, "applied")]
    text = fleet.metrics_text().decode()
    assert 'twin_commands_total{state="applied"} 1.0' in text
    assert "twin_assets_not_following 0.0" in text


def test_an_unknown_state_filter_is_an_error_naming_the_valid_ones(fleet: Fleet) -> None:
    with pytest.raises(ValueError, match=r"unknown command state 'done' \(valid: sent, "):
        fleet.commands(state="done")
