"""Asset kinds (custom ones through a KindRegistry, and the built-ins' bounds) and the
data-quality classification of samples through ``Fleet.ingest``."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import pytest

from twin import (
    AssetKind,
    AssetSpec,
    Battery,
    Charger,
    Fleet,
    FleetModel,
    Follow,
    IngestReport,
    InvalidCommand,
    KindRegistry,
    ModelError,
    Sample,
    Signal,
    Turbine,
    VirtualClock,
    default_kinds,
)
from twin.testing import assert_consistent, capture_logs

DAY = 86400.0


class HeatPump(AssetKind):
    """A heat pump draws power; its COP is derived from the flow temperature (7 °C outside)."""

    name = "heat_pump"
    signals: ClassVar[Mapping[str, Signal]] = {
        "power_kw": Signal("kW", -1.1, 0.0, "rated_kw"),
        "flow_temp_c": Signal("°C", 0, 90)}
    commands: ClassVar[Mapping[str, Signal]] = {"flow_setpoint_c": Signal("°C", 20, 75)}
    command_defaults: ClassVar[Mapping[str, float | bool]] = {"flow_setpoint_c": 45.0}
    follows: ClassVar[Mapping[str, Follow]] = {
        "flow_setpoint_c": Follow("flow_temp_c", "equal", 2.0, 0.0)}
    optional_fields = ("refrigerant",)

    def derive(self, spec: AssetSpec, reported: Mapping[str, Any], signals: Mapping[str, Any]
               ) -> Mapping[str, Any] | None:
        if "flow_temp_c" not in signals:
            return None
        hot = signals["flow_temp_c"] + 273.15
        return {"cop": round(0.5 * hot / (hot - 280.15), 2)}   # 7 °C flow: ZeroDivisionError


@pytest.fixture
def kinds() -> KindRegistry:
    registry = KindRegistry([Turbine(), Battery(), Charger()])
    registry.register(HeatPump())
    return registry


@pytest.fixture
def hp_dict(example_dict: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(example_dict)
    raw["owners"][0]["regions"][1]["sites"][0]["assets"].append(
        {"id": "hp-1", "kind": "heat_pump", "rated_kw": 8, "refrigerant": "R290"})
    return raw


@pytest.fixture
def hp_fleet(hp_dict: dict[str, Any], kinds: KindRegistry, clock: VirtualClock,
             shards: int) -> Iterator[Fleet]:
    with Fleet(FleetModel.from_dict(hp_dict, kinds=kinds), clock=clock, shards=shards) as fleet:
        yield fleet


def ingest(fleet: Fleet, samples: list[Any]) -> IngestReport:
    report = fleet.ingest(samples)
    assert report.total == len(samples), report
    return report


# -- custom kinds ----------------------------------------------------------------------------


def test_a_custom_kind_is_known_only_to_the_registry_it_was_registered_in(
        hp_dict: dict[str, Any], kinds: KindRegistry) -> None:
    assert kinds.names() == ["battery", "charger", "heat_pump", "turbine"]
    assert "heat_pump" not in default_kinds
    with pytest.raises(ModelError, match=r"assets\[1\]\.kind: unknown kind 'heat_pump' "
                                         r"\(known: battery, charger, turbine\)"):
        FleetModel.from_dict(hp_dict)
    with pytest.raises(ModelError, match="'heat_pump' is already registered"):
        kinds.register(HeatPump())


def test_a_custom_kind_keeps_its_optional_fields_and_refuses_others(
        hp_dict: dict[str, Any], kinds: KindRegistry) -> None:
    spec = FleetModel.from_dict(hp_dict, kinds=kinds).asset("hp-1")
    assert spec.expected()["refrigerant"] == "R290"
    hp_dict["owners"][0]["regions"][1]["sites"][0]["assets"][1]["colour"] = "red"
    with pytest.raises(ModelError, match=r"colour: unknown field for a heat_pump asset 'hp-1' "
                                         r"\(valid: .*rated_kw, refrigerant, report_interval_s"):
        FleetModel.from_dict(hp_dict, kinds=kinds)


def test_samples_of_a_custom_kind_show_its_derived_values(hp_fleet: Fleet, clock: VirtualClock
                                                          ) -> None:
    ingest(hp_fleet, [Sample("hp-1", clock.now(), {"power_kw": -2.0, "flow_temp_c": 35.0})])
    assert hp_fleet.asset("hp-1").reported == {"power_kw": -2.0, "flow_temp_c": 35.0,
                                               "cop": 5.5}
    ingest(hp_fleet, [Sample("hp-1", clock.now() + 1, {"power_kw": -3.0})])
    assert hp_fleet.asset("hp-1").reported["cop"] == 5.5         # kept from before
    ingest(hp_fleet, [Sample("hp-1", clock.now() + 2, {"flow_temp_c": 55.0})])
    assert hp_fleet.asset("hp-1").reported == {"power_kw": -3.0, "flow_temp_c": 55.0,
                                               "cop": 3.42}
    assert hp_fleet.rollup("acme/south").kinds["heat_pump"].power_kw == -3.0
    assert_consistent(hp_fleet)


def test_a_custom_kind_enforces_its_signal_bounds_and_commands(
        hp_fleet: Fleet, clock: VirtualClock) -> None:
    report = ingest(hp_fleet, [Sample("hp-1", clock.now(), {"power_kw": 1.0}),
                               Sample("hp-1", clock.now(), {"flow_temp_c": 95.0})])
    assert report.anomalous == 2
    ingest(hp_fleet, [Sample("hp-1", clock.now(), {"power_kw": -8.8, "flow_temp_c": 40})])
    assert hp_fleet.command("hp-1", {"flow_setpoint_c": 45}).desired == {"flow_setpoint_c": 45.0}
    with pytest.raises(InvalidCommand, match=r"flow_setpoint_c.*=80.*outside \[20, 75\]"):
        hp_fleet.command("hp-1", {"flow_setpoint_c": 80})


def test_a_failing_derive_hook_rejects_only_its_sample_and_the_asset_restarts(
        hp_fleet: Fleet, clock: VirtualClock) -> None:
    with capture_logs() as logs:
        report = ingest(hp_fleet, [Sample("hp-1", clock.now(), {"flow_temp_c": 35.0}),
                                   Sample("hp-1", clock.now() + 1, {"flow_temp_c": 7.0}),
                                   Sample("t-01", clock.now(), {"power_kw": 10.0})])
    assert [(e["event"], e["offender"]) for e in logs if e["log_level"] == "warning"] == [
        ("actor_failed", "asset:hp-1")]
    assert (report.accepted, report.rejected) == (2, 1)
    (error,) = report.errors
    assert (error.index, error.field) == (1, "handler")
    assert "ZeroDivisionError" in error.value + error.reason
    view = hp_fleet.asset("hp-1")               # nothing of the failed sample was committed
    assert (view.state, view.restarts, view.last_sample_ts) == ("online", 1, clock.now())
    assert view.reported == {"flow_temp_c": 35.0, "cop": 5.5}
    assert hp_fleet.asset("t-01").state == "online"
    assert ingest(hp_fleet, [Sample("hp-1", clock.now() + 2, {"flow_temp_c": 55.0})]
                  ).accepted == 1                     # and it runs again


# -- built-in kinds' bounds ------------------------------------------------------------------


@pytest.mark.parametrize("signals", [
    {"power_kw": 3300.1}, {"power_kw": 3300.1, "wind_speed_ms": 12.0},
    {"power_kw": math.nan}, {"power_kw": math.nan, "rotor_rpm": 10.0},
    {"power_kw": math.inf}, {"power_kw": -151.0}, {"power_kw": 100.0, "rotor_rpm": 41.0},
], ids=["above-110%", "above-110%-with-wind", "nan", "nan-with-rpm", "inf", "below--5%",
        "rpm-too-high"])
def test_turbine_values_outside_physical_bounds_are_anomalous_and_move_nothing(
        fleet: Fleet, clock: VirtualClock, signals: dict[str, float]) -> None:
    ingest(fleet, [Sample("t-01", clock.now(), {"power_kw": 2000.0})])
    report = ingest(fleet, [Sample("t-01", clock.now() + 1, signals)])
    assert (report.anomalous, report.accepted) == (1, 0)
    view = fleet.asset("t-01")
    assert (view.state, view.reported, view.last_sample_ts) == (
        "online", {"power_kw": 2000.0}, clock.now())
    assert fleet.rollup("acme/north/alpha").power_kw == 2000.0


def test_a_turbine_at_exactly_110_percent_of_its_rating_is_accepted(
        fleet: Fleet, clock: VirtualClock) -> None:
    assert ingest(fleet, [Sample("t-01", clock.now(), {"power_kw": 3300.0})]).accepted == 1
    assert fleet.asset("t-01").state == "online"


@pytest.mark.parametrize(("asset", "signals", "field", "reason"), [
    ("t-01", {"power_kw": True}, "signals.power_kw", "expected a number"),
    ("t-01", {"power_kw": "2000"}, "signals.power_kw", "expected a number"),
    ("t-01", {"torque_nm": 5.0}, "signals.torque_nm", "unknown signal for kind 'turbine'"),
    ("c-01", {"session_active": 1}, "signals.session_active", "expected true or false"),
    ("t-01", {}, "signals", "non-empty map"),
])
def test_a_malformed_signal_is_rejected_naming_the_field_and_value(
        fleet: Fleet, clock: VirtualClock, asset: str, signals: dict[str, Any], field: str,
        reason: str) -> None:
    report = ingest(fleet, [Sample(asset, clock.now(), signals)])
    assert report.rejected == 1
    (error,) = report.errors
    assert (error.index, error.asset_id, error.field) == (0, asset, field)
    # a container is quoted as its bounded repr (see twin.core.samples.plain)
    assert error.value == (signals.get(field.partition(".")[2]) if signals else "{}")
    assert reason in error.reason and field in str(error)
    assert fleet.asset(asset).state == "unknown"


def test_a_charger_session_flag_is_a_bool(fleet: Fleet, clock: VirtualClock) -> None:
    report = ingest(fleet, [Sample("c-01", clock.now(),
                                   {"session_active": True, "power_kw": -100.0})])
    assert report.accepted == 1
    assert fleet.asset("c-01").reported["session_active"] is True


# -- data quality ----------------------------------------------------------------------------


def test_the_same_device_time_again_is_a_duplicate(fleet: Fleet, clock: VirtualClock) -> None:
    ingest(fleet, [Sample("t-01", clock.now(), {"power_kw": 100.0})])
    report = ingest(fleet, [Sample("t-01", clock.now(), {"power_kw": 900.0})])
    assert (report.duplicate, report.accepted) == (1, 0)
    assert fleet.asset("t-01").reported == {"power_kw": 100.0}
    assert fleet.asset("t-01").quality == {"accepted": 1, "duplicate": 1}


def test_an_older_sample_is_late_and_does_not_change_the_reported_value(
        fleet: Fleet, clock: VirtualClock) -> None:
    ingest(fleet, [Sample("t-01", clock.now(), {"power_kw": 100.0})])
    report = ingest(fleet, [Sample("t-01", clock.now() - 5, {"power_kw": 900.0})])
    assert (report.late, report.accepted) == (1, 0)
    assert fleet.asset("t-01").reported == {"power_kw": 100.0}
    assert fleet.rollup("acme/north/alpha").power_kw == 100.0


def test_device_time_beyond_the_allowed_skew_is_future(fleet: Fleet, clock: VirtualClock) -> None:
    report = ingest(fleet, [Sample("t-01", clock.now() + 300.5, {"power_kw": 1.0}),
                            Sample("t-02", clock.now() + 300, {"power_kw": 1.0})])
    assert (report.future, report.accepted) == (1, 1)
    assert fleet.asset("t-01").state == "unknown"


def test_device_time_older_than_retention_is_stale(fleet: Fleet, clock: VirtualClock) -> None:
    report = ingest(fleet, [Sample("t-01", clock.now() - 31 * DAY, {"power_kw": 1.0}),
                            Sample("t-02", clock.now() - 29 * DAY, {"power_kw": 1.0})])
    assert (report.stale, report.accepted) == (1, 1)
    assert fleet.asset("t-01").state == "unknown"


@pytest.mark.parametrize("ts", [math.nan, math.inf, -math.inf, "1767225600", None])
def test_a_sample_without_a_finite_device_time_is_rejected(
        fleet: Fleet, clock: VirtualClock, ts: Any) -> None:
    report = ingest(fleet, [Sample("t-01", ts, {"power_kw": 1.0})])
    assert report.rejected == 1 and report.errors[0].field == "ts"


def test_a_malformed_sample_never_takes_its_batch_mates_down(
        fleet: Fleet, clock: VirtualClock) -> None:
    now = clock.now()
    batch: list[Any] = [
        Sample("t-01", now, {"power_kw": 1000.0}),
        {"asset_id": "t-02", "ts": now, "signals": {"power_kw": 1.0}},   # not a Sample
        Sample("nope", now, {"power_kw": 1.0}),
        Sample("t-02", now, {"power_kw": False}),
        Sample("b-02", now, {"power_kw": 4.0}),
        Sample("c-01", math.nan, {"power_kw": -1.0}),
        None,
        Sample("b-01", now + 10 * DAY, {"power_kw": 1.0}),
        Sample("t-01", now, {"power_kw": 5.0}),
    ]
    report = ingest(fleet, batch)
    assert report.counts() == {"accepted": 2, "duplicate": 1, "late": 0, "future": 1,
                               "stale": 0, "anomalous": 0, "rejected": 5, "deferred": 0,
                               "quarantined": 0}
    assert sorted((e.index, e.field) for e in report.errors) == [
        (1, "sample"), (2, "asset_id"), (3, "signals.power_kw"), (5, "ts"), (6, "sample")]
    assert fleet.rollup("grid/ercot").power_kw == 1004.0
    assert fleet.metrics()["samples_rejected"] == 5
    assert_consistent(fleet)


def test_an_unhashable_asset_id_is_rejected_without_failing_the_batch(
        fleet: Fleet, clock: VirtualClock) -> None:
    report = ingest(fleet, [Sample(["t-01"], clock.now(), {"power_kw": 1.0}),  # type: ignore[arg-type]
                            Sample("t-02", clock.now(), {"power_kw": 2.0})])
    assert (report.rejected, report.accepted) == (1, 1)
    assert (report.errors[0].index, report.errors[0].field) == (0, "asset_id")
