"""Fault injection against the real runtime: the simulator knows every sample's class, so the
runtime's counts must equal what was injected, fault by fault and all together."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim import SimConfig, SimConfigError, build_report, load_faults, parse_faults, run_simulation
from sim.faults import DEFAULT_PRESET, poisson
from sim.report import CLASSES
from sim.schedule import ScheduledDispatch

# data quality does not depend on control: no dispatch (the control ticks cost time), except
# where a test says so
SMALL = SimConfig(assets=120, duration_s=1800.0, seed=11, dispatches=())
WITH_DISPATCH = SimConfig(assets=120, duration_s=1800.0, seed=11)


def run(plan: dict[str, Any], config: SimConfig = SMALL) -> dict[str, Any]:
    return build_report(run_simulation(config, parse_faults(plan, "test")))


def counts(report: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {c: (report["quality"][c]["injected"], report["quality"][c]["counted"])
            for c in CLASSES}


def assert_counted_as_injected(report: dict[str, Any]) -> None:
    mismatched = {c: v for c, v in counts(report).items() if v[0] != v[1]}
    assert mismatched == {}, f"injected != counted: {mismatched}"


# each fault alone, at a rate high enough to show, and the class it must produce
SINGLE_FAULTS = [
    ({"duplicate": {"per_asset_hour": 4.0}}, "duplicate"),
    ({"future": {"per_asset_hour": 2.0}}, "future"),
    ({"stale_replay": {"per_asset_hour": 1.0}}, "stale"),
    ({"anomalous": {"per_asset_hour": 4.0}}, "anomalous"),
    ({"anomalous": {"per_asset_hour": 4.0, "modes": ["nan"]}}, "anomalous"),
    ({"malformed": {"per_asset_hour": 4.0}}, "rejected"),
    ({"offline": {"per_asset_hour": 1.0}, "late_burst": {"probability": 1.0}}, "late"),
    ({"crash_loop": {"per_asset_hour": 1.0, "quarantine_s": 300}}, "quarantined"),
    ({"crash_loop": {"per_asset_hour": 1.0}}, "deferred"),
]


@pytest.mark.parametrize("step", [1.5, 2.0, 2.5, 20.0])
def test_crash_loops_during_a_dispatch_are_counted_as_injected_at_any_step(step: float) -> None:
    """A dispatch cuts each step's advance into one-second control ticks, so a crash loop
    reaches its quarantine a step sooner than between dispatches; the truth must know."""
    report = run({"crash_loop": {"per_asset_hour": 3.0, "quarantine_s": 60},
                  "crash": {"per_asset_hour": 2.0}},
                 SimConfig(assets=30, duration_s=600.0, seed=3, step_s=step,
                           mix={"battery": 1.0}))
    assert report["supervision"]["crash_loops_injected"] > 0
    assert report["quality"]["quarantined"]["injected"] > 0
    assert_counted_as_injected(report)


@pytest.mark.parametrize(("plan", "expected_class"), SINGLE_FAULTS,
                         ids=[f"{next(iter(p))}-{c}" for p, c in SINGLE_FAULTS])
def test_each_fault_produces_its_class_and_the_runtime_counts_it_exactly(
        plan: dict[str, Any], expected_class: str) -> None:
    report = run(plan)
    assert report["quality"][expected_class]["injected"] > 0
    assert_counted_as_injected(report)


def test_without_faults_every_sample_is_accepted_and_every_asset_reports() -> None:
    report = run({})
    quality = counts(report)
    assert quality["accepted"][0] == report["totals"]["samples_sent"] > 0
    assert all(quality[c] == (0, 0) for c in CLASSES if c != "accepted")
    assert report["detected"]["by_state"] == {"online": 120}
    assert report["offline_detection"]["detections"] == 0


def test_default_preset_counts_every_class_as_injected() -> None:
    report = run(DEFAULT_PRESET, SimConfig(assets=400, duration_s=3600.0, seed=5))
    assert_counted_as_injected(report)
    assert report["quality"]["all_match"] is True


def test_offline_episodes_longer_than_the_timeout_are_all_detected_and_nothing_else() -> None:
    plan = {"offline": {"per_asset_hour": 1.5, "lengths_s": [60, 120, 300, 1200]},
            "dropout": {"per_asset_hour": 30.0}, "anomalous": {"per_asset_hour": 10.0},
            "late_burst": {"probability": 0.5}}
    detection = run(plan)["offline_detection"]
    assert detection["episodes_longer_than_timeout"] > 20
    assert detection["precision"] == 1.0
    assert detection["recall"] == 1.0
    assert detection["false_detections"] == 0
    # detected no later than a timeout plus one periodic report after the episode began
    assert detection["delay_s"]["max"] <= max(detection["offline_after_s"]) + 60


def test_crash_loops_end_in_quarantine_and_single_crashes_only_restart() -> None:
    report = run({"crash": {"per_asset_hour": 2.0},
                  "crash_loop": {"per_asset_hour": 0.5, "quarantine_s": 3600}}, WITH_DISPATCH)
    sup = report["supervision"]
    assert sup["crash_loops_injected"] > 0
    assert sup["runtime_quarantines"] == sup["crash_loops_injected"]
    assert sup["runtime_restarts"] == sup["crashes_injected"] + 3 * sup["crash_loops_injected"]
    assert report["detected"]["by_state"]["quarantined"] > 0
    assert_counted_as_injected(report)


def test_devices_that_never_come_up_stay_unknown_in_the_runtime() -> None:
    report = run({"never_up": {"fraction": 0.1}})
    never = [a for a, t in report["truth"]["assets"].items() if t.get("never_up")]
    assert len(never) == 12
    assert {report["detected"]["assets"][a] for a in never} == {"unknown"}
    assert report["offline_detection"]["never_up"] == {"injected": 12, "runtime_unknown": 12}


def test_skewed_clocks_within_the_allowed_skew_are_accepted() -> None:
    report = run({"clock": {"fraction": 1.0, "skew_s": 200, "drift_ppm": 500}})
    assert report["faults"]["clock"] == 120
    assert counts(report)["accepted"][0] == report["totals"]["samples_sent"]


def test_clocks_beyond_the_allowed_skew_make_every_sample_future() -> None:
    # a 1000 s skew is far past the model's 300 s: the runtime never sees these devices
    report = run({"clock": {"fraction": 1.0, "skew_s": 1000}},
                 SimConfig(assets=30, duration_s=600.0, seed=2))
    assert_counted_as_injected(report)
    assert report["quality"]["future"]["injected"] > 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000),
       rates=st.fixed_dictionaries({name: st.floats(0.0, 6.0) for name in (
           "dropout", "offline", "duplicate", "future", "stale_replay", "anomalous", "stuck",
           "malformed", "crash", "crash_loop")}),
       burst=st.floats(0.0, 1.0), never=st.floats(0.0, 0.3), skew=st.floats(0.0, 400.0),
       dispatch=st.booleans())
def test_counted_equals_injected_for_any_rates_and_seed(
        seed: int, rates: dict[str, float], burst: float, never: float, skew: float,
        dispatch: bool) -> None:
    plan: dict[str, Any] = {name: {"per_asset_hour": rate} for name, rate in rates.items()}
    plan.update(late_burst={"probability": burst}, never_up={"fraction": never},
                clock={"fraction": 0.5, "skew_s": skew})
    plan["crash_loop"]["quarantine_s"] = 120
    # half the examples with a dispatch for the middle third of the run (control ticks)
    schedule = (ScheduledDispatch("acme", 50.0, 300.0, 600.0),) if dispatch else ()
    report = run(plan, SimConfig(assets=25, duration_s=900.0, seed=seed, owners=1, regions=2,
                                 dispatches=schedule))
    assert_counted_as_injected(report)
    detection = report["offline_detection"]
    if skew < 300 and detection["detections"]:
        assert detection["precision"] == 1.0
    if skew < 300 and detection["recall"] is not None:
        assert detection["recall"] == 1.0


def test_faults_file_errors_name_the_fault_the_setting_and_the_value(tmp_path: Path) -> None:
    cases = [
        ({"dropouts": {}}, "unknown fault 'dropouts' (valid: ack_delay, anomalous, clock,"),
        ({"dropout": {"per_asset_hour": -1}}, "dropout.per_asset_hour: expected a number >= 0, "
                                              "got -1"),
        ({"offline": {"lengths_s": [60, "5m"]}}, "offline.lengths_s[1]: expected seconds > 0, "
                                                 "got '5m'"),
        ({"never_up": {"fraction": 1.5}}, "never_up.fraction: expected a fraction from 0 to 1"),
        ({"future": {"ahead_s": [900]}}, "future.ahead_s: expected [lo, hi]"),
        ({"anomalous": {"modes": ["spike"]}}, "anomalous.modes: expected a non-empty list of "
                                              "'out_of_range', 'nan', got ['spike']"),
        ({"crash": {"rate": 1}}, "crash.rate: unknown setting (valid: per_asset_hour)"),
        ([1, 2], "a faults file is an object"),
    ]
    for raw, message in cases:
        path = tmp_path / "faults.json"
        path.write_text(json.dumps(raw))
        with pytest.raises(SimConfigError, match=re.escape(message)):
            load_faults(str(path))
    path.write_text("{not json")
    with pytest.raises(SimConfigError, match=re.escape("faults.json: not valid JSON")):
        load_faults(str(path))
    with pytest.raises(SimConfigError, match="cannot read it"):
        load_faults(str(tmp_path / "missing.json"))


def test_presets_and_a_file_give_the_same_plan(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    path.write_text(json.dumps(DEFAULT_PRESET))
    assert load_faults(str(path)).to_dict() == load_faults("default").to_dict()
    assert all(settings.get("per_asset_hour", 0) == 0 for settings in
               load_faults("none").to_dict().values())


def test_poisson_counts_average_their_mean() -> None:
    import random

    rng = random.Random(1)
    for mean in (0.0, 0.3, 4.0, 80.0):
        draws = [poisson(rng, mean) for _ in range(4000)]
        assert abs(sum(draws) / len(draws) - mean) < 0.05 * mean + 0.02
