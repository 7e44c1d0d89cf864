"""Control during a run: what the runtime said (not-following detections, dispatch reports,
command states) next to what the simulator knows (which devices ignored their setpoints and
when, what the batteries truly delivered, what happened to each delivery).

:class:`ControlRecorder` takes the fleet's dispatch reports (a subscription), reads the
roll-ups' ``not_following`` after every advance (a detection is an asset entering it), and
samples the truth at every step; :func:`control_section` turns both into the report's
``control``. Commands are counted from the fleet's own tallies at the end, so the runtime
makes no event per command of a dispatch (thousands a second) for the simulator's sake.

The truth of "not following": a device in the ``command_ignore`` set *diverges* at a step when
it is inside its ignore window, connected, its actor runs, and the runtime's latest setpoint
for it differs from its true power by more than the kind's tolerance. A run of divergent
steps at least ``follow_timeout_s`` plus two control ticks long must be detected (the runtime
needs that long: its clock starts at the first tick that sees the gap, and it checks every
tick); so must a shorter run the runtime cut short by detecting it (a dispatch stops asking a
device it finds not following). A detection is true when it falls inside the device's ignore
window or within ``follow_timeout_s + step_s`` after it (the time the device needs to be seen
following again). Other detections are false, each with the likely cause.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sim.devices import Device
from sim.schedule import ScheduledDispatch
from sim.transport import ControlFaults, SimTransport
from sim.truth import RUNNING
from twin.control.dispatch import DispatchReport
from twin.control.states import FINAL, OPEN, CommandState
from twin.control.table import CommandRecord

FINAL_STATES = tuple(s.label for s in CommandState if s in FINAL)
OPEN_STATES = frozenset(s.label for s in OPEN)
WITHIN = 0.05                       # "within 5 % of target"


@dataclass(slots=True)
class DispatchTrace:
    """One scheduled dispatch as it ran: the runtime's reports and the true power."""

    entry: ScheduledDispatch
    members: list[str]
    dispatch_id: str | None = None
    started_at: float | None = None
    # (at, status, target, ramped, feasible, allocated, achieved) per report
    reports: list[tuple[float, str, float, float, float, float, float]] = field(
        default_factory=list)
    truth: list[tuple[float, float, float]] = field(default_factory=list)  # (t, ramped, true)
    last: DispatchReport | None = None

    @property
    def active(self) -> bool:
        return self.last is not None and self.last.status == "active"


class ControlRecorder:
    """See the module docstring. Callbacks run on the fleet's thread, inside its calls."""

    def __init__(self, devices: Mapping[str, Device], faults: ControlFaults,
                 transport: SimTransport, tolerance: Mapping[str, float],
                 follow_timeout_s: float, step_s: float, tick_s: float,
                 traces: list[DispatchTrace]) -> None:
        self.devices = devices
        self.faults = faults
        self.transport = transport
        self.tolerance = tolerance
        self.follow_timeout_s = follow_timeout_s
        self.step_s = step_s
        self.tick_s = tick_s
        self.traces = traces
        self._by_id: dict[str, DispatchTrace] = {}
        self.flagged: frozenset[str] = frozenset()      # not following, as the runtime says
        self.detections: list[tuple[str, float, str]] = []   # (asset, at, cause)
        self.tallies: dict[str, int] = {}                # the fleet's, at the end
        self.open_at_end: dict[str, int] = {}
        self.runs: dict[str, list[list[float]]] = {a: [] for a in sorted(faults.ignoring)}
        self._run_open: dict[str, bool] = dict.fromkeys(self.runs, False)

    # -- the runtime's streams ----------------------------------------------------------------

    def poll(self, at: float, not_following: frozenset[str]) -> None:
        """The assets the roll-ups list as not following after the tick at ``at``: each one
        that was not listed before is a detection. (Flags change only in control ticks, and
        a device found not following stays flagged at least until its next report.)"""
        for asset_id in sorted(not_following - self.flagged):
            self.detections.append((asset_id, at, self.cause(asset_id, at)))
        self.flagged = not_following

    def finish(self, tallies: Mapping[str, int], commands: Sequence[CommandRecord]) -> None:
        """The fleet's command tallies (transitions into each state) and its commands at the
        end (those still open are counted by their state)."""
        self.tallies = dict(tallies)
        for record in commands:
            if record.state in OPEN_STATES:
                self.open_at_end[record.state] = self.open_at_end.get(record.state, 0) + 1

    def started(self, trace: DispatchTrace, dispatch_id: str, at: float,
                first: DispatchReport | None) -> None:
        """The runner started ``trace``'s dispatch; ``first`` is the report of its first
        step (made before this recorder knew the dispatch's id)."""
        trace.dispatch_id = dispatch_id
        trace.started_at = at
        self._by_id[dispatch_id] = trace
        if first is not None:
            self.on_report(first)

    def on_report(self, report: DispatchReport) -> None:
        trace = self._by_id.get(report.dispatch_id)
        if trace is None:
            return                  # a dispatch someone else started (the live view's API)
        trace.last = report
        trace.reports.append((report.at, report.status, report.target_kw, report.ramped_kw,
                              report.feasible_kw, report.allocated_kw, report.achieved_kw))

    def cause(self, asset_id: str, at: float) -> str:
        """Why the runtime found this device not following at ``at``, as far as the simulator
        knows: ``ignoring`` (the injected fault: a true detection) or a false one's cause."""
        faults, grace = self.faults, self.follow_timeout_s + self.step_s
        lo, hi = faults.window
        if asset_id in faults.ignoring and lo <= at <= hi + grace:
            return "ignoring"
        dev = self.devices.get(asset_id)
        if dev is None:
            return "unexplained"
        if dev.stuck_until >= at - grace:
            return "stuck_sensor"          # its reports froze while its power moved
        if dev.lost_report_at >= at - grace:
            return "report_lost"           # the report that showed it following was lost
        if not dev.connected or any(e.end is None or e.end >= at - grace for e in dev.episodes):
            return "cut_off"
        physics = dev.physics
        if getattr(physics, "limited", False):
            return "soc_limit"             # empty or full: it cannot deliver what it was asked
        return "unexplained"

    # -- the truth, every step ------------------------------------------------------------------

    def observe(self, t: float) -> None:
        """After the step's physics: divergence of the ignoring devices, and each active
        dispatch's true power next to its (ramped) target."""
        commanded = self.transport.commanded
        for asset_id, runs in self.runs.items():
            dev = self.devices[asset_id]
            value = commanded.get(asset_id)
            diverges = (value is not None and self.faults.ignores(asset_id, t)
                        and dev.connected and not dev.never_up
                        and dev.expect.status == RUNNING
                        and abs(value - dev.physics.power_kw) > self.tolerance[asset_id])
            if diverges and self._run_open[asset_id]:
                runs[-1][1] = t
            elif diverges:
                runs.append([t, t])
            self._run_open[asset_id] = diverges
        for trace in self.traces:
            if trace.active and trace.last is not None:
                true_kw = sum(self.devices[a].power_kw for a in trace.members)
                trace.truth.append((t, trace.last.ramped_kw, true_kw))


# -- the report ---------------------------------------------------------------------------------

def control_section(recorder: ControlRecorder, metrics: Mapping[str, Any], start: float
                    ) -> dict[str, Any]:
    transport = recorder.transport
    return {
        "follow_timeout_s": recorder.follow_timeout_s, "tick_s": recorder.tick_s,
        "dispatches": {trace.dispatch_id or f"not started ({trace.entry.source})":
                       dispatch_figures(trace, start) for trace in recorder.traces},
        "not_following": not_following_detection(
            recorder.runs, recorder.detections,
            recorder.follow_timeout_s + 2 * recorder.tick_s, recorder.step_s),
        "faults": recorder.faults.to_dict(start),
        "commands": _commands(recorder, transport, metrics),
    }


def dispatch_figures(trace: DispatchTrace, start: float) -> dict[str, Any]:
    """RMS error of achieved vs target while active (the runtime's view, and the batteries'
    true power), and how long until achieved came within 5 % of the target."""
    entry = trace.entry
    active = [r for r in trace.reports if r[1] == "active"]
    errors = [r[6] - r[3] for r in active]
    target = entry.target_kw
    reached = next((r[0] for r in active if abs(r[6] - target) <= WITHIN * abs(target)), None)
    settled = [r[6] - r[3] for r in active if reached is not None and r[0] >= reached]
    true_errors = [true - ramped for _, ramped, true in trace.truth]
    last = trace.last
    return {
        "path": entry.path, "target_kw": target, "start_s": entry.start_s,
        "end_s": entry.end_s, "source": entry.source, "members": len(trace.members),
        "status": None if last is None else last.status,
        "reports": len(active),
        "rms_error_kw": _rms(errors),
        "rms_error_pct": None if not errors or target == 0 else
        100.0 * (_rms(errors) or 0.0) / abs(target),
        "rms_error_settled_kw": _rms(settled),
        "true_rms_error_kw": _rms(true_errors),
        "time_to_5pct_s": None if reached is None or trace.started_at is None
        else reached - trace.started_at,
        "mean_achieved_kw": sum(r[6] for r in active) / len(active) if active else None,
        "feasible_kw": active[-1][4] if active else None,
        "allocated_kw": active[-1][5] if active else None,
    }


def _rms(values: Sequence[float]) -> float | None:
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else None


def not_following_detection(runs: Mapping[str, Sequence[Sequence[float]]],
                            detections: Sequence[tuple[str, float, str]], long_s: float,
                            step_s: float) -> dict[str, Any]:
    """The runtime's ``not_followed`` detections against the injected ignoring devices, like
    offline detection: precision over detections (a true one has cause ``ignoring``), recall
    over the devices whose divergence (runs of divergent steps, ``runs``) lasted ``long_s``
    (the follow timeout plus two ticks) at least once. Delays are from the start of the
    first such run to the first detection."""
    true_hits = [d for d in detections if d[2] == "ignoring"]
    false_by_cause: dict[str, int] = {}
    for _, _, cause in detections:
        if cause != "ignoring":
            false_by_cause[cause] = false_by_cause.get(cause, 0) + 1
    hits: dict[str, list[float]] = {}
    for asset_id, at, _ in true_hits:
        hits.setdefault(asset_id, []).append(at)
    longer = shorter = found_longer = found_shorter = 0
    delays: list[float] = []
    for asset_id, device_runs in runs.items():
        found = hits.get(asset_id, [])
        # a run counts when it lasted long_s, or when a detection ended it sooner (the
        # runtime stops asking a device it finds not following: its divergence ends there)
        long_runs = [r for r in device_runs if r[1] - r[0] >= long_s or any(
            r[0] - step_s <= at <= r[1] + step_s for at in found)]
        if long_runs:
            longer += 1
            found_longer += bool(found)
            later = [at for at in found if at >= long_runs[0][0] - step_s]
            if later:
                delays.append(max(0.0, later[0] - long_runs[0][0]))
        elif device_runs:
            shorter += 1
            found_shorter += bool(found)
    n = len(detections)
    return {
        "ignoring_devices": len(runs), "longer_than_timeout": longer,
        "detected_longer": found_longer, "shorter": shorter, "detected_shorter": found_shorter,
        "never_diverged": len(runs) - longer - shorter,
        "detections": n, "true_detections": len(true_hits),
        "false_detections": n - len(true_hits), "false_by_cause": false_by_cause,
        "precision": None if n == 0 else len(true_hits) / n,
        "recall": None if longer == 0 else found_longer / longer,
        "delay_s": {"max": max(delays) if delays else None,
                    "mean": sum(delays) / len(delays) if delays else None},
        "long_s": long_s,
    }


def _commands(recorder: ControlRecorder, transport: SimTransport, metrics: Mapping[str, Any]
              ) -> dict[str, Any]:
    """Commands by final state (those still open at the end by their state), and what the
    simulator injected next to what the runtime counted. A command the device never
    acknowledged ends unacknowledged, or superseded by the next tick's setpoint (a dispatch
    renews its leases every tick, sooner than the resend timer); one whose device was seen
    to follow counts as delivered even without an acknowledgement."""
    tallies = recorder.tallies
    by_state = {s: tallies.get(s, 0) for s in FINAL_STATES}
    by_state.update(recorder.open_at_end)
    injected = dict(transport.counts)
    sent = tallies.get("sent", 0)
    rejected = tallies.get("rejected", 0)
    return {
        "by_final_state": {s: n for s, n in sorted(by_state.items()) if n},
        "issued": sent,
        "transport": injected,
        "rejected": {"injected": injected["rejected"], "counted": rejected},
        "not_acknowledged": {
            "injected_lost": injected["lost_in_transit"],
            "injected_unreachable": injected["unreachable"],
            "injected_acks_delayed": injected["acks_delayed"],
            "counted_never_delivered": sent - tallies.get("delivered", 0) - rejected,
            "counted_unacknowledged": tallies.get("unacknowledged", 0),
            "runtime_acks_stale": metrics.get("command_acks_stale", 0)},
        "all_match": injected["rejected"] == rejected,
    }


__all__ = ["ControlRecorder", "DispatchTrace", "control_section", "dispatch_figures",
           "not_following_detection"]
