"""The embedded fleet's public behaviour: state machine, roll-ups, commands, subscriptions."""

from __future__ import annotations

from typing import Any

import pytest

from twin import (
    AssetUnavailable,
    Fleet,
    FleetClosed,
    FleetModel,
    InvalidCommand,
    Rollup,
    Sample,
    UnknownAsset,
    UnknownPath,
    VirtualClock,
)
from twin.testing import assert_consistent


def power(fleet: Fleet, clock: VirtualClock, asset_id: str, kw: float) -> None:
    report = fleet.ingest([Sample(asset_id, ts=clock.now(), signals={"power_kw": kw})])
    assert report.accepted == 1, report.errors


def test_every_asset_starts_unknown_and_is_listed_missing(fleet: Fleet) -> None:
    r = fleet.rollup("acme/north/alpha")
    assert (r.expected, r.reporting, r.unknown, r.offline, r.quarantined) == (3, 0, 3, 0, 0)
    assert r.missing == ("b-01", "c-01", "t-01")
    assert r.power_kw == 0.0
    assert r.capacity_kw == 3000 + 5000 + 150


def test_a_valid_sample_brings_an_asset_online_and_adds_its_power(
        fleet: Fleet, clock: VirtualClock) -> None:
    power(fleet, clock, "t-01", 2100.0)
    assert fleet.asset("t-01").state == "online"
    r = fleet.rollup("acme/north/alpha")
    assert (r.reporting, r.unknown) == (1, 2)
    assert r.power_kw == 2100.0
    assert r.kinds["turbine"].reporting == 1
    assert r.kinds["battery"].reporting == 0
    assert "t-01" not in r.missing


def test_silent_turbine_goes_offline_after_timeout_and_is_listed_missing(
        fleet: Fleet, clock: VirtualClock) -> None:
    power(fleet, clock, "t-01", 2100.0)
    fleet.advance(29.9)
    assert fleet.asset("t-01").state == "online"
    fleet.advance(0.1)
    assert fleet.asset("t-01").state == "offline"
    r = fleet.rollup("acme/north/alpha")
    assert (r.reporting, r.offline, r.power_kw) == (0, 1, 0.0)
    assert "t-01" in r.missing
    assert fleet.transitions()[-1][1:4] == ("t-01", "online", "offline")


def test_a_sample_within_the_timeout_keeps_an_asset_online(
        fleet: Fleet, clock: VirtualClock) -> None:
    power(fleet, clock, "t-01", 100.0)
    for _ in range(10):
        fleet.advance(20)
        power(fleet, clock, "t-01", 100.0)
    assert fleet.asset("t-01").state == "online"
    assert [t.new for t in fleet.transitions()] == ["online"]


def test_an_offline_asset_comes_back_online_on_its_next_sample(
        fleet: Fleet, clock: VirtualClock) -> None:
    power(fleet, clock, "b-02", 4.0)
    fleet.advance(60)
    assert fleet.asset("b-02").state == "offline"
    power(fleet, clock, "b-02", -3.5)
    assert fleet.asset("b-02").state == "online"
    assert fleet.rollup("acme/south").power_kw == -3.5


def test_rollups_say_how_many_were_expected_at_every_level(fleet: Fleet, clock: VirtualClock
                                                          ) -> None:
    power(fleet, clock, "t-01", 2100.0)
    power(fleet, clock, "t-02", 1500.0)
    power(fleet, clock, "b-02", 5.0)
    owner = fleet.rollup("acme")
    assert (owner.expected, owner.reporting) == (5, 3)
    assert owner.power_kw == 3605.0
    assert owner.missing == ("b-01", "c-01")
    north = fleet.rollup("acme/north")
    assert (north.expected, north.reporting, north.power_kw) == (4, 2, 3600.0)
    ercot = fleet.rollup("grid/ercot")          # site alpha plus asset b-02
    assert (ercot.expected, ercot.reporting, ercot.power_kw) == (4, 2, 2105.0)
    assert_consistent(fleet)


def test_counts_always_sum_to_expected(fleet: Fleet, clock: VirtualClock) -> None:
    power(fleet, clock, "t-01", 1.0)
    fleet.advance(31)
    power(fleet, clock, "t-02", 1.0)
    for r in fleet.rollups().values():
        assert r.reporting + r.offline + r.unknown + r.quarantined == r.expected


def test_commands_are_refused_unless_the_asset_is_online(fleet: Fleet, clock: VirtualClock
                                                        ) -> None:
    with pytest.raises(AssetUnavailable, match=r"b-01.*unknown"):
        fleet.command("b-01", {"setpoint_kw": -500.0})
    power(fleet, clock, "b-01", 0.0)
    receipt = fleet.command("b-01", {"setpoint_kw": -500.0})
    assert receipt.desired == {"setpoint_kw": -500.0}
    assert fleet.asset("b-01").desired == {"setpoint_kw": -500.0}
    fleet.advance(31)
    with pytest.raises(AssetUnavailable) as refused:
        fleet.command("b-01", {"setpoint_kw": 100.0})
    assert refused.value.state == "offline"
    assert refused.value.last_seen == clock.now() - 31
    assert fleet.asset("b-01").desired == {"setpoint_kw": -500.0}


def test_invalid_commands_name_the_field_and_value(fleet: Fleet, clock: VirtualClock) -> None:
    power(fleet, clock, "b-01", 0.0)
    with pytest.raises(InvalidCommand, match=r"power_limit_kw.*valid: setpoint_kw"):
        fleet.command("b-01", {"power_limit_kw": 5.0})
    with pytest.raises(InvalidCommand, match=r"setpoint_kw.*=9000.*outside \[-5000, 5000\]"):
        fleet.command("b-01", {"setpoint_kw": 9000})
    assert fleet.asset("b-01").state == "online"     # a bad command is not a crash


def test_accepted_commands_reach_the_command_sink(model: FleetModel, clock: VirtualClock
                                                  ) -> None:
    sent: list[tuple[str, dict[str, float]]] = []
    with Fleet(model, clock=clock, command_sink=lambda a, d: sent.append((a, dict(d)))) as fleet:
        power(fleet, clock, "t-01", 10.0)
        fleet.command("t-01", {"power_limit_kw": 1500.0})
    assert sent == [("t-01", {"power_limit_kw": 1500.0})]


def test_the_three_views_are_kept_apart(fleet: Fleet, clock: VirtualClock) -> None:
    fleet.ingest([Sample("b-01", clock.now(), {"power_kw": 100.0, "soc_pct": 55.0})])
    fleet.command("b-01", {"setpoint_kw": -200.0})
    view = fleet.asset("b-01")
    assert view.expected["rated_kw"] == 5000.0 and view.expected["capacity_kwh"] == 13500.0
    assert view.desired == {"setpoint_kw": -200.0}
    assert view.reported == {"power_kw": 100.0, "soc_pct": 55.0}
    assert view.last_seen == clock.now()
    fleet.advance(5)
    assert fleet.asset("b-01").age_s == 5.0


def test_unknown_ids_and_paths_raise_value_errors_that_name_them(fleet: Fleet) -> None:
    with pytest.raises(UnknownAsset, match="'nope'"):
        fleet.asset("nope")
    with pytest.raises(ValueError, match="'acme/west'"):
        fleet.rollup("acme/west")
    with pytest.raises(UnknownPath):
        fleet.subscribe("nowhere", lambda r: None)
    with pytest.raises(UnknownAsset):
        fleet.command("nope", {"setpoint_kw": 1.0})


def test_subscribers_get_each_change_once_per_batch_and_can_cancel(
        fleet: Fleet, clock: VirtualClock) -> None:
    seen: list[Rollup] = []
    sub = fleet.subscribe("acme/north", seen.append)
    fleet.ingest([Sample("t-01", clock.now(), {"power_kw": 1.0}),
                  Sample("t-02", clock.now(), {"power_kw": 2.0})])
    assert [(r.reporting, r.power_kw) for r in seen] == [(2, 3.0)]
    fleet.ingest([Sample("b-02", clock.now(), {"power_kw": 2.0})])   # another region
    assert len(seen) == 1
    sub.cancel()
    fleet.ingest([Sample("t-01", clock.now() + 1, {"power_kw": 5.0})])
    assert len(seen) == 1


def test_a_failing_subscriber_is_counted_and_does_not_break_ingest(
        fleet: Fleet, clock: VirtualClock) -> None:
    def broken(rollup: Rollup) -> None:
        raise RuntimeError("subscriber bug")

    fleet.subscribe("acme", broken)
    report = fleet.ingest([Sample("t-01", clock.now(), {"power_kw": 1.0})])
    assert report.accepted == 1
    assert fleet.metrics()["callback_errors"] == 1


def test_a_closed_fleet_refuses_calls(model: FleetModel, clock: VirtualClock) -> None:
    fleet = Fleet(model, clock=clock)
    fleet.close()
    fleet.close()
    with pytest.raises(FleetClosed):
        fleet.rollup("acme")


def test_advance_needs_a_virtual_clock(model: FleetModel) -> None:
    class Frozen:
        def now(self) -> float:
            return 1767225600.0

    with Fleet(model, clock=Frozen(), tick_interval_s=3600) as fleet, \
            pytest.raises(TypeError, match="VirtualClock"):
        fleet.advance(1)


def test_per_kind_bounds_in_the_model_defaults_decide_what_is_anomalous(
        example_dict: dict[str, Any], clock: VirtualClock) -> None:
    example_dict["defaults"]["bounds"] = {
        "turbine": {"power_kw": {"lo": 0, "hi": 1.5, "scale": "rated_kw"},
                    "wind_speed_ms": [0, 40]}}
    model = FleetModel.from_dict(example_dict)
    assert FleetModel.from_dict(model.to_dict()).bounds == model.bounds
    with Fleet(model, clock=clock) as fleet:
        report = fleet.ingest([Sample("t-01", clock.now(), {"power_kw": 4000.0}),   # 1.33 x rated
                               Sample("t-02", clock.now(), {"wind_speed_ms": 45.0})])
        assert (report.accepted, report.anomalous) == (1, 1)
    with Fleet(FleetModel.from_dict({**example_dict, "defaults": {}}), clock=clock) as fleet:
        assert fleet.ingest([Sample("t-01", clock.now(), {"power_kw": 4000.0})]).anomalous == 1


def test_bad_bounds_name_the_kind_and_signal(example_dict: dict[str, Any]) -> None:
    example_dict["defaults"]["bounds"] = {"battery": {"soc_pct": [100, 0]}}
    with pytest.raises(ValueError, match=r"defaults.bounds.battery.soc_pct: lo=100 is above hi=0"):
        FleetModel.from_dict(example_dict)
