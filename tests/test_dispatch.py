"""Fleet dispatch: many batteries steered as one plant, in a closed loop on the fleet clock."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from twin import Fleet, FleetModel, Sample, UnknownPath, VirtualClock
from twin.control.dispatch import DispatchReport
from twin.control.transport import DeliveryBatch, RecordingTransport
from twin.core.errors import UnknownCommand

START = 1767225600.0


def fleet_dict() -> dict[str, Any]:
    """acme/north/alpha: four 100 kW batteries and a turbine; acme/south/beta: two batteries."""
    def battery(i: int) -> dict[str, Any]:
        return {"id": f"b-{i}", "kind": "battery", "rated_kw": 100.0, "capacity_kwh": 200.0}
    return {
        "defaults": {"report_interval_s": 10, "offline_after_s": 30},
        "owners": [{"id": "acme", "regions": [
            {"id": "north", "sites": [{"id": "alpha", "assets": [
                *[battery(i) for i in range(4)],
                {"id": "t-0", "kind": "turbine", "rated_kw": 3000}]}]},
            {"id": "south", "sites": [{"id": "beta", "assets": [battery(4), battery(5)]}]}]}],
    }


class Plant:
    """The devices: they follow whatever setpoint reached them, at once (or not at all)."""

    def __init__(self, fleet: Fleet, clock: VirtualClock, transport: RecordingTransport) -> None:
        self.fleet = fleet
        self.clock = clock
        self.transport = transport
        self.setpoints: dict[str, float] = {}
        self.soc: dict[str, float] = {}
        self.deaf: set[str] = set()        # acknowledge, but do not follow
        self.silent: set[str] = set()      # stopped reporting
        self.refusing: set[str] = set()    # reject every command
        self.stuck: dict[str, float] = {}  # deliver this, whatever they are asked

    def deliver(self) -> None:
        for delivery in self.transport.take():
            if delivery.asset_id in self.refusing:
                self.transport.reject(delivery, "local control mode")
                continue
            self.transport.ack(delivery)
            self.setpoints[delivery.asset_id] = float(delivery.desired["setpoint_kw"])

    def report(self) -> None:
        samples = []
        for asset_id in sorted(self.fleet.model.assets):
            if asset_id in self.silent or not asset_id.startswith("b-"):
                continue
            power = (self.stuck[asset_id] if asset_id in self.stuck else
                     0.0 if asset_id in self.deaf else self.setpoints.get(asset_id, 0.0))
            samples.append(Sample(asset_id, self.clock.now(), {
                "power_kw": power, "soc_pct": self.soc.get(asset_id, 50.0)}))
        self.fleet.ingest(samples)

    def step(self) -> DispatchReport | None:
        """One second: devices act on what they got, report, the fleet ticks."""
        self.deliver()
        self.fleet.advance(1)
        self.report()
        return None


@pytest.fixture
def fleet(clock: VirtualClock, transport: RecordingTransport) -> Iterator[Fleet]:
    with Fleet(FleetModel.from_dict(fleet_dict()), clock=clock, transport=transport) as running:
        yield running


@pytest.fixture
def plant(fleet: Fleet, clock: VirtualClock, transport: RecordingTransport) -> Plant:
    plant = Plant(fleet, clock, transport)
    plant.report()
    return plant


def test_a_target_is_split_over_the_batteries_under_the_path_and_achieved(
        fleet: Fleet, plant: Plant) -> None:
    dispatch = fleet.dispatch("acme/north", 200.0, duration_s=60)
    report = dispatch.report()
    assert report is not None
    assert (report.members, report.eligible, report.allocated) == (4, 4, 4)
    assert report.allocated_kw == pytest.approx(200.0) and report.ok
    plant.step()
    plant.step()
    report = dispatch.report()
    assert report is not None and report.achieved_kw == pytest.approx(200.0)
    assert report.acknowledged_kw == pytest.approx(200.0)
    assert plant.setpoints == {f"b-{i}": pytest.approx(50.0) for i in range(4)}
    assert "b-4" not in plant.setpoints                  # acme/south is not in it
    assert str(report).startswith("dispatch d-1 on acme/north: target 200.0 kW, allocated "
                                  "200.0 kW to 4 of 4, achieved 200.0 kW")


def test_setpoints_are_leases_renewed_every_tick(
        fleet: Fleet, plant: Plant, transport: RecordingTransport) -> None:
    fleet.dispatch("acme/north", 200.0, duration_s=60, lease_s=3.0)
    for _ in range(3):
        sent = transport.sent[:]
        plant.step()
        assert {d.expires_at for d in sent} == {plant.clock.now() - 1 + 3.0}
        assert len(sent) == 4


def test_a_battery_that_drops_offline_has_its_share_moved_within_one_tick(
        fleet: Fleet, plant: Plant) -> None:
    dispatch = fleet.dispatch("acme/north", 300.0, duration_s=600)
    plant.step()
    plant.silent.add("b-3")
    for _ in range(31):                         # offline after 30 s of silence
        plant.step()
    report = dispatch.report()
    assert report is not None
    assert report.excluded == {"offline": ("b-3",)} and report.eligible == 3
    assert report.allocated_kw == pytest.approx(300.0)
    assert plant.setpoints["b-0"] == pytest.approx(100.0)      # 300 kW over three
    plant.step()
    assert dispatch.report().achieved_kw == pytest.approx(300.0)  # type: ignore[union-attr]


def test_more_than_the_members_can_give_is_clamped_and_the_constraint_named(
        fleet: Fleet, plant: Plant) -> None:
    dispatch = fleet.dispatch("acme/north", 1000.0, duration_s=60)
    report = dispatch.report()
    assert report is not None
    assert report.feasible_kw == pytest.approx(400.0) and not report.ok
    assert "discharge capacity" in report.binding and "4" in report.binding


def test_a_report_never_says_all_is_well_while_allocating_nothing(
        fleet: Fleet, plant: Plant) -> None:
    plant.silent.update(f"b-{i}" for i in range(4))
    for _ in range(31):
        plant.step()
    dispatch = fleet.dispatch("acme/north", 200.0, duration_s=60)
    report = dispatch.report()
    assert report is not None
    assert report.allocated_kw == 0.0 and not report.ok
    assert report.excluded_counts == {"offline": 4}


def test_empty_and_full_batteries_sit_out_the_direction_they_cannot_go(
        fleet: Fleet, plant: Plant) -> None:
    plant.soc = {"b-0": 3.0, "b-1": 97.0}
    plant.step()
    discharge = fleet.dispatch("acme/north", 150.0, duration_s=60)
    assert plant.transport.sent and discharge.report() is not None
    plant.step()
    assert plant.setpoints["b-0"] == 0.0 and plant.setpoints["b-1"] > 0
    discharge.cancel()
    charge = fleet.dispatch("acme/north", -150.0, duration_s=60, flip_threshold_kw=0.0)
    plant.step()
    assert plant.setpoints["b-1"] == 0.0 and plant.setpoints["b-0"] < 0
    assert charge.report() is not None


def test_assets_that_do_not_follow_are_found_and_left_out_for_a_cool_down(
        fleet: Fleet, plant: Plant) -> None:
    plant.deaf.add("b-2")
    dispatch = fleet.dispatch("acme/north", 200.0, duration_s=600)
    for _ in range(12):                         # dead time + settle time of a battery: 10 s
        plant.step()
    assert fleet.rollup("acme/north").not_following == ("b-2",)
    report = dispatch.report()
    assert report is not None
    assert report.excluded == {"not following its setpoint": ("b-2",)}
    assert report.allocated_kw == pytest.approx(200.0) and report.eligible == 3
    plant.deaf.clear()                          # it heals, but sits out its cool-down
    for _ in range(5):
        plant.step()
    report = dispatch.report()
    assert report is not None and "not following its setpoint" in report.excluded


def test_a_ramp_limits_how_fast_the_target_moves(fleet: Fleet, plant: Plant) -> None:
    dispatch = fleet.dispatch("acme/north", 200.0, duration_s=600, ramp_kw_per_s=50.0)
    targets = []
    for _ in range(5):
        report = dispatch.report()
        assert report is not None
        targets.append(report.ramped_kw)
        plant.step()
    assert targets == [50.0, 100.0, 150.0, 200.0, 200.0]


def test_update_changes_the_target_and_cancel_sends_the_defaults(
        fleet: Fleet, plant: Plant) -> None:
    dispatch = fleet.dispatch("acme/north", 200.0, duration_s=600, flip_threshold_kw=150.0)
    plant.step()
    report = dispatch.update(-100.0)
    assert report is not None and report.allocated_kw == pytest.approx(0.0)   # hysteresis
    assert report.binding.startswith("hysteresis")
    dispatch.update(-200.0)
    plant.step()
    assert plant.setpoints["b-0"] == pytest.approx(-50.0)
    dispatch.cancel()
    plant.step()
    assert set(plant.setpoints.values()) == {0.0}
    assert dispatch.status == "cancelled"
    with pytest.raises(ValueError, match="dispatch 'd-1' is cancelled"):
        dispatch.update(10.0)


def test_a_dispatch_ends_by_itself_and_its_members_go_back_to_defaults(
        fleet: Fleet, plant: Plant) -> None:
    dispatch = fleet.dispatch("acme", 300.0, duration_s=5)
    for _ in range(6):
        plant.step()
    assert dispatch.status == "ended"
    assert set(plant.setpoints.values()) == {0.0}
    assert fleet.dispatches(active_only=True) == []


def test_reports_reach_subscribers_and_metrics(fleet: Fleet, plant: Plant) -> None:
    reports: list[DispatchReport] = []
    with fleet.subscribe_dispatches(reports.append):
        dispatch = fleet.dispatch("acme/north", 200.0, duration_s=60)
        plant.step()
        plant.step()
    assert [r.dispatch_id for r in reports] == ["d-1", "d-1", "d-1"]
    figures = fleet.metrics()["dispatches"]
    assert figures == {"d-1": {"target_kw": 200.0, "allocated_kw": pytest.approx(200.0),
                               "achieved_kw": pytest.approx(200.0)}}
    assert 'twin_dispatch_target_kw{dispatch="d-1"} 200.0' in fleet.metrics_text().decode()
    assert fleet.get_dispatch(dispatch.id).spec.path == "acme/north"


def test_a_dispatch_tick_reaches_the_transport_as_one_batch(
        fleet: Fleet, plant: Plant, transport: RecordingTransport) -> None:
    handed: list[object] = []
    original = transport.send

    def send(deliveries: Any) -> None:
        handed.append(deliveries)
        original(deliveries)

    transport.send = send  # type: ignore[method-assign]
    fleet.dispatch("acme/north", 200.0, duration_s=60)
    [batch] = handed
    assert isinstance(batch, DeliveryBatch) and len(batch) == 4
    assert batch[0].asset_id == "b-0" and batch[-1].desired == {"setpoint_kw": 50.0}
    assert batch.command_ids() == [d.command_id for d in batch]


@pytest.mark.parametrize(("call", "message"), [
    (lambda f: f.dispatch("acme/nowhere", 1.0, duration_s=10), "acme/nowhere"),
    (lambda f: f.dispatch("acme", 1.0, duration_s=0), "duration_s must be a positive number, "
                                                       "got 0"),
    (lambda f: f.dispatch("acme", float("nan"), duration_s=10), "target_kw must be a finite "
                                                                "number, got nan"),
    (lambda f: f.dispatch("acme", 1.0, duration_s=10, kinds=("turbine",)),
     "kind 'turbine' cannot be dispatched: none of its commands .power_limit_kw. sets its "
     "power"),
    (lambda f: f.dispatch("acme", 1.0, duration_s=10, strategy="fastest"),
     "strategy must be one of headroom, soc, got 'fastest'"),
])
def test_bad_dispatch_requests_name_the_field_and_value(fleet: Fleet, call: Any,
                                                        message: str) -> None:
    with pytest.raises((ValueError, UnknownPath), match=message):
        call(fleet)
    assert fleet.dispatches() == []


def test_two_dispatches_may_not_steer_the_same_battery(fleet: Fleet, plant: Plant) -> None:
    fleet.dispatch("acme/north", 100.0, duration_s=60)
    with pytest.raises(ValueError, match=r"4 of the assets under 'acme' are already in an "
                                         r"active dispatch: b-0 \(in d-1\)"):
        fleet.dispatch("acme", 100.0, duration_s=60)
    fleet.dispatch("acme/south", 100.0, duration_s=60)          # disjoint: fine
    with pytest.raises(UnknownCommand, match="unknown dispatch 'd-9'"):
        fleet.get_dispatch("d-9")


def test_a_dispatch_steers_batteries_on_shard_processes(clock: VirtualClock) -> None:
    transport = RecordingTransport(auto_ack=True)
    with Fleet(FleetModel.from_dict(fleet_dict()), clock=clock, transport=transport, shards=2,
               system="multiprocTCPBase") as fleet:
        plant = Plant(fleet, clock, transport)
        plant.report()
        assert len(set(fleet.placement.values())) == 2          # the two sites apart
        dispatch = fleet.dispatch("acme", 300.0, duration_s=60)
        plant.step()
        plant.step()
        report = dispatch.report()
        assert report is not None and report.members == 6
        assert report.achieved_kw == pytest.approx(300.0)
        assert plant.setpoints == {f"b-{i}": pytest.approx(50.0) for i in range(6)}


def test_devices_that_acknowledge_slower_than_the_tick_are_not_left_out(
        fleet: Fleet, plant: Plant, transport: RecordingTransport) -> None:
    dispatch = fleet.dispatch("acme/north", 200.0, duration_s=600)
    in_flight: list[list[Any]] = []
    for _ in range(8):
        in_flight.append(transport.take())
        if len(in_flight) > 2:                  # each ack arrives two ticks late
            for delivery in in_flight.pop(0):
                transport.ack(delivery)
                plant.setpoints[delivery.asset_id] = delivery.desired["setpoint_kw"]
        plant.fleet.advance(1)
        plant.report()
    report = dispatch.report()
    assert report is not None and report.excluded == {} and report.eligible == 4
    assert fleet.metrics()["command_acks_stale"] > 0


def test_a_battery_that_rejects_its_setpoint_sits_out_and_its_share_moves(
        fleet: Fleet, plant: Plant) -> None:
    plant.refusing.add("b-1")
    dispatch = fleet.dispatch("acme/north", 300.0, duration_s=600)
    for _ in range(3):
        plant.step()
    report = dispatch.report()
    assert report is not None
    assert report.excluded == {"rejecting commands": ("b-1",)}
    assert plant.setpoints == {"b-0": 100.0, "b-2": 100.0, "b-3": 100.0}
    assert report.achieved_kw == pytest.approx(300.0)


def test_what_left_out_members_deliver_is_taken_off_the_target(
        fleet: Fleet, plant: Plant) -> None:
    plant.stuck["b-3"] = 100.0                 # discharging at full power, deaf to setpoints
    dispatch = fleet.dispatch("acme/north", 250.0, duration_s=600)
    for _ in range(13):
        plant.step()
    report = dispatch.report()
    assert report is not None and "b-3" in report.excluded["not following its setpoint"]
    assert report.uncontrolled_kw == pytest.approx(100.0)
    assert report.allocated_kw == pytest.approx(150.0) and report.ok
    assert report.achieved_kw == pytest.approx(250.0)       # not 350: no overshoot


def test_a_battery_that_ignores_setpoints_and_acknowledges_late_is_found_out(
        fleet: Fleet, plant: Plant, transport: RecordingTransport) -> None:
    dispatch = fleet.dispatch("acme/north", 200.0, duration_s=600)
    in_flight: list[list[Any]] = []
    flagged: list[tuple[str, ...]] = []
    for _ in range(16):
        sent = transport.take()
        for delivery in sent:                   # the others acknowledge at once
            if delivery.asset_id != "b-2":
                transport.ack(delivery)
                plant.setpoints[delivery.asset_id] = delivery.desired["setpoint_kw"]
        in_flight.append([d for d in sent if d.asset_id == "b-2"])
        if len(in_flight) > 2:                  # b-2 acknowledges two ticks late, and idles
            for delivery in in_flight.pop(0):
                transport.ack(delivery)
        fleet.advance(1)
        plant.report()
        flagged.append(fleet.rollup("acme/north").not_following)
    assert flagged[9] == () and flagged[10] == ("b-2",)   # after dead time + settle time
    # left out, its lease ends and it idles at its default, which it follows: no longer
    # flagged, but it sits out its cool-down
    assert flagged[-1] == ()
    report = dispatch.report()
    assert report is not None and report.excluded == {"not following its setpoint": ("b-2",)}


def test_a_member_silent_for_one_and_a_half_report_intervals_sits_out_as_stale(
        fleet: Fleet, plant: Plant) -> None:
    dispatch = fleet.dispatch("acme/north", 200.0, duration_s=600)
    plant.silent.add("b-0")
    for _ in range(16):                         # report interval 10 s: stale after 15 s
        plant.step()
    report = dispatch.report()
    assert report is not None and fleet.asset("b-0").state == "online"
    assert report.excluded == {"stale (no report for 1.5 report intervals)": ("b-0",)}
