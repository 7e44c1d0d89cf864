"""The report: ground truth next to what the runtime saw, as JSON-ready data.

Everything in it follows from the seed except the ``throughput`` section (wall-clock
timings), so two runs with the same options give the same report apart from that section.
Floats are rounded to milliunits, keys are sorted when written (:func:`report_json`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from sim.config import START
from sim.control import control_section
from sim.devices import Device
from sim.inject import outcome_counts
from sim.runner import SimResult
from sim.truth import Episode

CLASSES = ("accepted", "duplicate", "late", "future", "stale", "anomalous", "rejected",
           "deferred", "quarantined")


def build_report(result: SimResult) -> dict[str, Any]:
    start = START
    detection = offline_detection(result.devices, result.offline_at, result.end)
    detection["never_up"]["runtime_unknown"] = sum(
        1 for dev in result.devices
        if dev.never_up and result.final_state.get(dev.id, "unknown") == "unknown")
    report = {
        "scenario": _scenario(result),
        "truth": _truth(result.devices, start, result.end),
        "detected": _detected(result),
        "offline_detection": detection,
        "quality": _quality(result),
        "faults": {**result.applied, "malformed_by_variant": result.malformed_by_variant,
                   "rejection_examples": result.error_examples[:6]},
        "supervision": {"crashes_injected": result.applied.get("crash", 0),
                        "crash_loops_injected": result.applied.get("crash_loop", 0),
                        "runtime_failures": result.metrics.get("supervisor_failures", 0),
                        "runtime_restarts": result.metrics.get("supervisor_restarts", 0),
                        "runtime_quarantines": result.metrics.get("supervisor_quarantines", 0)},
        "control": _control(result),
        "rollups": _rollups(result),
        "totals": {"samples_sent": result.samples_sent, "batches": result.batches,
                   "steps": result.config.steps,
                   "virtual_s": result.end - start},
        "throughput": _throughput(result, result.end - start),
    }
    rounded: dict[str, Any] = _rounded(report)
    return rounded


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, sort_keys=True, indent=2, allow_nan=False) + "\n"


def _scenario(result: SimResult) -> dict[str, Any]:
    config, model = result.config, result.model
    kinds: dict[str, int] = {}
    for dev in result.devices:
        kinds[dev.kind] = kinds.get(dev.kind, 0) + 1
    return {"seed": config.seed, "fleet": config.fleet_path or "generated",
            "assets": len(model.assets), "kinds": kinds, "owners": len(model.owners),
            "regions": sum(len(r) for r in model.owners.values()), "sites": len(model.sites),
            "duration_s": config.steps * config.step_s, "step_s": config.step_s,
            "speed": "max" if config.speed is None else config.speed,
            "start": START, "batch_size": config.batch_size,
            "store": config.store is not None,
            "thresholds": {"allowed_skew_s": model.defaults.allowed_skew_s,
                           "retention_s": model.defaults.retention_s},
            "faults_source": result.plan.source, "faults": result.plan.to_dict(),
            "dispatches": [entry.to_dict() for entry in result.schedule]}


def _truth(devices: Sequence[Device], start: float, end: float) -> dict[str, Any]:
    assets = {}
    for dev in devices:
        online = dev.connected and not dev.never_up
        entry: dict[str, Any] = {"state": "online" if online else "offline"}
        if dev.never_up:
            entry["never_up"] = True
        if dev.episodes:
            entry["episodes"] = [[e.start - start, None if e.end is None else e.end - start]
                                 for e in dev.episodes]
        assets[dev.id] = entry
    states = [a["state"] for a in assets.values()]
    return {"online": states.count("online"), "offline": states.count("offline"),
            "never_up": sum(d.never_up for d in devices),
            "episodes": sum(len(d.episodes) for d in devices),
            "episodes_open_at_end": sum(1 for d in devices for e in d.episodes if e.end is None),
            "assets": assets}


def _detected(result: SimResult) -> dict[str, Any]:
    states = {dev.id: result.final_state.get(dev.id, "unknown") for dev in result.devices}
    by_state: dict[str, int] = {}
    for state in states.values():
        by_state[state] = by_state.get(state, 0) + 1
    return {"by_state": by_state, "assets": states}


def offline_detection(devices: Sequence[Device], offline_at: dict[str, list[float]],
                      end: float) -> dict[str, Any]:
    """Match the runtime's online → offline transitions to the injected episodes.

    A detection inside an episode (from its start to the device's return) is a true one;
    any other is false. Recall counts episodes longer than the asset's offline timeout,
    which the runtime must detect; shorter ones are reported apart."""
    true_hits = false_hits = 0
    long_total = long_found = short_total = short_found = 0
    delays: list[float] = []
    for dev in devices:
        found: set[int] = set()
        for when in offline_at.get(dev.id, ()):
            index = _episode_at(dev.episodes, when, end)
            if index is None:
                false_hits += 1
                continue
            true_hits += 1
            if index not in found:
                found.add(index)
                delays.append(when - dev.episodes[index].start)
        for i, episode in enumerate(dev.episodes):
            if episode.length(end) > dev.timeout_s:
                long_total += 1
                long_found += i in found
            else:
                short_total += 1
                short_found += i in found
    detections = true_hits + false_hits
    timeouts = sorted({dev.timeout_s for dev in devices})
    never = [d for d in devices if d.never_up]
    return {"offline_after_s": timeouts,
            "episodes": long_total + short_total,
            "episodes_longer_than_timeout": long_total, "detected_longer": long_found,
            "episodes_shorter": short_total, "detected_shorter": short_found,
            "detections": detections, "true_detections": true_hits,
            "false_detections": false_hits,
            "precision": None if detections == 0 else true_hits / detections,
            "recall": None if long_total == 0 else long_found / long_total,
            "delay_s": {"p50": percentile(delays, 50), "p99": percentile(delays, 99),
                        "max": max(delays) if delays else None},
            "never_up": {"injected": len(never)}}


def _episode_at(episodes: Sequence[Episode], when: float, end: float) -> int | None:
    for i, episode in enumerate(episodes):
        if episode.start <= when <= (episode.end if episode.end is not None else end):
            return i
    return None


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``None`` for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100.0 * len(ordered)) - 1)]


def _quality(result: SimResult) -> dict[str, Any]:
    injected, counted = outcome_counts(result.injected), outcome_counts(result.counted)
    classes = {name: {"injected": injected[name], "counted": counted[name]} for name in CLASSES}
    return {**classes, "all_match": all(c["injected"] == c["counted"] for c in classes.values())}


def _control(result: SimResult) -> dict[str, Any]:
    if result.control is None:
        return {}
    return control_section(result.control, result.metrics, START)


def _rollups(result: SimResult) -> dict[str, Any]:
    owners = {}
    by_owner: dict[str, list[Device]] = {}
    for dev in result.devices:
        owner = result.model.sites[result.model.assets[dev.id].site].owner
        by_owner.setdefault(owner, []).append(dev)
    for path, rollup in sorted(result.rollups.items()):
        devices = by_owner.get(path, [])
        up = [d for d in devices if not d.never_up]
        connected = [d for d in up if d.connected]
        owners[path] = {
            "runtime": {"expected": rollup.expected, "reporting": rollup.reporting,
                        "offline": rollup.offline, "unknown": rollup.unknown,
                        "quarantined": rollup.quarantined, "power_kw": rollup.power_kw,
                        "capacity_kw": rollup.capacity_kw},
            "truth": {"expected": len(devices), "reporting": len(connected),
                      "power_kw": sum(d.power_kw for d in up),
                      "power_kw_of_reporting": sum(d.power_kw for d in connected)}}
    return owners


def _throughput(result: SimResult, virtual_s: float) -> dict[str, Any]:
    wall = max(result.wall_s, 1e-9)
    return {"wall_s": result.wall_s, "build_s": result.build_wall_s,
            "ingest_s": result.ingest_wall_s,
            "samples_per_s": result.samples_sent / wall,
            "ingest_samples_per_s": result.samples_sent / max(result.ingest_wall_s, 1e-9),
            "virtual_per_wall": virtual_s / wall}


def _rounded(value: Any) -> Any:
    """Floats to three decimals (and -0.0 to 0.0), recursively, so output is stable."""
    if isinstance(value, float):
        return round(value, 3) + 0.0
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value
