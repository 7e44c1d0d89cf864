"""The simulator closes the control loop: batteries that follow setpoints as a first-order-plus-
dead-time response, a transport with lost, late, rejected and ignored commands, the dispatch
schedule, and the report's ``control`` section against the injected truth."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import SimConfig, build_report, parse_faults, run_simulation
from sim.config import START, SimConfigError
from sim.control import not_following_detection
from sim.devices import Device
from sim.physics import DEAD_TIME_S, TIME_CONSTANT_S, BatteryPhysics, ChargerPhysics
from sim.schedule import ScheduledDispatch, load_scenario, parse_dispatch
from sim.transport import ControlFaults, SimTransport
from twin import Battery, VirtualClock

BATTERIES = SimConfig(assets=40, mix={"battery": 1.0}, owners=1, regions=1, sites=4,
                      duration_s=600.0, seed=5)


def run(plan: dict[str, Any], config: SimConfig = BATTERIES, **changes: Any) -> dict[str, Any]:
    if changes:
        config = SimConfig(**{**{f: getattr(config, f) for f in config.__dataclass_fields__},
                              **changes})
    return build_report(run_simulation(config, parse_faults(plan, "test")))


# -- a battery's response ----------------------------------------------------------------------

def test_power_holds_during_the_dead_time_then_closes_the_gap_exponentially() -> None:
    battery = BatteryPhysics(100.0, 400.0, 0.5, dead_time_s=0.5, time_constant_s=2.0)
    battery.receive(1.0, 80.0)
    battery.step(1.4)
    assert battery.power_kw == 0.0 and battery.setpoint_kw == 80.0   # reported at once
    for t in (2.0, 3.5, 7.5):
        battery.step(t - battery.t)
        assert battery.power_kw == pytest.approx(80.0 * (1 - math.exp(-(t - 1.5) / 2.0)))


def test_setpoints_received_within_one_step_act_at_their_own_times() -> None:
    one = BatteryPhysics(100.0, 400.0, 0.5, dead_time_s=0.2, time_constant_s=1.0)
    many = BatteryPhysics(100.0, 400.0, 0.5, dead_time_s=0.2, time_constant_s=1.0)
    for battery in (one, many):
        battery.receive(2.0, 50.0)
        battery.receive(6.5, -30.0)
    one.step(10.0)
    for _ in range(10):
        many.step(1.0)
    assert one.power_kw == pytest.approx(many.power_kw)
    assert one.energy_kwh == pytest.approx(many.energy_kwh)
    expected = -30.0 + (50.0 * (1 - math.exp(-4.5)) + 30.0) * math.exp(-(10.0 - 6.7))
    assert one.power_kw == pytest.approx(expected)


def test_an_empty_battery_does_not_discharge_and_a_full_one_does_not_charge() -> None:
    empty = BatteryPhysics(10.0, 20.0, 0.0, dead_time_s=0.3, time_constant_s=1.0)
    full = BatteryPhysics(10.0, 20.0, 1.0, dead_time_s=0.3, time_constant_s=1.0)
    empty.receive(0.0, 10.0)
    full.receive(0.0, -10.0)
    for battery in (empty, full):
        battery.step(30.0)
        assert battery.power_kw == 0.0 and battery.limited
    assert (empty.energy_kwh, full.energy_kwh) == (0.0, 20.0)
    almost = BatteryPhysics(10.0, 20.0, 0.001, dead_time_s=0.3, time_constant_s=1.0)
    almost.receive(0.0, 10.0)                       # 0.02 kWh: gone within ten seconds
    almost.step(60.0)
    assert almost.energy_kwh == 0.0 and almost.power_kw == 0.0


def test_a_lease_ends_on_the_device_and_it_goes_idle() -> None:
    battery = BatteryPhysics(100.0, 400.0, 0.5, dead_time_s=0.2, time_constant_s=0.5)
    battery.receive(0.0, 60.0, expires_at=3.0)
    battery.step(2.9)
    assert battery.setpoint_kw == 60.0 and battery.power_kw == pytest.approx(60.0, abs=0.5)
    battery.step(10.0)
    assert battery.setpoint_kw == 0.0 and battery.power_kw == pytest.approx(0.0, abs=1e-3)
    battery.receive(battery.t, 40.0, expires_at=battery.t + 3.0)
    battery.receive(battery.t + 2.0, 40.0, expires_at=battery.t + 5.0)   # renewed in time
    battery.step(4.5)
    assert battery.power_kw == pytest.approx(40.0, abs=0.1)


def test_a_battery_ignoring_commands_reports_them_but_holds_its_power_until_its_window_ends(
        ) -> None:
    battery = BatteryPhysics(100.0, 400.0, 0.5, dead_time_s=0.2, time_constant_s=0.5)
    battery.receive(0.0, 30.0)
    battery.ignore_from, battery.ignore_until = 10.0, 40.0
    battery.step(20.0)
    battery.receive(20.0, -70.0)
    battery.step(15.0)
    assert battery.setpoint_kw == -70.0
    assert battery.power_kw == pytest.approx(30.0)              # held
    battery.step(10.0)                                          # the window ended at 40 s
    assert battery.power_kw == pytest.approx(-70.0, abs=0.1)


@settings(max_examples=80, deadline=None)
@given(dead=st.floats(*DEAD_TIME_S), tau=st.floats(*TIME_CONSTANT_S),
       start=st.floats(-1.0, 1.0), end=st.floats(-1.0, 1.0),
       rated=st.sampled_from([5.0, 10.0, 250.0, 1000.0]))
def test_a_simulated_battery_settles_within_the_battery_kinds_follow_rule(
        dead: float, tau: float, start: float, end: float, rated: float) -> None:
    """The response drawn for each battery stays inside what the battery kind declares: dead
    time plus settle time, and its tolerance; so a battery that follows is seen to."""
    battery = BatteryPhysics(rated, 4 * rated, 0.5, dead_time_s=dead, time_constant_s=tau)
    battery.receive(0.0, start * rated)
    battery.step(30.0)
    battery.receive(30.0, end * rated)
    battery.step(Battery.dead_time_s + Battery.settle_s)
    rule = Battery.follows["setpoint_kw"]
    assert abs(battery.power_kw - end * rated) <= rule.abs_tol + rule.rated_tol * rated


@settings(max_examples=60, deadline=None)
@given(commands=st.lists(st.tuples(st.floats(0.0, 20.0), st.floats(-1.5, 1.5)), max_size=30),
       soc=st.floats(0.0, 1.0), dt=st.sampled_from([1.0, 10.0, 20.0]))
def test_a_battery_with_a_response_stays_within_its_capacity_and_rating(
        commands: list[tuple[float, float]], soc: float, dt: float) -> None:
    battery = BatteryPhysics(5.0, 1.0, soc, dead_time_s=0.5, time_constant_s=1.5)
    for gap, share in commands:
        battery.receive(battery.t + gap, share * 5.0, expires_at=battery.t + gap + 3.0)
        battery.step(dt)
        assert 0.0 <= battery.energy_kwh <= 1.0
        assert -5.0 <= battery.power_kw <= 5.0


# -- the transport ---------------------------------------------------------------------------

class Acks:
    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    def delivered(self, command_id: str) -> None:
        self.log.append(("delivered", command_id))

    def rejected(self, command_id: str, reason: str) -> None:
        self.log.append(("rejected", f"{command_id}: {reason}"))

    def delivered_batch(self, batch: Any) -> None:
        raise AssertionError("the simulator acknowledges command by command")


def _battery(index: int) -> Device:
    return Device(index, f"b-{index}", "battery", BatteryPhysics(10.0, 20.0, 0.5), 10.0, 30.0,
                  90.0, 0.02)


def _transport(plan: dict[str, Any]) -> tuple[SimTransport, list[Device], Acks, VirtualClock]:
    devices = [_battery(i) for i in range(4)]
    charger = Device(4, "c-4", "charger", ChargerPhysics(22.0, random.Random(1)), 22.0, 60.0,
                     180.0, 0.05)
    clock = VirtualClock(start=100.0)
    faults = ControlFaults(parse_faults(plan, "test"), random.Random(3), devices, 100.0)
    transport = SimTransport({d.id: d for d in [*devices, charger]}, faults,
                             random.Random(4), clock)
    acks = Acks()
    transport.attach(acks)
    return transport, devices, acks, clock


def _send(transport: SimTransport, command_id: str, asset_id: str, kw: float | None = 5.0
          ) -> None:
    from twin.control.transport import Delivery

    desired = {} if kw is None else {"setpoint_kw": kw}
    transport.send([Delivery(command_id, asset_id, desired, int(command_id), None, 1)])


def test_the_transport_acknowledges_rejects_delays_and_ignores_as_the_faults_say() -> None:
    plan = {"command_reject": {"fraction": 0.25, "reason": "in local mode"},
            "command_ignore": {"fraction": 0.25}, "ack_delay": {"fraction": 0.25,
                                                                 "delay_s": [2, 2]}}
    transport, devices, acks, clock = _transport(plan)
    faults = transport.faults
    (rejecting,), (late,) = faults.rejecting, faults.late
    (ignoring,) = faults.ignoring
    (normal,) = {d.id for d in devices} - {rejecting, late, ignoring}
    for i, asset_id in enumerate((normal, rejecting, late, ignoring), start=1):
        _send(transport, str(i), asset_id)
    assert acks.log == [("delivered", "1"), ("rejected", "2: in local mode"),
                        ("delivered", "4")]
    transport.release_acks(clock.now() + 1.9)
    assert len(acks.log) == 3 and transport.acks_pending
    transport.release_acks(clock.now() + 2.0)
    assert acks.log[-1] == ("delivered", "3") and not transport.acks_pending
    by_id = {d.id: d for d in devices}
    assert [x[1] for x in by_id[normal].physics.inbox] == [5.0]            # type: ignore[union-attr]
    assert not by_id[rejecting].physics.inbox                              # type: ignore[union-attr]
    counts = transport.counts
    assert (counts["deliveries"], counts["acknowledged"], counts["rejected"],
            counts["acks_delayed"], counts["to_ignoring"]) == (4, 3, 1, 1, 1)


def test_a_cut_off_device_gets_nothing_and_a_lost_command_nothing_comes_back() -> None:
    transport, devices, acks, _ = _transport({"command_loss": {"probability": 1.0}})
    devices[0].connected = False
    _send(transport, "1", devices[0].id)
    _send(transport, "2", devices[1].id)
    assert acks.log == []
    assert (transport.counts["unreachable"], transport.counts["lost_in_transit"]) == (1, 1)
    assert transport.commanded == {devices[0].id: 5.0, devices[1].id: 5.0}


def test_a_command_no_simulated_device_takes_is_rejected_with_a_reason() -> None:
    transport, devices, acks, _ = _transport({})
    _send(transport, "1", "c-4", 5.0)
    _send(transport, "2", devices[0].id, None)
    assert acks.log == [("rejected", "1: a simulated charger takes no such command"),
                        ("rejected", "2: a simulated battery takes no such command")]


# -- the control report ------------------------------------------------------------------------

def test_devices_that_ignore_setpoints_are_found_not_following_and_nothing_else() -> None:
    control = run({"command_ignore": {"fraction": 0.2}})["control"]
    found = control["not_following"]
    assert found["ignoring_devices"] == 8
    assert found["longer_than_timeout"] >= 6
    assert found["precision"] == found["recall"] == 1.0
    assert found["false_detections"] == 0
    assert found["delay_s"]["max"] <= control["follow_timeout_s"] + 2 * control["tick_s"]


def test_an_ignore_window_is_found_while_it_lasts_and_not_after() -> None:
    schedule = (ScheduledDispatch("acme", 2400.0, 60.0, 360.0),     # 40 % of the rating
                ScheduledDispatch("acme", -2400.0, 360.0, 600.0))
    report = run({"command_ignore": {"fraction": 0.2, "window_s": [240, 480]}},
                 dispatches=schedule)
    found = report["control"]["not_following"]
    assert found["longer_than_timeout"] >= 6          # held discharging while asked to charge
    assert found["precision"] == found["recall"] == 1.0


def test_rejections_are_counted_as_injected_and_lost_commands_are_never_delivered() -> None:
    plan = {"command_reject": {"fraction": 0.2}, "command_loss": {"probability": 0.05},
            "ack_delay": {"fraction": 0.2}, "offline": {"per_asset_hour": 2.0}}
    commands = run(plan)["control"]["commands"]
    assert commands["rejected"]["injected"] == commands["rejected"]["counted"] > 0
    assert commands["all_match"] is True
    unacked = commands["not_acknowledged"]
    assert unacked["injected_lost"] > 0 and unacked["injected_acks_delayed"] > 0
    assert 0 < unacked["counted_never_delivered"] <= (
        unacked["injected_lost"] + unacked["injected_unreachable"]
        + unacked["injected_acks_delayed"])
    assert unacked["runtime_acks_stale"] > 0        # late acks of setpoints already renewed


def test_a_dispatch_reaches_a_feasible_target_within_5_percent_and_holds_it() -> None:
    report = run({})
    (dispatch,) = report["control"]["dispatches"].values()
    assert dispatch["status"] == "ended"
    assert dispatch["feasible_kw"] == dispatch["target_kw"] > 0
    assert dispatch["time_to_5pct_s"] is not None
    assert dispatch["time_to_5pct_s"] <= 2 * BATTERIES.step_s
    assert dispatch["rms_error_settled_kw"] <= 0.02 * dispatch["target_kw"]
    assert dispatch["true_rms_error_kw"] <= 0.02 * dispatch["target_kw"]
    assert report["control"]["not_following"]["detections"] == 0


def test_a_dispatch_starts_at_the_first_control_tick_of_its_start_between_steps() -> None:
    schedule = (ScheduledDispatch("acme", 200.0, 95.5, 300.0),)
    result = run_simulation(SimConfig(**{**{f: getattr(BATTERIES, f) for f in
                                            BATTERIES.__dataclass_fields__},
                                         "dispatches": schedule}), parse_faults({}, "t"))
    assert result.control is not None
    (trace,) = result.control.traces
    assert trace.started_at == START + 96.0
    active = [r for r in trace.reports if r[1] == "active"]
    assert active[0][0] == START + 96.0 and active[-1][0] < START + 300.0
    assert trace.reports[-1][1] == "ended"


def test_without_a_schedule_the_first_region_with_batteries_is_dispatched() -> None:
    report = run({}, SimConfig(assets=60, duration_s=300.0, seed=2))
    (entry,) = report["scenario"]["dispatches"]
    assert entry["source"] == "default" and entry["path"].count("/") == 1
    assert (entry["start_s"], entry["end_s"]) == (30, 270)
    assert run({}, SimConfig(assets=60, duration_s=300.0, seed=2, dispatches=()))[
        "control"]["commands"]["issued"] == 0


def test_not_following_detection_counts_runs_cut_short_by_a_detection() -> None:
    runs = {"a": [[100.0, 110.0]], "b": [[100.0, 200.0]], "c": [[100.0, 105.0]], "d": []}
    detections = [("a", 118.0, "ignoring"), ("x", 50.0, "report_lost")]
    result = not_following_detection(runs, detections, long_s=22.0, step_s=10.0)
    assert (result["longer_than_timeout"], result["detected_longer"]) == (2, 1)   # a, b
    assert (result["shorter"], result["never_diverged"]) == (1, 1)               # c; d
    assert result["recall"] == 0.5 and result["precision"] == 0.5
    assert result["false_by_cause"] == {"report_lost": 1}
    assert result["delay_s"]["max"] == 18.0


# -- the schedule on the command line and in a scenario file -----------------------------------

def test_dispatch_options_read_paths_powers_and_times() -> None:
    entry = parse_dispatch("acme/north:-1.5MW@90s-1h")
    assert (entry.path, entry.target_kw, entry.start_s, entry.end_s) == (
        "acme/north", -1500.0, 90.0, 3600.0)
    assert parse_dispatch("acme:250@0-10m").start_s == 0.0


@pytest.mark.parametrize(("value", "message"), [
    ("acme", "--dispatch 'acme': expected PATH:KW@START-END (example: acme:1500@10m-40m)"),
    ("acme:lots@1m-2m", "--dispatch 'acme:lots@1m-2m': 'lots' is not a power in kW"),
    ("acme:100@1m", "--dispatch 'acme:100@1m': expected PATH:KW@START-END"),
    ("acme:100@x-2m", "--dispatch 'acme:100@x-2m': START 'x' is not a time into the run"),
    ("acme:100@5m-2m", "--dispatch 'acme:100@5m-2m': END (120 s) must come after START "
                       "(300 s)"),
])
def test_a_dispatch_option_that_cannot_be_read_is_refused_naming_the_value(
        value: str, message: str) -> None:
    with pytest.raises(SimConfigError, match=re.escape(message)):
        parse_dispatch(value)


@pytest.mark.parametrize(("entry", "message"), [
    (parse_dispatch("nowhere:100@1m-2m"), "--dispatch 'nowhere:100@1m-2m': unknown path "
                                          "'nowhere' (valid, e.g.: acme"),
    (parse_dispatch("acme:100@20m-30m"), "--dispatch 'acme:100@20m-30m': starts at 1200 s, "
                                         "after the run's 600 s"),
])
def test_a_dispatch_the_fleet_cannot_run_is_refused_before_the_run(
        entry: ScheduledDispatch, message: str) -> None:
    with pytest.raises(SimConfigError, match=re.escape(message)):
        run({}, dispatches=(entry,))


def test_dispatches_sharing_batteries_at_the_same_time_are_refused() -> None:
    with pytest.raises(SimConfigError, match=re.escape(
            "--dispatch 'acme/north:5@2m-4m': overlaps --dispatch 'acme:10@1m-3m'")):
        run({}, dispatches=(parse_dispatch("acme:10@1m-3m"),
                            parse_dispatch("acme/north:5@2m-4m")))


def test_a_scenario_file_gives_the_schedule_and_its_errors_name_the_field(
        tmp_path: Path) -> None:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps({"dispatch": [
        {"path": "acme", "target_kw": 500, "start": "1m", "end": 300, "strategy": "soc",
         "ramp_kw_per_s": 50}]}))
    (entry,) = load_scenario(str(path))
    assert (entry.path, entry.target_kw, entry.start_s, entry.end_s, entry.strategy,
            entry.ramp_kw_per_s) == ("acme", 500.0, 60.0, 300.0, "soc", 50.0)
    cases = [
        ({"dispatches": []}, "unknown key 'dispatches' (valid: dispatch)"),
        ({"dispatch": [{"path": "acme", "target_kw": "big", "start": 0, "end": 60}]},
         "dispatch[0].target_kw: expected a number of kW, got 'big'"),
        ({"dispatch": [{"path": "acme", "target_kw": 1, "start": -5, "end": 60}]},
         "dispatch[0].start: expected seconds into the run"),
        ({"dispatch": [{"path": "acme", "target_kw": 1, "start": 0}]},
         "dispatch[0]: end is missing"),
        ({"dispatch": [{"path": "acme", "target_kw": 1, "start": 0, "end": 9, "speed": 2}]},
         "dispatch[0].speed: unknown field"),
        ({"dispatch": [{"path": "acme", "target_kw": 1, "start": 0, "end": 9,
                        "strategy": "greedy"}]},
         "dispatch[0]: strategy 'greedy' is not one of headroom, soc"),
    ]
    for raw, message in cases:
        path.write_text(json.dumps(raw))
        with pytest.raises(SimConfigError, match=re.escape(message)):
            load_scenario(str(path))


def test_the_control_faults_are_validated_naming_the_setting() -> None:
    cases = [
        ({"command_loss": {"probability": 2}}, "command_loss.probability: expected a fraction"),
        ({"command_ignore": {"window_s": [300, 100]}}, "command_ignore.window_s: expected null "
                                                       "(the whole run) or [start, end]"),
        ({"command_reject": {"reason": ""}}, "command_reject.reason: expected a reason of 1 to "
                                             "200 characters"),
        ({"ack_delay": {"delay_s": [0, 2]}}, "ack_delay.delay_s: expected [lo, hi] with 0 < lo"),
    ]
    for raw, message in cases:
        with pytest.raises(SimConfigError, match=re.escape(message)):
            parse_faults(raw, "faults.json")
