"""Fleet dispatch: a power target for a node, turned every tick into per-battery setpoints.

A :class:`DispatchPlan` holds one dispatch between ticks: its members (the assets of the chosen
kinds under the node's path), the ramped target, and the direction of the last allocation
(for hysteresis). :meth:`DispatchPlan.plan` is the closed loop's one step: from what the
members report now it decides who may take part (and why not), calls the pure
:func:`~twin.control.allocation.allocate`, and writes the :class:`DispatchReport`; the facade
issues the setpoints as leases and measures what they achieved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

import numpy as np

from twin.control.allocation import AllocationInput, allocate
from twin.core.states import DECOMMISSIONED, OFFLINE, ONLINE, QUARANTINED, UNKNOWN

Strategy = Literal["headroom", "soc"]
STRATEGIES: Final = ("headroom", "soc")
EXCLUDED_IDS_SHOWN: Final = 20      # ids per exclusion reason in a report (counts are whole)


@dataclass(frozen=True, slots=True)
class DispatchSpec:
    """What was asked: ``target_kw`` for the assets of ``kinds`` under ``path`` from ``start``
    until ``end`` (unix times). Positive targets discharge (deliver to the grid)."""

    dispatch_id: str
    path: str
    target_kw: float
    kinds: tuple[str, ...]
    start: float
    end: float
    strategy: Strategy = "headroom"
    ramp_kw_per_s: float | None = None
    lease_s: float = 3.0                # each tick's setpoints end unless renewed
    flip_threshold_kw: float | None = None   # hysteresis; None: 1 % of the members' rating
    stale_after_s: float | None = None  # a member whose last report is older sits out
                                        # (None: 1.5 times the member's report interval)
    soc_min_pct: float = 5.0            # no discharge at or below
    soc_max_pct: float = 95.0           # no charge at or above

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DispatchSpec:
        values = dict(raw)
        values["kinds"] = tuple(values["kinds"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class DispatchReport:
    """One tick of a dispatch. ``ok`` is true only when the allocation covers the target:
    a report never says all is well while allocating nothing."""

    dispatch_id: str
    path: str
    at: float
    status: str                        # active, ended, cancelled
    target_kw: float                   # what was asked
    ramped_kw: float                   # the target this tick, after the ramp limit
    feasible_kw: float                 # what the eligible assets can deliver of it
    allocated_kw: float                # the sum of the setpoints issued
    acknowledged_kw: float             # of which goes to members the transport reaches (their
                                       # last command, or this one, acknowledged)
    achieved_kw: float                 # the sum of what the members report now
    error_kw: float                    # achieved - ramped
    binding: str                       # what limits the allocation
    members: int
    eligible: int
    allocated: int                     # assets with a non-zero setpoint
    excluded: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    excluded_counts: Mapping[str, int] = field(default_factory=dict)
    ok: bool = False
    reason: str | None = None          # why it ended, when it did
    uncontrolled_kw: float = 0.0       # what members left out deliver (taken off the target)

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["excluded"] = {k: list(v) for k, v in self.excluded.items()}
        out["excluded_counts"] = dict(self.excluded_counts)
        return out

    def __str__(self) -> str:
        if self.status != "active":
            return (f"dispatch {self.dispatch_id} on {self.path}: {self.status} ({self.reason}); "
                    f"members back at their defaults")
        text = (f"dispatch {self.dispatch_id} on {self.path}: target {self.ramped_kw:,.1f} kW, "
                f"allocated {self.allocated_kw:,.1f} kW to {self.allocated} of {self.members}, "
                f"achieved {self.achieved_kw:,.1f} kW")
        if self.binding != "none":
            text += f"; limited by {self.binding}"
        if self.excluded_counts:
            text += "; excluded: " + ", ".join(f"{n} {r}" for r, n in
                                               self.excluded_counts.items())
        return text


@dataclass(slots=True)
class MemberInputs:
    """What the members report now, index-aligned with :attr:`DispatchPlan.asset_ids`."""

    states: np.ndarray          # uint8 state codes (255: its shard is down)
    last_seen: np.ndarray       # float, NaN if never
    power_kw: np.ndarray        # float, NaN if never reported
    soc_pct: np.ndarray         # float, NaN if unknown
    not_following: np.ndarray   # bool: flagged, or in its cool-down
    not_acknowledging: np.ndarray   # bool: its last commands went unacknowledged
    rejecting: np.ndarray       # bool: it refused this dispatch's setpoint (or in cool-down)


@dataclass(slots=True)
class Planned:
    setpoints_kw: np.ndarray
    eligible: np.ndarray        # bool: the members that get a setpoint (a lease) this tick
    report: DispatchReport


class DispatchPlan:
    """One dispatch between ticks (see the module docstring)."""

    def __init__(self, spec: DispatchSpec, asset_ids: Sequence[str], rated_kw: np.ndarray,
                 report_interval_s: np.ndarray) -> None:
        self.spec = spec
        self.asset_ids = list(asset_ids)
        self.rated_kw = rated_kw
        self.stale_s = (np.full(len(asset_ids), spec.stale_after_s)
                        if spec.stale_after_s is not None else 1.5 * report_interval_s)
        self.ramped: float | None = None
        self.direction = 0
        self.status = "active"
        self.reason: str | None = None
        self.last: DispatchReport | None = None

    def update(self, target_kw: float) -> None:
        self.spec = replace(self.spec, target_kw=target_kw)

    def ramp_target(self, now: float, tick_s: float, achieved_kw: float) -> float:
        target = self.spec.target_kw
        rate = self.spec.ramp_kw_per_s
        if rate is None:
            self.ramped = target
            return target
        start = achieved_kw if self.ramped is None else self.ramped
        step = rate * tick_s
        self.ramped = start + max(-step, min(step, target - start))
        return self.ramped

    def plan(self, now: float, tick_s: float, inputs: MemberInputs) -> Planned:
        spec = self.spec
        states = inputs.states
        reported = np.nan_to_num(inputs.power_kw, nan=0.0)
        online = states == ONLINE
        achieved = float(reported[online].sum())
        target = self.ramp_target(now, tick_s, achieved)
        reasons: dict[str, np.ndarray] = {}
        fresh = online & ~((now - inputs.last_seen) > self.stale_s)
        for name, mask in (("offline", states == OFFLINE),
                           ("unknown (never reported)", states == UNKNOWN),
                           ("decommissioned", states == DECOMMISSIONED),
                           ("quarantined", states == QUARANTINED),
                           ("shard down", states == 255),
                           ("stale (no report for 1.5 report intervals)"
                            if spec.stale_after_s is None else
                            f"stale (no report for {spec.stale_after_s:g} s)", online & ~fresh),
                           ("rejecting commands", fresh & inputs.rejecting),
                           ("not following its setpoint",
                            fresh & ~inputs.rejecting & inputs.not_following),
                           ("not acknowledging commands",
                            fresh & ~inputs.rejecting & ~inputs.not_following &
                            inputs.not_acknowledging)):
            if mask.any():
                reasons[name] = mask
        eligible = (fresh & ~inputs.not_following & ~inputs.not_acknowledging &
                    ~inputs.rejecting)
        # members left out still deliver what they deliver: the others make up the rest
        uncontrolled = float(reported[online & ~eligible].sum())
        soc = inputs.soc_pct
        with np.errstate(invalid="ignore"):
            empty = eligible & (soc <= spec.soc_min_pct)
            full = eligible & (soc >= spec.soc_max_pct)
        max_discharge = np.where(eligible & ~empty, self.rated_kw, 0.0)
        max_charge = np.where(eligible & ~full, self.rated_kw, 0.0)
        if target > 0 and empty.any():
            reasons[f"empty (state of charge <= {spec.soc_min_pct:g} %)"] = empty
        if target < 0 and full.any():
            reasons[f"full (state of charge >= {spec.soc_max_pct:g} %)"] = full
        flip = (0.01 * float(self.rated_kw.sum()) if spec.flip_threshold_kw is None
                else spec.flip_threshold_kw)
        allocation = allocate(AllocationInput(
            target_kw=target - uncontrolled, max_discharge_kw=max_discharge,
            max_charge_kw=max_charge,
            soc_pct=soc, eligible=eligible, strategy=spec.strategy,
            previous_direction=self.direction, flip_threshold_kw=flip))
        self.direction = allocation.direction or self.direction
        setpoints = allocation.setpoints_kw
        allocated_kw = float(setpoints.sum())
        ids = self.asset_ids
        excluded = {r: tuple(ids[i] for i in np.flatnonzero(m)[:EXCLUDED_IDS_SHOWN].tolist())
                    for r, m in reasons.items()}
        counts = {r: int(m.sum()) for r, m in reasons.items()}
        ok = _covers(allocated_kw + uncontrolled, target, allocation.binding)
        report = DispatchReport(
            spec.dispatch_id, spec.path, now, self.status, spec.target_kw, target,
            allocation.feasible_kw + uncontrolled, allocated_kw, 0.0, achieved,
            achieved - target, allocation.binding, len(ids), int(eligible.sum()),
            int(np.count_nonzero(setpoints)), excluded, counts, ok, self.reason, uncontrolled)
        return Planned(setpoints, eligible, report)


def _covers(allocated_kw: float, target_kw: float, binding: str) -> bool:
    """The allocation meets the target (1 % or 0.1 kW slack); a zero target held idle is met."""
    if target_kw == 0.0:
        return True
    if binding.startswith("hysteresis"):
        return False
    return math.isclose(allocated_kw, target_kw, rel_tol=0.01, abs_tol=0.1)
