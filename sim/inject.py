"""Fault injection, step by step: which device gets which fault, and the samples it sends.

Every sample goes out through :class:`Emitter`, which asks :func:`sim.truth.expect` for the
class the runtime will give it and counts that as *injected*. Faults that lose a report
(dropouts, bad values) are applied only where :meth:`Device.may_lose` allows, so a device
that is connected never looks silent for a whole offline timeout: every offline the runtime
detects must then lie inside an injected offline episode.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

from sim.devices import Device
from sim.faults import FaultPlan, poisson
from sim.truth import (
    BAD_VALUE,
    CLEAN,
    MALFORMED_ACTOR,
    MALFORMED_WIRE,
    RUNNING,
    Episode,
    Thresholds,
    expect,
)
from twin import OUTCOMES, Sample

# per-step events, drawn for the whole fleet; the episode faults start before devices report
STEP_EVENTS = ("dropout", "anomalous", "duplicate", "future", "stale_replay", "malformed",
               "crash", "crash_loop")
MALFORMED_VARIANTS = ("unknown_asset", "bad_seq", "signals_not_a_map", "bad_ts",
                      "unknown_signal", "wrong_type")


class Emitter:
    """Collects one step's samples, each with the class the runtime must give it."""

    __slots__ = ("injected", "limits", "out")

    def __init__(self, injected: list[int]) -> None:
        self.injected = injected
        self.out: list[Sample] = []
        self.limits = Thresholds(0.0, 0.0, 0.0)

    def emit(self, dev: Device, signals: dict[str, Any], intent: int, ts: float) -> Sample:
        sample = Sample(dev.id, ts, signals, dev.next_seq())
        self.injected[expect(dev.expect, sample, intent, self.limits)] += 1
        self.out.append(sample)
        return sample

    def resend(self, dev: Device, sample: Sample) -> None:
        self.injected[expect(dev.expect, sample, CLEAN, self.limits)] += 1
        self.out.append(sample)

    def emit_malformed(self, sample: Sample, intent: int, dev: Device | None) -> None:
        self.injected[expect(None if dev is None else dev.expect, sample, intent,
                             self.limits)] += 1
        self.out.append(sample)


class Injector:
    """Draws and applies the faults of a :class:`FaultPlan` with its own seeded generator."""

    def __init__(self, plan: FaultPlan, rng: random.Random, step_s: float, within_s: float
                 ) -> None:
        self.plan = plan
        self.rng = rng
        self.step_s = step_s
        self.within_s = within_s            # the supervisor's restart window
        self.applied: dict[str, int] = {name: 0 for name in (
            *STEP_EVENTS, "offline", "stuck", "late_burst", "late_burst_samples",
            "stale_replay_samples", "never_up", "clock")}
        self.malformed_by_variant: dict[str, int] = dict.fromkeys(MALFORMED_VARIANTS, 0)
        self._ghosts = 0
        self._rates = {name: plan.rate(name) for name in (*STEP_EVENTS, "offline", "stuck")}

    # -- fleet setup ------------------------------------------------------------------------

    def setup(self, devices: Sequence[Device], allowed_skew_s: float) -> None:
        """Devices that never come up, and skewed or drifting clocks (within the runtime's
        allowed skew unless the plan asks for more)."""
        rng = self.rng
        n_never = round(len(devices) * self.plan.get("never_up", "fraction"))
        for dev in rng.sample(list(devices), n_never):
            dev.never_up = True
            dev.connected = False
        self.applied["never_up"] = n_never
        skew, drift = self.plan.get("clock", "skew_s"), self.plan.get("clock", "drift_ppm")
        live = [d for d in devices if not d.never_up]
        for dev in rng.sample(live, round(len(live) * self.plan.get("clock", "fraction"))):
            dev.offset_s = round(rng.uniform(-skew, skew), 3)
            dev.drift = rng.uniform(-drift, drift) * 1e-6
            self.applied["clock"] += 1

    # -- each step --------------------------------------------------------------------------

    def draw(self, t: float, devices: Sequence[Device]) -> dict[int, list[str]]:
        """This step's events by device index; offline episodes and stuck sensors start now."""
        rng = self.rng
        per_device = len(devices) * self.step_s / 3600.0
        events: dict[int, list[str]] = {}
        for name, rate in self._rates.items():
            for _ in range(poisson(rng, rate * per_device)):
                dev = devices[rng.randrange(len(devices))]
                if dev.never_up:
                    continue
                if name == "offline":
                    self._start_offline(dev, t)
                elif name == "stuck":
                    self._start_stuck(dev, t)
                else:
                    events.setdefault(dev.index, []).append(name)
        return events

    def _start_offline(self, dev: Device, t: float) -> None:
        # only a device the runtime sees online can be seen to go offline
        if not dev.connected or dev.expect.status != RUNNING or dev.expect.accepted_at is None:
            return
        length = self.rng.choice(self.plan.get("offline", "lengths_s"))
        dev.connected = False
        dev.offline_until = t + math.ceil(length / self.step_s) * self.step_s
        dev.episodes.append(Episode(dev.id, t))
        burst = self.rng.random() < self.plan.get("late_burst", "probability")
        dev.buffer = deque(maxlen=self.plan.get("late_burst", "max_samples")) if burst else None
        self.applied["offline"] += 1

    def _start_stuck(self, dev: Device, t: float) -> None:
        if t < dev.stuck_until:
            return
        dev.stuck_until = t + self.rng.choice(self.plan.get("stuck", "lengths_s"))
        dev.stuck_reading = None
        self.applied["stuck"] += 1

    def reconnect(self, dev: Device, t: float, reading: dict[str, Any], em: Emitter) -> None:
        """The device is back: its live reading first, then (late burst) what it buffered."""
        dev.connected = True
        dev.offline_until = math.inf
        dev.episodes[-1].end = t
        dev.note_report(t, reading)
        em.emit(dev, reading, CLEAN, dev.stamp(t))
        if dev.buffer:
            self.applied["late_burst"] += 1
            self.applied["late_burst_samples"] += len(dev.buffer)
            for ts, signals in dev.buffer:
                em.emit(dev, signals, CLEAN, ts)
        dev.buffer = None

    def buffer(self, dev: Device, t: float) -> None:
        """A cut-off device keeps what it would have sent (if it will burst on reconnect)."""
        if dev.due(t):
            reading = dev.read(t)
            dev.note_report(t, reading)
            if dev.buffer is not None:
                dev.buffer.append((dev.stamp(t), reading))

    def device_events(self, dev: Device, t: float, reading: dict[str, Any], names: list[str],
                      em: Emitter) -> None:
        """A connected device's report this step, with its events applied."""
        reported = False
        if "dropout" in names and dev.due(t) and dev.may_lose(t):
            dev.note_report(t, reading)
            self.applied["dropout"] += 1
            dev.lost_report_at = t
            reported = True
        if "anomalous" in names and not reported and dev.may_lose(t):
            em.emit(dev, self._bad_value(dev, reading), BAD_VALUE, dev.stamp(t))
            dev.note_report(t, reading)
            self.applied["anomalous"] += 1
            dev.lost_report_at = t
            reported = True
        if not reported and dev.due(t):
            dev.note_report(t, reading)
            em.emit(dev, reading, CLEAN, dev.stamp(t))
        for name in names:
            self._extra(name, dev, t, reading, em)

    def _extra(self, name: str, dev: Device, t: float, reading: dict[str, Any], em: Emitter
               ) -> None:
        rng = self.rng
        if name == "duplicate" and dev.expect.last_accepted is not None:
            em.resend(dev, dev.expect.last_accepted)      # an ack was lost: sent again
        elif name == "future":
            lo, hi = self.plan.get("future", "ahead_s")
            em.emit(dev, reading, CLEAN, round(t + rng.uniform(lo, hi), 3))
        elif name == "stale_replay":
            lo, hi = self.plan.get("stale_replay", "age_days")
            first = t - rng.uniform(lo, hi) * 86400.0
            count = self.plan.get("stale_replay", "samples")
            for i in range(count):
                em.emit(dev, reading, CLEAN, round(first + i * dev.period_s, 3))
            self.applied["stale_replay_samples"] += count
        elif name == "malformed":
            self._malformed(dev, t, reading, em)
        else:
            return                   # crashes act on the runtime after ingest; see crash()
        self.applied[name] += 1

    def _bad_value(self, dev: Device, reading: dict[str, Any]) -> dict[str, Any]:
        bad = dict(reading)
        mode = self.rng.choice(self.plan.get("anomalous", "modes"))
        if mode == "nan":
            bad["power_kw"] = math.nan
        elif dev.kind == "charger":      # a charger feeding the grid at half its rating
            bad["power_kw"] = round(0.5 * dev.rated_kw, 1)
        else:                            # a spike of two to three times the rating
            bad["power_kw"] = round(dev.rated_kw * self.rng.uniform(2.0, 3.0), 1)
        return bad

    def _malformed(self, dev: Device, t: float, reading: dict[str, Any], em: Emitter) -> None:
        variant = self.rng.choice(MALFORMED_VARIANTS)
        self.malformed_by_variant[variant] += 1
        ts = dev.stamp(t)
        bad: Any
        if variant == "unknown_asset":
            self._ghosts += 1
            em.emit_malformed(Sample(f"ghost-{self._ghosts:06d}", ts, reading), MALFORMED_WIRE,
                              None)
            return
        if variant == "bad_seq":
            bad = Sample(dev.id, ts, reading, cast(Any, str(dev.seq)))
        elif variant == "signals_not_a_map":
            bad = Sample(dev.id, ts, cast(Any, sorted(reading)))
        elif variant == "bad_ts":
            bad = Sample(dev.id, cast(Any, "2026-01-01T00:00:00Z"), reading)
        elif variant == "unknown_signal":
            bad = Sample(dev.id, ts, {**reading, "temperature_c": 21.5})
        else:
            bad = Sample(dev.id, ts, {**reading, "power_kw": str(reading["power_kw"])})
        wire = variant in ("bad_seq", "signals_not_a_map")
        em.emit_malformed(bad, MALFORMED_WIRE if wire else MALFORMED_ACTOR, dev)

    # -- actor crashes (after the step's samples are in) ---------------------------------------

    def may_crash(self, dev: Device, t: float, loop: bool) -> bool:
        """A crash must not share a restart window with another one (its restart would then
        wait, and samples meanwhile be deferred); a crash loop needs a device the runtime sees
        online, so that the quarantine and the release are the only changes it causes. Its
        samples are deferred until the quarantine two steps later, so the device's offline
        timeout must not end before then (a lost report may have left it little margin)."""
        exp = dev.expect
        if exp.status != RUNNING or t - dev.last_crash < self.within_s:
            return False
        if not loop:
            return True
        return (dev.connected and exp.accepted_at is not None
                and exp.accepted_at + dev.timeout_s > t + 2 * self.step_s)


def outcome_counts(counts: Sequence[int]) -> dict[str, int]:
    return {name: counts[i] for i, name in enumerate(OUTCOMES)}
