"""Fleet dispatch in the facade: start, steer and end dispatches, one closed-loop step per
control tick (see :mod:`twin.control.dispatch` for the step itself).

Each tick, for each active dispatch: read what its members report, judge whether they follow
their last setpoints, allocate the (ramped) target over those that may take part, and issue
the setpoints as one batch of leases that end after ``lease_s`` unless the next tick renews
them. A dead controller therefore leaves the fleet at the kinds' defaults within ``lease_s``,
never stuck at an old setpoint. A dispatch that ends or is cancelled sends the defaults at
once. After a restart from the store, an active dispatch resumes at the next tick with new
leases (docs/control.md).

Past the usual size by the ``Dispatch`` handle and the restore path; both are thin views on
the same active-dispatch book, kept beside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Final

import numpy as np
import structlog

from twin.control.dispatch import (
    STRATEGIES,
    DispatchPlan,
    DispatchReport,
    DispatchSpec,
    MemberInputs,
    Strategy,
)
from twin.control.states import CommandState
from twin.control.table import FOLLOW_NOT
from twin.core.errors import DispatchConflict, UnknownCommand
from twin.fleet.control import Control, Watch
from twin.fleet.core import FleetCore
from twin.store.store import StoreUnavailable

log = structlog.get_logger("twin.control")

ACKED: Final = np.array([int(CommandState.DELIVERED), int(CommandState.APPLIED),
                         int(CommandState.NOT_FOLLOWED)], np.int8)
ReportCallback = Callable[[DispatchReport], None]


class ActiveDispatch:
    """A dispatch plan with what the facade needs to run it: slots, signals, origin code."""

    __slots__ = ("field", "origin", "plan", "signals", "slots", "watch")

    def __init__(self, plan: DispatchPlan, slots: np.ndarray, field: str,
                 signals: list[str], origin: int, watch: Watch) -> None:
        self.plan = plan
        self.slots = slots
        self.field = field
        self.signals = signals
        self.origin = origin
        self.watch = watch


class Dispatch:
    """A fleet dispatch (``fleet.dispatch(...)`` returns one): read its latest report, change
    its target, or cancel it. Every call takes the fleet lock."""

    def __init__(self, dispatch_id: str, dispatching: Dispatching,
                 run: Callable[[Callable[[], Any]], Any]) -> None:
        self.id = dispatch_id
        self._dispatching = dispatching
        self._run = run

    @property
    def spec(self) -> DispatchSpec:
        plan: DispatchPlan = self._run(lambda: self._dispatching.plan_of(self.id))
        return plan.spec

    @property
    def status(self) -> str:
        """active, ended or cancelled."""
        return str(self._run(lambda: self._dispatching.plan_of(self.id).status))

    def report(self) -> DispatchReport | None:
        """The report of the latest tick (``None`` before the first)."""
        report: DispatchReport | None = self._run(lambda: self._dispatching.plan_of(self.id).last)
        return report

    def update(self, target_kw: float) -> DispatchReport | None:
        """A new target from now on (the ramp limit applies); runs a tick at once."""
        self._run(lambda: self._dispatching.update(self.id, target_kw))
        return self.report()

    def cancel(self) -> None:
        """End it now: every member gets its kind's default at once."""
        self._run(lambda: self._dispatching.cancel(self.id))

    def __repr__(self) -> str:
        return f"<Dispatch {self.id}>"


class Dispatching:
    """See the module docstring; every method runs under the fleet lock."""

    def __init__(self, core: FleetCore, control: Control) -> None:
        self.core = core
        self.control = control
        self.active: dict[str, ActiveDispatch] = {}
        self.done: dict[str, DispatchPlan] = {}
        self.subscribers: list[ReportCallback] = []
        self.unsent: list[DispatchReport] = []
        self._count = 0
        self._slots: np.ndarray | None = None
        control.on_tick = self.tick
        control.dispatched_slots = self.slots

    # -- starting and steering --------------------------------------------------------------

    def start(self, path: str, target_kw: float, *, kinds: Sequence[str], duration_s: float,
              ramp_kw_per_s: float | None, strategy: str, lease_s: float,
              flip_threshold_kw: float | None, stale_after_s: float | None = None) -> str:
        core = self.core
        core.tree.lookup(path)                      # UnknownPath, with a hint
        _check_number("target_kw", target_kw)
        _check_positive("duration_s", duration_s)
        _check_positive("lease_s", lease_s)
        if ramp_kw_per_s is not None:
            _check_positive("ramp_kw_per_s", ramp_kw_per_s)
        if flip_threshold_kw is not None and not (_finite(flip_threshold_kw) and
                                                  flip_threshold_kw >= 0):
            raise ValueError(f"flip_threshold_kw must be >= 0, got {flip_threshold_kw!r}")
        if stale_after_s is not None:
            _check_positive("stale_after_s", stale_after_s)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got "
                             f"{strategy!r}")
        kinds = tuple(kinds)
        self._setpoint_field(kinds)                 # refuses kinds without a power setpoint
        self.control.sync()
        members = self._members(path, kinds)
        busy = [(a, d) for d, active in self.active.items()
                for a in active.plan.asset_ids if a in set(members)]
        if busy:
            shown = ", ".join(f"{a} (in {d})" for a, d in busy[:5])
            raise DispatchConflict(f"{len(busy)} of the assets under {path!r} are already in an "
                             f"active dispatch: {shown}; cancel it or dispatch a disjoint path")
        now = core.clock.now()
        self._count += 1
        dispatch_id = f"d-{self._count}"
        while dispatch_id in self.done or dispatch_id in self.active:
            self._count += 1
            dispatch_id = f"d-{self._count}"
        spec = DispatchSpec(dispatch_id, path, float(target_kw), kinds, now, now + duration_s,
                            strategy=_strategy(strategy), ramp_kw_per_s=ramp_kw_per_s,
                            lease_s=lease_s, flip_threshold_kw=flip_threshold_kw,
                            stale_after_s=stale_after_s)
        self._activate(spec, members)
        self._record(spec, "active", None, now)
        self.step(self.active[dispatch_id], now)
        return dispatch_id

    def _activate(self, spec: DispatchSpec, members: list[str]) -> None:
        model = self.core.model
        table = self.control.table
        slots = np.array([table.slots[a] for a in members], np.int64)
        rated = np.array([model.assets[a].rated_kw for a in members], float)
        intervals = np.array([model.assets[a].report_interval_s for a in members], float)
        origin = 1 + max(self.control.origins, default=0)
        self.control.origins[origin] = spec.dispatch_id
        signals = [table.signal_of(int(s)) or "power_kw" for s in slots.tolist()]
        field = self._setpoint_field(spec.kinds)
        self.active[spec.dispatch_id] = ActiveDispatch(
            DispatchPlan(spec, members, rated, intervals), slots, field, signals, origin,
            self.control.watch(f"dispatch:{spec.dispatch_id}", members, signals))
        self._slots = None

    def _setpoint_field(self, kinds: tuple[str, ...]) -> str:
        """The one command field the kinds share that sets their power (a dispatch steers
        power setpoints, not limits)."""
        if not kinds:
            raise ValueError("kinds must name at least one asset kind")
        fields = set()
        registry = self.core.model.kinds
        for name in kinds:
            kind = registry.get(name)
            setpoints = [f for f, follow in kind.follows.items()
                         if follow.mode == "equal" and follow.signal == kind.power_signal]
            if not setpoints:
                raise ValueError(f"kind {name!r} cannot be dispatched: none of its commands "
                                 f"({', '.join(sorted(kind.commands)) or 'none'}) sets its "
                                 f"power (a follows entry with mode 'equal' on "
                                 f"{kind.power_signal!r})")
            fields.add(setpoints[0])
        if len(fields) > 1:
            raise ValueError(f"kinds {', '.join(kinds)} take different setpoint fields "
                             f"({', '.join(sorted(fields))}); dispatch them separately")
        return fields.pop()

    def _members(self, path: str, kinds: tuple[str, ...]) -> list[str]:
        model = self.core.model
        if path in model.groups:
            covered, direct = model.group_coverage(path)
            sites = [s for s in model.sites.values()
                     if any(s.path == p or s.path.startswith(p + "/") for p in covered)]
            ids = {a for s in sites for a in s.assets} | set(direct)
        else:
            ids = {a for s in model.sites.values()
                   if s.path == path or s.path.startswith(path + "/") for a in s.assets}
        return sorted(a for a in ids if model.assets[a].kind in kinds)

    def update(self, dispatch_id: str, target_kw: float) -> None:
        _check_number("target_kw", target_kw)
        active = self._active(dispatch_id)
        active.plan.update(float(target_kw))
        now = self.core.clock.now()
        self._record(active.plan.spec, "active", None, now)
        self.step(active, now)

    def cancel(self, dispatch_id: str) -> None:
        self.finish(self._active(dispatch_id), self.core.clock.now(), "cancelled",
                    "cancelled by a caller")

    def _active(self, dispatch_id: str) -> ActiveDispatch:
        active = self.active.get(dispatch_id)
        if active is None:
            if dispatch_id in self.done:
                ended = self.done[dispatch_id]
                raise DispatchConflict(f"dispatch {dispatch_id!r} is {ended.status} "
                                       f"({ended.reason}); start a new one")
            raise UnknownCommand("dispatch", dispatch_id)
        return active

    def plan_of(self, dispatch_id: str) -> DispatchPlan:
        active = self.active.get(dispatch_id)
        if active is not None:
            return active.plan
        done = self.done.get(dispatch_id)
        if done is None:
            raise UnknownCommand("dispatch", dispatch_id)
        return done

    def plans(self) -> list[DispatchPlan]:
        return [a.plan for a in self.active.values()] + list(self.done.values())

    def figures(self) -> dict[str, dict[str, float]]:
        """Active dispatches' latest target, allocation and achievement (for metrics)."""
        out = {}
        for dispatch_id, active in self.active.items():
            last = active.plan.last
            if last is not None:
                out[dispatch_id] = {"target_kw": last.ramped_kw,
                                    "allocated_kw": last.allocated_kw,
                                    "achieved_kw": last.achieved_kw}
        return out

    def slots(self) -> np.ndarray:
        """Every active dispatch's members' slots, sorted (kept until the set changes)."""
        if self._slots is None:
            self._slots = (np.unique(np.concatenate([a.slots for a in self.active.values()]))
                           if self.active else np.zeros(0, np.int64))
        return self._slots

    # -- the loop ---------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        for active in list(self.active.values()):
            if now >= active.plan.spec.end:
                self.finish(active, now, "ended", "its duration is over")
            else:
                self.step(active, now)

    def step(self, active: ActiveDispatch, now: float) -> DispatchReport:
        """One closed-loop step (see the module docstring)."""
        control = self.control
        table = control.table
        slots = active.slots
        plan = active.plan
        with control.lock:
            if active.watch.synced != control.synced:      # the model changed: re-split
                control.forget(active.watch)
                active.watch = control.watch(active.watch.key, plan.asset_ids, active.signals)
            inputs = control.read(active.watch)
            control.judge(slots, now, inputs)
            # a member that refused this dispatch's setpoint sits out a cool-down (once per
            # refused command: afterwards it is asked again)
            refused = slots[(table.state[slots] == CommandState.REJECTED) &
                            (table.origin[slots] == active.origin) &
                            (control.reject_until[slots] < table.issued_at[slots])]
            control.reject_until[refused] = now + control.options.cooldown_s
            planned = plan.plan(now, control.options.tick_s, MemberInputs(
                inputs.states, inputs.last_seen, inputs.values, inputs.soc_pct,
                (table.follow[slots] == FOLLOW_NOT) | (control.cooldown_until[slots] > now),
                table.unacked[slots] >= control.options.retry.max_attempts,
                control.reject_until[slots] > now))
            chosen = planned.eligible
            report = planned.report
            try:
                control.reserve(int(chosen.sum()))
            except StoreUnavailable as error:
                report = replace(report, ok=False, allocated_kw=0.0, allocated=0,
                                 binding=f"store unavailable, no setpoints issued ({error})")
            else:
                values = planned.setpoints_kw[chosen]
                # reachable: the last command got through (or this one did, at once)
                reached = np.isin(table.state[slots[chosen]], ACKED)
                everyone = bool(chosen.all())
                batch = table.issue_batch(
                    slots if everyone else slots[chosen], values, active.field, now,
                    now + plan.spec.lease_s, active.origin,
                    plan.asset_ids if everyone else None)
                control.send_batch(batch)
                reached |= np.isin(table.state[slots[chosen]], ACKED)
                report = replace(report, acknowledged_kw=float(values[reached].sum()))
        self._report(plan, report)
        return report

    def finish(self, active: ActiveDispatch, now: float, status: str, reason: str) -> None:
        """End a dispatch: its members get their defaults now, not when the leases end."""
        control = self.control
        table = control.table
        plan = active.plan
        with control.lock:
            mine = active.slots[(table.origin[active.slots] == active.origin) &
                                np.isin(table.state[active.slots], ACKED_OR_SENT)]
            if len(mine):
                try:
                    control.reserve(len(mine))
                except StoreUnavailable:
                    log.warning("dispatch_end_defaults_not_sent", dispatch_id=plan.spec.dispatch_id,
                                reason="store unavailable; the leases end on their own")
                else:
                    batch = table.issue_batch(mine, table.default[mine], active.field, now,
                                              None, active.origin)
                    control.send_batch(batch)
        plan.status = status
        plan.reason = reason
        del self.active[plan.spec.dispatch_id]
        self._slots = None
        control.forget(active.watch)
        self.done[plan.spec.dispatch_id] = plan
        last = plan.last
        final = DispatchReport(
            plan.spec.dispatch_id, plan.spec.path, now, status, plan.spec.target_kw, 0.0, 0.0,
            0.0, 0.0, 0.0 if last is None else last.achieved_kw,
            0.0 if last is None else last.achieved_kw, "none", len(plan.asset_ids), 0, 0,
            ok=True, reason=reason)
        self._record(plan.spec, status, reason, now)
        self._report(plan, final)
        log.info("dispatch_finished", dispatch_id=plan.spec.dispatch_id, status=status,
                 reason=reason)

    # -- reports ------------------------------------------------------------------------------

    def _report(self, plan: DispatchPlan, report: DispatchReport) -> None:
        plan.last = report
        self.control.pending.reports.append(
            {"dispatch_id": report.dispatch_id, "at": report.at,
             "report": json.dumps(report.to_dict())})
        if self.subscribers:
            self.unsent.append(report)

    def _record(self, spec: DispatchSpec, status: str, reason: str | None, now: float) -> None:
        self.control.pending.dispatches.append(
            {"dispatch_id": spec.dispatch_id, "spec": json.dumps(spec.to_dict()),
             "status": status, "reason": reason, "updated_at": now})

    def subscribe(self, callback: ReportCallback) -> Callable[[], None]:
        self.subscribers.append(callback)

        def cancel() -> None:
            if callback in self.subscribers:
                self.subscribers.remove(callback)
        return cancel

    def emit(self) -> None:
        """Hand reports to subscribers; called with no fleet lock held."""
        reports, self.unsent = self.unsent, []
        for report in reports:
            for callback in list(self.subscribers):
                try:
                    callback(report)
                except Exception:
                    self.core.counters["callback_errors"] += 1
                    log.exception("dispatch_callback_failed", dispatch_id=report.dispatch_id)

    # -- restart ------------------------------------------------------------------------------

    def restore(self, rows: list[tuple[dict[str, Any], str]], now: float) -> list[str]:
        """Resume the active dispatches the store recorded (those whose time is not over);
        the others are recorded as ended. Returns the ids resumed."""
        resumed = []
        self.control.sync()
        for raw, _status in rows:
            spec = DispatchSpec.from_dict(raw)
            number = spec.dispatch_id.removeprefix("d-")
            if number.isdigit():
                self._count = max(self._count, int(number))
            if now >= spec.end:
                self._record(spec, "ended", "its duration ended while the fleet was down", now)
                continue
            self._activate(spec, self._members(spec.path, spec.kinds))
            resumed.append(spec.dispatch_id)
        return resumed


ACKED_OR_SENT: Final = np.append(ACKED, np.int8(CommandState.SENT))


def _strategy(name: str) -> Strategy:
    return "soc" if name == "soc" else "headroom"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_number(name: str, value: Any) -> None:
    if not _finite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_positive(name: str, value: Any) -> None:
    if not _finite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
