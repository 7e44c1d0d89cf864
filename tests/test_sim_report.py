"""The report: deterministic for a seed, truth beside the runtime's view, paced = virtual."""

from __future__ import annotations

import functools
import json
from typing import Any

from sim import SimConfig, build_report, load_faults, report_json, run_simulation
from sim.config import START
from sim.devices import Device
from sim.physics import ChargerPhysics
from sim.report import offline_detection, percentile
from sim.runner import Progress
from sim.truth import Episode
from twin import Fleet

CONFIG = SimConfig(assets=150, duration_s=1800.0, seed=21)


def report_for(config: SimConfig = CONFIG, **kwargs: Any) -> dict[str, Any]:
    return build_report(run_simulation(config, load_faults("default"), **kwargs))


@functools.cache
def default_report() -> dict[str, Any]:
    """One run of CONFIG for the tests that only read its report (runs repeat exactly)."""
    return report_for()


def without_timings(report: dict[str, Any]) -> str:
    return report_json({k: v for k, v in report.items() if k != "throughput"})


def test_same_seed_gives_the_same_report_byte_for_byte_apart_from_timings() -> None:
    first, second = default_report(), report_for()
    assert without_timings(first) == without_timings(second)
    assert first["throughput"].keys() == second["throughput"].keys()


def test_another_seed_gives_another_report() -> None:
    other = report_for(SimConfig(assets=150, duration_s=1800.0, seed=22))
    assert without_timings(other) != without_timings(default_report())


def test_report_has_every_section_and_is_plain_json() -> None:
    report = default_report()
    assert {"scenario", "truth", "detected", "offline_detection", "quality", "faults",
            "supervision", "control", "rollups", "totals", "throughput"} <= report.keys()
    assert json.loads(report_json(report)) == report
    assert report["truth"]["assets"].keys() == report["detected"]["assets"].keys()
    assert len(report["truth"]["assets"]) == 150
    assert report["throughput"]["samples_per_s"] > 0


def test_rollups_compare_the_runtime_with_the_truth_per_owner() -> None:
    rollups = default_report()["rollups"]
    assert len(rollups) == 3
    for owner in rollups.values():
        runtime, truth = owner["runtime"], owner["truth"]
        assert runtime["expected"] == truth["expected"]
        assert (runtime["reporting"] + runtime["offline"] + runtime["unknown"]
                + runtime["quarantined"]) == runtime["expected"]
        # the runtime sees the last reported power: within the deadbands of the true power
        assert abs(runtime["power_kw"] - truth["power_kw_of_reporting"]) <= (
            0.06 * runtime["capacity_kw"])


def test_the_default_run_dispatches_batteries_and_reports_on_control() -> None:
    report = default_report()
    control = report["control"]
    (dispatch,) = control["dispatches"].values()
    assert dispatch["path"] == report["scenario"]["dispatches"][0]["path"]
    assert dispatch["time_to_5pct_s"] is not None
    commands = control["commands"]
    assert commands["issued"] > 0 and commands["all_match"] is True
    assert commands["transport"]["deliveries"] >= commands["issued"]


def test_paced_run_waits_for_the_wall_clock_and_reports_like_a_virtual_run() -> None:
    wall = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        wall[0] += seconds

    def monotonic() -> float:
        return wall[0]

    config = SimConfig(assets=40, duration_s=300.0, seed=3, speed=60.0)
    paced = report_for(config, sleep=sleep, monotonic=monotonic)
    virtual = report_for(SimConfig(assets=40, duration_s=300.0, seed=3))
    assert len(slept) == 30
    assert sum(slept) == 300.0 / 60.0            # five minutes at 60x take five seconds
    paced["scenario"]["speed"] = "max"
    assert without_timings(paced) == without_timings(virtual)


def test_a_tiny_real_paced_run_finishes() -> None:
    config = SimConfig(assets=5, duration_s=20.0, seed=1, speed=2000.0)
    assert report_for(config)["quality"]["all_match"] is True


def test_on_fleet_sees_the_running_fleet_and_progress_every_step() -> None:
    fleets: list[Fleet] = []
    steps: list[Progress] = []
    report_for(SimConfig(assets=20, duration_s=100.0, seed=1), on_fleet=fleets.append,
               progress=steps.append)
    assert len(fleets) == 1
    assert [p.step for p in steps] == list(range(1, 11))
    assert steps[-1].virtual_s == 100.0
    assert steps[-1].samples > 0


def _device(asset_id: str, episodes: list[tuple[float, float | None]]) -> Device:
    import random

    dev = Device(0, asset_id, "charger", ChargerPhysics(11.0, random.Random(1)), 11.0,
                 30.0, 90.0, 0.05)
    for start, end in episodes:
        episode = Episode(asset_id, START + start)
        episode.end = None if end is None else START + end
        dev.episodes.append(episode)
    return dev


def test_offline_detection_matches_detections_to_episodes() -> None:
    devices = [_device("a", [(100, 400), (1000, 1050)]), _device("b", [(500, None)]),
               _device("c", [])]
    detected = {"a": [START + 180], "b": [START + 590], "c": [START + 700]}
    result = offline_detection(devices, detected, START + 2000)
    assert result["episodes_longer_than_timeout"] == 2     # a's first and b's open one
    assert result["episodes_shorter"] == 1
    assert result["recall"] == 1.0
    assert result["true_detections"] == 2
    assert result["false_detections"] == 1                 # c was never cut off
    assert result["precision"] == 2 / 3
    assert result["delay_s"]["p50"] == 80.0
    assert result["delay_s"]["max"] == 90.0


def test_an_undetected_long_episode_lowers_recall() -> None:
    result = offline_detection([_device("a", [(100, 400)])], {}, START + 500)
    assert result["recall"] == 0.0
    assert result["precision"] is None                     # no detections at all


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
