"""The scenario runner: simulated devices against a real embedded ``Fleet``, step by step.

Time is virtual: the fleet runs on a :class:`twin.VirtualClock` that only the runner moves
(``fleet.advance``), one step at a time. Paced mode (``speed``) runs the very same steps and
only waits, before each advance, until the wall clock has caught up with ``virtual / speed``,
so a paced run gives the same report as a virtual one. Each step: due releases, this step's
fault events, every device's physics and report, ingest in wire-format batches, actor crashes.

Control closes the loop: the fleet sends its commands through :class:`sim.transport.SimTransport`
to the simulated batteries, and the runner starts the scheduled dispatches
(:mod:`sim.schedule`). While a dispatch runs (or acknowledgements are on their way) a step's
advance is cut into control ticks of at most a second, so the fleet's closed loop runs at its
own pace between the devices' reports; otherwise a step is one advance.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sim.config import START, SimConfig, SimConfigError
from sim.control import ControlRecorder, DispatchTrace
from sim.devices import Device, Physics
from sim.faults import FaultPlan
from sim.fleetgen import generate_fleet
from sim.inject import Emitter, Injector
from sim.physics import (
    DEAD_TIME_S,
    TIME_CONSTANT_S,
    BatteryPhysics,
    ChargerPhysics,
    TurbinePhysics,
    WindField,
    site_wind_mean,
)
from sim.schedule import ScheduledDispatch, check_schedule, default_schedule
from sim.transport import ControlFaults, SimTransport
from sim.truth import CLEAN, RESTARTING, RUNNING, STOPPED, Thresholds
from twin import OUTCOMES, Fleet, FleetModel, SupervisionPolicy, VirtualClock
from twin.fleet.control import ControlOptions
from twin.wire import pack_batch

# The runner predicts a crash loop step by step, so it runs the fleet with this policy: the
# restart backoffs (<= 1 s) end within a step and the four failures fall in one window.
SUPERVISION = SupervisionPolicy(max_restarts=3, within_s=60.0, backoff_base_s=0.5,
                                backoff_max_s=1.0)
LOOP_FAULTS = SUPERVISION.max_restarts + 1
CONTROL_TICK_S = 1.0             # the fleet's control tick (its default)


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a run is: ``step`` of ``steps`` done, at ``virtual_s`` into the scenario."""

    step: int
    steps: int
    virtual_s: float
    samples: int
    wall_s: float


@dataclass(slots=True)
class SimResult:
    """Everything the report is made of (see :func:`sim.report.build_report`)."""

    config: SimConfig
    plan: FaultPlan
    model: FleetModel
    devices: list[Device]
    end: float = START
    injected: list[int] = field(default_factory=lambda: [0] * len(OUTCOMES))
    counted: list[int] = field(default_factory=lambda: [0] * len(OUTCOMES))
    applied: dict[str, int] = field(default_factory=dict)
    malformed_by_variant: dict[str, int] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)
    final_state: dict[str, str] = field(default_factory=dict)
    offline_at: dict[str, list[float]] = field(default_factory=dict)
    rollups: dict[str, Any] = field(default_factory=dict)
    schedule: tuple[ScheduledDispatch, ...] = ()
    control: ControlRecorder | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    samples_sent: int = 0
    batches: int = 0
    wall_s: float = 0.0
    ingest_wall_s: float = 0.0
    build_wall_s: float = 0.0


def build_model(config: SimConfig) -> FleetModel:
    """The fleet to simulate: loaded from ``fleet_path``, or generated from the options."""
    if config.fleet_path is not None:
        return FleetModel.load(config.fleet_path)
    return FleetModel.from_dict(generate_fleet(
        config.assets, owners=config.owners, regions=config.regions, sites=config.sites,
        mix=config.mix, seed=config.seed, report_every=config.report_every))


def run_simulation(config: SimConfig, plan: FaultPlan, *, model: FleetModel | None = None,
                   progress: Callable[[Progress], None] | None = None,
                   on_fleet: Callable[[Fleet], None] | None = None,
                   before_close: Callable[[Fleet], None] | None = None,
                   sleep: Callable[[float], None] = time.sleep,
                   monotonic: Callable[[], float] = time.monotonic) -> SimResult:
    """Run one scenario and return what happened. ``on_fleet`` gets the running fleet before
    the first step (e.g. to serve a live view of it); ``progress`` is called after each
    step, and ``before_close`` once the run is over, before the fleet closes (a live view
    attached to it stops there). ``sleep`` and ``monotonic`` pace a run with
    ``config.speed``."""
    return Simulation(config, plan, model or build_model(config)).run(
        progress=progress, on_fleet=on_fleet, before_close=before_close, sleep=sleep,
        monotonic=monotonic)


class Simulation:
    def __init__(self, config: SimConfig, plan: FaultPlan, model: FleetModel) -> None:
        self.config = config
        self.dt = config.step_s
        self.model = model
        rng = random.Random
        self._physics_rng = rng(f"{config.seed}:physics")
        self._response_rng = rng(f"{config.seed}:response")
        self.fields: dict[str, WindField] = {}
        self.devices = [self._device(i, asset_id) for i, asset_id in enumerate(sorted(
            model.assets))]
        self.by_id = {dev.id: dev for dev in self.devices}
        self.batteries = [d for d in self.devices if d.kind == "battery"]
        self.injector = Injector(plan, rng(f"{config.seed}:faults"), self.dt,
                                 SUPERVISION.within_s)
        self.injector.setup(self.devices, model.defaults.allowed_skew_s)
        self.result = SimResult(config, plan, model, self.devices)
        self.emitter = Emitter(self.result.injected)
        self._schedule: dict[int, list[Callable[[Fleet], None]]] = {}
        self._seen_transitions = 0
        # control: the dispatch schedule, the control faults, the transport to the batteries
        schedule = (default_schedule(model, config.duration_s) if config.dispatches is None
                    else tuple(config.dispatches))
        members = check_schedule(schedule, model, config.duration_s)
        self.result.schedule = schedule
        self.traces = [DispatchTrace(entry, ids) for entry, ids in zip(schedule, members,
                                                                       strict=True)]
        # while control is busy a step's advance is cut at every whole second (the fleet's
        # control tick); a step shorter than two seconds stays one advance (one tick)
        whole = math.floor(self.dt + 1e-9)
        self.cuts = ([float(i) for i in range(1, whole)] if whole >= 2 else [])
        self.tick_s = CONTROL_TICK_S
        self._sliced = False             # this step's advance is cut into ticks
        battery = model.kinds.get("battery")
        # the battery kind's dead time and settle time, plus a step: the simulated batteries
        # report once a step, so the runtime sees them follow up to a step late
        self.follow_timeout_s = (config.follow_timeout_s if config.follow_timeout_s is not None
                                 else battery.dead_time_s + battery.settle_s + self.dt)
        follow = battery.follows["setpoint_kw"]
        self.clock = VirtualClock(start=START)
        self.control_faults = ControlFaults(plan, rng(f"{config.seed}:control"), self.batteries,
                                            START, frozenset(a for ids in members for a in ids))
        self.transport = SimTransport(self.by_id, self.control_faults,
                                      rng(f"{config.seed}:transport"), self.clock)
        self.recorder = ControlRecorder(
            self.by_id, self.control_faults, self.transport,
            {d.id: follow.tolerance(model.assets[d.id]) for d in self.batteries},
            self.follow_timeout_s, self.dt, self.tick_s, self.traces)
        self.result.control = self.recorder

    def _device(self, index: int, asset_id: str) -> Device:
        spec = self.model.assets[asset_id]
        config, rng = self.config, self._physics_rng
        physics: Physics
        if spec.kind == "turbine":
            wind = self.fields.get(spec.site)
            if wind is None:
                wind = self.fields[spec.site] = WindField(rng, site_wind_mean(rng))
            physics = TurbinePhysics(spec.rated_kw, wind, rng)
        elif spec.kind == "battery":
            response = self._response_rng
            physics = BatteryPhysics(spec.rated_kw, spec.capacity_kwh or spec.rated_kw,
                                     rng.uniform(0.2, 0.8),
                                     dead_time_s=response.uniform(*DEAD_TIME_S),
                                     time_constant_s=response.uniform(*TIME_CONSTANT_S),
                                     t=START - self.dt)
        elif spec.kind == "charger":
            physics = ChargerPhysics(spec.rated_kw, rng)
        else:
            raise SimConfigError(f"asset {asset_id!r}: kind {spec.kind!r} cannot be simulated "
                                 "(simulated kinds: turbine, battery, charger)")
        # a periodic report goes out on the first step at or after it is due
        period = math.ceil(spec.report_interval_s / self.dt - 1e-9) * self.dt
        return Device(index, asset_id, spec.kind, physics, spec.rated_kw, period,
                      spec.offline_after_s, config.deadband.get(spec.kind, 0.02))

    # -- the run ------------------------------------------------------------------------------

    def run(self, *, progress: Callable[[Progress], None] | None,
            on_fleet: Callable[[Fleet], None] | None,
            before_close: Callable[[Fleet], None] | None, sleep: Callable[[float], None],
            monotonic: Callable[[], float]) -> SimResult:
        result, config = self.result, self.config
        wall0 = monotonic()
        clock = self.clock
        control = ControlOptions(tick_s=CONTROL_TICK_S, follow_timeout_s=self.follow_timeout_s)
        with Fleet(self.model, clock=clock, seed=config.seed, supervision=SUPERVISION,
                   transport=self.transport, control=control, store=config.store,
                   transitions_kept=2 * len(self.devices) + 1000) as fleet:
            result.build_wall_s = monotonic() - wall0
            fleet.subscribe_dispatches(self.recorder.on_report)
            if on_fleet is not None:
                on_fleet(fleet)
            run0 = monotonic()
            for k in range(config.steps):
                self._step(fleet, k)
                if config.speed is not None:
                    sleep(max(0.0, run0 + (k + 1) * self.dt / config.speed - monotonic()))
                self._advance(fleet, k)
                self._collect_transitions(fleet)
                if progress is not None:
                    progress(Progress(k + 1, config.steps, (k + 1) * self.dt,
                                      result.samples_sent, monotonic() - wall0))
            result.end = clock.now()
            self._finish(fleet)
            result.wall_s = monotonic() - wall0
            if before_close is not None:
                before_close(fleet)
        result.applied = dict(self.injector.applied)
        result.malformed_by_variant = dict(self.injector.malformed_by_variant)
        return result

    def _step(self, fleet: Fleet, k: int) -> None:
        t = START + k * self.dt
        self._sliced = bool(self.cuts) and self._control_busy(t, t + self.dt)
        dt, em, injector = self.dt, self.emitter, self.injector
        defaults = self.model.defaults
        em.limits = Thresholds(t, defaults.allowed_skew_s, defaults.retention_s)
        em.out = []
        for action in self._schedule.pop(k, ()):
            action(fleet)
        events = injector.draw(t, self.devices)
        for wind in self.fields.values():
            wind.step(dt)
        for dev in self.devices:
            if dev.never_up:
                continue
            dev.physics.step(dt)
            if not dev.connected:
                if t >= dev.offline_until:
                    injector.reconnect(dev, t, dev.read(t), em)
                else:
                    injector.buffer(dev, t)
                continue
            names = events.get(dev.index)
            if names is not None:
                injector.device_events(dev, t, dev.read(t), names, em)
            elif dev.due(t):
                reading = dev.read(t)
                dev.note_report(t, reading)
                em.emit(dev, reading, CLEAN, dev.stamp(t))
        self.recorder.observe(t)
        self._ingest(fleet, em.out, t)
        self._crashes(fleet, events, t, k)

    def _ingest(self, fleet: Fleet, samples: list[Any], t: float) -> None:
        result, size = self.result, self.config.batch_size
        began = time.perf_counter()
        for i in range(0, len(samples), size):
            report = fleet.ingest(pack_batch(samples[i:i + size], source="twin-sim", sent_at=t))
            for j, n in enumerate(report.counts().values()):
                result.counted[j] += n
            if len(result.error_examples) < 6:
                result.error_examples.extend(str(e) for e in report.errors[:2])
            result.batches += 1
        result.samples_sent += len(samples)
        result.ingest_wall_s += time.perf_counter() - began

    # -- actor crashes ------------------------------------------------------------------------

    def _crashes(self, fleet: Fleet, events: dict[int, list[str]], t: float, k: int) -> None:
        injector = self.injector
        for index, names in events.items():
            dev = self.devices[index]
            for name in names:
                if name == "crash" and injector.may_crash(dev, t, loop=False):
                    fleet.inject_fault(dev.id, "sim: injected crash")
                    dev.last_crash = t
                    injector.applied["crash"] += 1
                elif name == "crash_loop" and injector.may_crash(dev, t, loop=True):
                    self._crash_loop(fleet, dev, t, k)

    def _crash_loop(self, fleet: Fleet, dev: Device, t: float, k: int) -> None:
        """Four faults at once: the first restart is immediate, the second waits (the actor
        is restarting at the next step: samples are deferred), the third fails at the next
        advance, the fourth at the one after, past the intensity: quarantined from step k+2.
        When this step's advance is cut into one-second ticks (control is busy), the two
        backoffs (<= 0.5 s, then <= 1 s) run out in its first two ticks: quarantined from
        step k+1. The operator (the simulator) releases it after ``quarantine_s``."""
        for _ in range(LOOP_FAULTS):
            fleet.inject_fault(dev.id, "sim: injected crash loop")
        dev.last_crash = t
        self.injector.applied["crash_loop"] += 1
        quarantine_s = self.injector.plan.get("crash_loop", "quarantine_s")
        release = k + max(3, math.ceil(quarantine_s / self.dt))
        if self._sliced:
            dev.expect.status = STOPPED
        else:
            dev.expect.status = RESTARTING
            self._schedule.setdefault(k + 2, []).append(lambda _: _set_status(dev, STOPPED))
        self._schedule.setdefault(release, []).append(lambda f: _release(f, dev))

    # -- time and control ------------------------------------------------------------------

    def _advance(self, fleet: Fleet, k: int) -> None:
        """Move the fleet to the end of step ``k``: in control ticks while control is busy
        (scheduled dispatches start at the first tick at or after their START), else at once.
        Delayed acknowledgements reach the runtime before the tick they are due by."""
        t0 = START + k * self.dt
        t1 = t0 + self.dt
        if not self._sliced:
            self._start_dispatches(fleet, t0)
            self.transport.release_acks(t1)
            fleet.advance(t1 - self.clock.now())
            self._poll(fleet, t1)
            return
        for until in [t0 + cut for cut in self.cuts] + [t1]:
            now = self.clock.now()
            self._start_dispatches(fleet, now)
            self.transport.release_acks(until)
            fleet.advance(until - now)
            self._poll(fleet, until)

    def _poll(self, fleet: Fleet, at: float) -> None:
        flagged: set[str] = set()
        for rollup in fleet.rollups("owner").values():
            flagged.update(rollup.not_following)
        self.recorder.poll(at, frozenset(flagged))

    def _control_busy(self, t0: float, t1: float) -> bool:
        if self.transport.acks_pending:
            return True
        for trace in self.traces:
            if trace.dispatch_id is None:
                if START + trace.entry.start_s < t1:
                    return True
            elif trace.active or START + trace.entry.end_s + self.tick_s > t0:
                return True
        return False

    def _start_dispatches(self, fleet: Fleet, now: float) -> None:
        for trace in self.traces:
            entry = trace.entry
            if trace.dispatch_id is None and START + entry.start_s <= now + 1e-9:
                dispatch = fleet.dispatch(
                    entry.path, entry.target_kw, duration_s=START + entry.end_s - now,
                    strategy=entry.strategy, ramp_kw_per_s=entry.ramp_kw_per_s)
                self.recorder.started(trace, dispatch.id, now, dispatch.report())

    # -- what the runtime says ---------------------------------------------------------------

    def _collect_transitions(self, fleet: Fleet) -> None:
        total = fleet.metrics()["transitions"]
        new = total - self._seen_transitions
        self._seen_transitions = total
        if not new:
            return
        final, offline_at = self.result.final_state, self.result.offline_at
        for tr in fleet.transitions(new):
            final[tr.asset_id] = tr.new
            if tr.old == "online" and tr.new == "offline":
                offline_at.setdefault(tr.asset_id, []).append(tr.at)

    def _finish(self, fleet: Fleet) -> None:
        result = self.result
        result.rollups = fleet.rollups("owner")
        result.metrics = fleet.metrics()
        self.recorder.finish(result.metrics.get("commands_by_state", {}), fleet.commands())
        if fleet.store is not None:
            fleet.flush()


def _set_status(dev: Device, status: int) -> None:
    dev.expect.status = status


def _release(fleet: Fleet, dev: Device) -> None:
    fleet.release(dev.id)
    dev.expect.status = RUNNING
    dev.expect.accepted_at = None      # "unknown" again until it accepts a sample


__all__ = ["SUPERVISION", "Progress", "SimResult", "Simulation", "build_model",
           "run_simulation"]
