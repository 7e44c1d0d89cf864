"""Supervision: the pure policy functions, then restarts, quarantine and escalation in a Fleet."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisors import affected_children, backoff_delay, record_restart
from twin import (
    AssetUnavailable,
    Fleet,
    FleetModel,
    MoveAsset,
    OnExhausted,
    Sample,
    Strategy,
    SupervisionPolicy,
    VirtualClock,
)
from twin.testing import assert_consistent, capture_logs

ALPHA = ("t-01", "b-01", "c-01")          # site alpha, in model order
OTHERS = ("t-02", "b-02")                 # sites gamma and beta
MakeFleet = Callable[..., Fleet]          # make(shards=1, **policy) -> a fleet, all online

# -- pure functions -------------------------------------------------------------------------


def test_record_restart_keeps_only_failures_within_the_window() -> None:
    history, exceeded = record_restart((0.0, 10.0, 50.0), 65.0, max_restarts=3, within_s=60.0)
    assert history == (10.0, 50.0, 65.0)
    assert not exceeded


@pytest.mark.parametrize(("failures", "max_restarts", "exceeded"), [
    (1, 0, True), (1, 1, False), (2, 1, True), (3, 3, False), (4, 3, True)])
def test_the_intensity_is_exceeded_when_more_than_max_restarts_fall_in_the_window(
        failures: int, max_restarts: int, exceeded: bool) -> None:
    history: tuple[float, ...] = ()
    result = False
    for i in range(failures):
        history, result = record_restart(history, 100.0 + i, max_restarts, 60.0)
    assert result is exceeded
    assert len(history) == failures


def test_failures_older_than_the_window_do_not_count() -> None:
    _, inside = record_restart((0.1, 30.0), 60.0, max_restarts=2, within_s=60.0)
    assert inside
    history, outside = record_restart((0.0, 30.0), 60.1, max_restarts=2, within_s=60.0)
    assert not outside
    assert history == (30.0, 60.1)


FLAT = SupervisionPolicy(backoff_base_s=0.5, backoff_max_s=30.0, jitter=0.0)


def test_the_first_restart_is_immediate() -> None:
    assert backoff_delay(1, SupervisionPolicy(), random.Random(1)) == 0.0


def test_backoff_grows_exponentially_up_to_its_cap() -> None:
    delays = [backoff_delay(n, FLAT, random.Random(0)) for n in range(1, 10)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_delay(200, FLAT, random.Random(0)) == 30.0


def test_without_an_immediate_first_restart_backoff_starts_at_the_base() -> None:
    policy = SupervisionPolicy(backoff_base_s=2.0, jitter=0.0, first_restart_immediate=False)
    assert [backoff_delay(n, policy, random.Random(0)) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]


def test_backoff_stays_capped_however_many_restarts_the_window_allows() -> None:
    assert backoff_delay(1100, FLAT, random.Random(0)) == 30.0


@settings(max_examples=300, derandomize=True, deadline=None)
@given(attempt=st.integers(2, 60), jitter=st.floats(0.0, 1.0), seed=st.integers(0, 2**32))
def test_jittered_backoff_stays_between_its_floor_and_ceiling(
        attempt: int, jitter: float, seed: int) -> None:
    policy = SupervisionPolicy(backoff_base_s=0.5, backoff_max_s=30.0, jitter=jitter)
    ceiling = min(30.0, 0.5 * 2.0 ** (attempt - 2))
    delay = backoff_delay(attempt, policy, random.Random(seed))
    assert ceiling * (1.0 - jitter) - 1e-9 <= delay <= ceiling + 1e-9


def test_backoff_is_deterministic_for_a_seeded_random() -> None:
    policy = SupervisionPolicy(jitter=1.0)
    runs = [[backoff_delay(n, policy, rng) for n in range(2, 12)]
            for rng in (random.Random(42), random.Random(42))]
    assert runs[0] == runs[1]
    assert len(set(runs[0][-3:])) == 3          # jitter=1.0 really is random at the cap


@pytest.mark.parametrize(("strategy", "failed", "expected"), [
    (Strategy.ONE_FOR_ONE, "b", ["b"]),
    (Strategy.ONE_FOR_ALL, "b", ["a", "b", "c", "d"]),
    (Strategy.REST_FOR_ONE, "b", ["b", "c", "d"]),
    (Strategy.REST_FOR_ONE, "a", ["a", "b", "c", "d"]),
    (Strategy.REST_FOR_ONE, "d", ["d"]),
])
def test_affected_children_follow_the_strategy_in_start_order(
        strategy: Strategy, failed: str, expected: list[str]) -> None:
    assert affected_children(["a", "b", "c", "d"], failed, strategy) == expected


# -- through a fleet ------------------------------------------------------------------------


@pytest.fixture
def make(model: FleetModel, clock: VirtualClock) -> Iterator[MakeFleet]:
    fleets: list[Fleet] = []

    def build(shards: int = 1, **policy: Any) -> Fleet:
        site = policy.pop("site_supervision", None)
        fleet = Fleet(model, clock=clock, shards=shards, seed=7,
                      supervision=SupervisionPolicy(**policy), site_supervision=site)
        fleets.append(fleet)
        fleet.ingest([Sample(a, clock.now(), {"power_kw": 1.0 + i})
                      for i, a in enumerate(ALPHA + OTHERS)])
        return fleet

    yield build
    for fleet in fleets:
        fleet.close()


def restarts(fleet: Fleet, ids: tuple[str, ...] = ALPHA + OTHERS) -> dict[str, int]:
    return {a: fleet.asset(a).restarts for a in ids}


def states(fleet: Fleet, ids: tuple[str, ...] = ALPHA + OTHERS) -> dict[str, str]:
    return {a: fleet.asset(a).state for a in ids}


def test_one_for_one_restarts_only_the_failed_asset_from_its_last_good_state(
        make: MakeFleet, shards: int) -> None:
    fleet = make(shards)
    before = fleet.asset("b-01").reported
    seen = len(fleet.transitions())
    fleet.inject_fault("b-01")
    assert restarts(fleet) == {"t-01": 0, "b-01": 1, "c-01": 0, "t-02": 0, "b-02": 0}
    assert set(states(fleet).values()) == {"online"}
    assert fleet.asset("b-01").reported == before == {"power_kw": 2.0}
    assert fleet.transitions()[seen:] == []
    assert_consistent(fleet)


def test_samples_sent_during_a_backoff_are_deferred_then_applied_when_it_ends(
        make: MakeFleet, clock: VirtualClock) -> None:
    fleet = make(backoff_base_s=2.0, jitter=0.0, first_restart_immediate=False)
    fleet.inject_fault("t-01")
    report = fleet.ingest([Sample("t-01", clock.now() + 0.5, {"power_kw": 9.0}),
                           Sample("t-01", clock.now() + 1.0, {"power_kw": 7.0}),
                           Sample("t-02", clock.now() + 1.0, {"power_kw": 3.0})])
    assert (report.deferred, report.accepted) == (2, 1)
    fleet.advance(1.9)
    assert fleet.asset("t-01").reported == {"power_kw": 1.0}
    assert fleet.asset("t-01").restarts == 0
    fleet.advance(0.1)
    view = fleet.asset("t-01")
    assert (view.restarts, view.state, view.reported) == (1, "online", {"power_kw": 7.0})
    assert view.quality["accepted"] == 3
    assert fleet.rollup("acme/north/alpha").power_kw == 7.0 + 2.0 + 3.0
    assert_consistent(fleet)


def test_a_command_during_a_backoff_is_refused_not_queued(make: MakeFleet) -> None:
    fleet = make(backoff_base_s=2.0, jitter=0.0, first_restart_immediate=False)
    fleet.inject_fault("b-01")
    with pytest.raises(AssetUnavailable) as refused:
        fleet.command("b-01", {"setpoint_kw": 1.0})
    assert refused.value.state == "restarting"
    fleet.advance(3.0)
    assert fleet.asset("b-01").desired == {}
    assert fleet.command("b-01", {"setpoint_kw": 1.0}).desired == {"setpoint_kw": 1.0}


def crash_loop(fleet: Fleet, asset_id: str, faults: int = 3) -> None:
    for _ in range(faults):
        fleet.inject_fault(asset_id)
        fleet.advance(1.0)                      # past any backoff (at most 0.5 s here)


def test_a_crash_loop_past_the_intensity_quarantines_only_that_asset(
        make: MakeFleet, shards: int) -> None:
    fleet = make(shards, max_restarts=2, within_s=60.0)
    crash_loop(fleet, "b-01", 2)
    assert (fleet.asset("b-01").state, fleet.asset("b-01").restarts) == ("online", 2)
    crash_loop(fleet, "b-01", 1)
    assert states(fleet) == {"t-01": "online", "b-01": "quarantined", "c-01": "online",
                             "t-02": "online", "b-02": "online"}
    site = fleet.rollup("acme/north/alpha")
    assert (site.quarantined, site.reporting, site.missing) == (1, 2, ("b-01",))
    assert site.power_kw == 1.0 + 3.0
    assert fleet.rollup("acme").quarantined == 1
    assert fleet.transitions()[-1][1:4] == ("b-01", "online", "quarantined")
    assert_consistent(fleet)


def test_samples_to_a_quarantined_asset_are_counted_and_not_applied(
        make: MakeFleet, clock: VirtualClock) -> None:
    fleet = make(max_restarts=2)
    crash_loop(fleet, "b-01")
    report = fleet.ingest([Sample("b-01", clock.now(), {"power_kw": 4.0}),
                           Sample("c-01", clock.now(), {"power_kw": 4.0})])
    assert (report.quarantined, report.accepted) == (1, 1)
    assert fleet.asset("b-01").reported == {"power_kw": 2.0}
    assert fleet.metrics()["samples_quarantined"] == 1


def test_commands_to_a_quarantined_asset_raise_asset_unavailable(make: MakeFleet) -> None:
    fleet = make(max_restarts=2)
    crash_loop(fleet, "b-01")
    with pytest.raises(AssetUnavailable) as refused:
        fleet.command("b-01", {"setpoint_kw": 1.0})
    assert refused.value.state == "quarantined"


def test_a_released_asset_is_unknown_until_its_next_sample(make: MakeFleet, clock: VirtualClock
                                                          ) -> None:
    fleet = make(max_restarts=2)
    crash_loop(fleet, "b-01")
    fleet.release("b-01")
    assert fleet.asset("b-01").state == "unknown"
    assert fleet.rollup("acme/north/alpha").unknown == 1
    assert fleet.ingest([Sample("b-01", clock.now(), {"power_kw": 4.0})]).accepted == 1
    assert fleet.asset("b-01").state == "online"
    assert [t.new for t in fleet.transitions()[-2:]] == ["unknown", "online"]
    fleet.inject_fault("b-01")                # a fresh restart budget after release
    assert fleet.asset("b-01").state == "online"
    assert_consistent(fleet)


def test_failures_spread_beyond_the_window_never_quarantine(make: MakeFleet) -> None:
    fleet = make(max_restarts=1, within_s=60.0)
    for _ in range(4):
        fleet.inject_fault("c-01")
        fleet.advance(61.0)
        fleet.ingest([Sample("c-01", fleet.clock.now(), {"power_kw": 1.0})])
    assert (fleet.asset("c-01").state, fleet.asset("c-01").restarts) == ("online", 4)


def test_one_for_all_restarts_every_asset_of_the_site(make: MakeFleet, shards: int) -> None:
    fleet = make(shards, strategy=Strategy.ONE_FOR_ALL)
    fleet.inject_fault("c-01")
    assert restarts(fleet) == {"t-01": 1, "b-01": 1, "c-01": 1, "t-02": 0, "b-02": 0}
    assert set(states(fleet).values()) == {"online"}


def test_one_for_all_holds_every_asset_of_the_site_during_a_backoff(
        make: MakeFleet, clock: VirtualClock) -> None:
    fleet = make(strategy=Strategy.ONE_FOR_ALL, backoff_base_s=2.0, jitter=0.0,
                 first_restart_immediate=False)
    fleet.inject_fault("c-01")
    report = fleet.ingest([Sample(a, clock.now() + 1, {"power_kw": 5.0}) for a in ALPHA + OTHERS])
    assert (report.deferred, report.accepted) == (3, 2)
    fleet.advance(1.9)
    assert fleet.rollup("acme/north/alpha").power_kw == 1.0 + 2.0 + 3.0
    fleet.advance(0.1)
    assert restarts(fleet) == {"t-01": 1, "b-01": 1, "c-01": 1, "t-02": 0, "b-02": 0}
    assert fleet.rollup("acme/north/alpha").power_kw == 15.0


@pytest.mark.parametrize(("failed", "expected"), [
    ("t-01", (1, 1, 1)), ("b-01", (0, 1, 1)), ("c-01", (0, 0, 1))])
def test_rest_for_one_restarts_the_failed_asset_and_those_after_it(
        make: MakeFleet, failed: str, expected: tuple[int, ...]) -> None:
    fleet = make(strategy=Strategy.REST_FOR_ONE)
    fleet.inject_fault(failed)
    assert tuple(restarts(fleet, ALPHA).values()) == expected
    assert restarts(fleet, OTHERS) == {"t-02": 0, "b-02": 0}


def test_an_exhausted_site_supervisor_escalates_and_the_whole_site_is_quarantined(
        make: MakeFleet, clock: VirtualClock, shards: int) -> None:
    fleet = make(shards, max_restarts=0, on_exhausted=OnExhausted.ESCALATE,
                 site_supervision=SupervisionPolicy(max_restarts=0))
    with capture_logs() as logs:
        fleet.inject_fault("b-01")
    assert states(fleet) == {"t-01": "quarantined", "b-01": "quarantined",
                             "c-01": "quarantined", "t-02": "online", "b-02": "online"}
    assert fleet.rollup("acme/north/alpha").quarantined == 3
    report = fleet.ingest([Sample(a, clock.now() + 1, {"power_kw": 5.0})
                           for a in ALPHA + OTHERS])
    assert (report.quarantined, report.accepted) == (3, 2)
    assert [(e["supervisor"], e["offender"], e["action"]) for e in logs] == [
        ("site:alpha", "asset:b-01", "escalate"),
        ("shard-0", "site:alpha", "quarantine")]   # alpha, the biggest site, is on shard 0
    assert_consistent(fleet)


def test_each_failure_is_logged_exactly_once_with_its_fixed_keys(make: MakeFleet) -> None:
    fleet = make(max_restarts=2)
    with capture_logs() as logs:
        crash_loop(fleet, "t-01")
    failures = [e for e in logs if e["event"] == "actor_failed"]
    assert [e["action"] for e in failures] == ["restart", "restart", "quarantine"]
    assert {(e["supervisor"], e["offender"], e["reason"]) for e in failures} == {
        ("site:alpha", "asset:t-01", "RuntimeError: injected fault")}
    assert failures[0]["delay_s"] == 0.0
    assert 0.25 <= failures[1]["delay_s"] <= 0.5


def test_metrics_count_supervisor_failures_restarts_and_quarantines(make: MakeFleet) -> None:
    fleet = make(max_restarts=2, strategy=Strategy.ONE_FOR_ALL)
    crash_loop(fleet, "t-02")                     # gamma: a site of one asset
    fleet.inject_fault("t-01")                    # alpha: restarts its three assets
    metrics = fleet.metrics()
    assert (metrics["supervisor_failures"], metrics["supervisor_restarts"],
            metrics["supervisor_quarantines"], metrics["supervisor_escalations"]) == (4, 5, 1, 0)


def test_the_same_seed_gives_the_same_jittered_backoff(model: FleetModel) -> None:
    def delays(seed: int) -> list[float]:
        clock = VirtualClock(start=0.0)
        policy = SupervisionPolicy(max_restarts=5, jitter=1.0, within_s=1e6)
        with Fleet(model, clock=clock, supervision=policy, seed=seed) as fleet, \
                capture_logs() as logs:
            for _ in range(5):
                fleet.inject_fault("t-01")
                fleet.advance(60.0)
        return [e["delay_s"] for e in logs if e["event"] == "actor_failed"]

    first = delays(3)
    assert first == delays(3)
    assert first != delays(4)
    assert first[0] == 0.0 and len(set(first)) == 5


@pytest.mark.parametrize("shards", [1, 2], ids=["same-shard", "to-another-shard"])
def test_an_asset_moved_while_waiting_to_restart_runs_again_in_its_new_site(
        make: MakeFleet, clock: VirtualClock, shards: int) -> None:
    fleet = make(shards=shards, backoff_base_s=5.0, jitter=0.0, first_restart_immediate=False)
    fleet.inject_fault("t-01")
    waiting = fleet.ingest([Sample("t-01", clock.now() + 1, {"power_kw": 11.0})])
    assert waiting.deferred == 1
    fleet.apply(MoveAsset("t-01", "gamma"))   # gamma is on the other shard when there are 2
    fleet.advance(1.0)                        # well before the old backoff would end
    assert fleet.asset("t-01").reported["power_kw"] == 11.0   # the waiting sample ran
    assert fleet.ingest([Sample("t-01", clock.now() + 0.5, {"power_kw": 12.0})]).accepted == 1
    assert_consistent(fleet)


def test_one_for_all_siblings_restart_even_if_the_failed_asset_moves_away(
        make: MakeFleet, clock: VirtualClock) -> None:
    fleet = make(strategy=Strategy.ONE_FOR_ALL, backoff_base_s=5.0, jitter=0.0,
                 first_restart_immediate=False)
    fleet.inject_fault("t-01")
    fleet.apply(MoveAsset("t-01", "gamma"))
    fleet.advance(6.0)
    report = fleet.ingest([Sample("b-01", clock.now(), {"power_kw": 1.0})])
    assert report.accepted == 1
