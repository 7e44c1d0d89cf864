"""Fleet dispatch allocation: a power target for a node becomes one setpoint per battery.

A pure function of its input (no clock, no randomness, no state): the dispatch loop calls
:func:`allocate` every tick with the limits it last saw and the sign it allocated before.

Method
    1. *Hysteresis.* A target against the previous tick's direction, smaller than
       ``flip_threshold_kw``, holds the whole fleet idle, so a target hovering around 0 kW does
       not swing every battery between charge and discharge. The decision is taken for the
       fleet, never per asset: every allocated asset always goes the target's way.
    2. *Clamp.* The target is clamped to the sum of the eligible assets' limits in its
       direction (``max_discharge_kw`` for a target > 0, ``max_charge_kw`` for < 0).
    3. *Split by water-filling.* ``setpoint_i = min(cap_i, λ·w_i)`` with the one λ for which the
       setpoints add up to the clamped target: assets whose share would exceed their limit are
       held at it and the remainder is spread over the others, in one pass rather than a
       redistribute-until-stable loop. Sorting the assets by ``cap_i / w_i`` makes the fleet's
       total a piecewise-linear function of λ whose breakpoints come from prefix sums, so λ
       is found exactly with one sort and a binary search: O(n log n). With the ``headroom``
       strategy (``w_i = cap_i``) every ratio is 1 and the split is proportional to capacity,
       so the sort is skipped. The ``soc`` strategy weighs discharge by state of charge
       (fuller batteries deliver more) and charge by its complement (emptier ones absorb more).
    4. *Float drift.* The setpoints are corrected once so that their sum is the clamped target to
       about 1e-12 relative (the contract asks 1e-6); the correction only moves assets that are
       inside their limits and never pushes one past a limit.

Why numpy: one dispatch tick (1 s of fleet time by default) allocates over up to 100k assets; a
Python loop per asset costs tens of milliseconds there, vectorized array work about a
millisecond (``bench/bench_allocation.py``). Water-filling being monotone in λ is also why
"more target never gives an asset less in the same direction" holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["Allocation", "AllocationInput", "Strategy", "allocate"]

Strategy = Literal["headroom", "soc"]
STRATEGIES: tuple[Strategy, ...] = ("headroom", "soc")

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# the soc weights' floor: an empty battery still discharges a little (and a full one charges a
# little) in proportion to its limit, so the weight is 0 only when the limit is
SOC_WEIGHT_FLOOR = 0.05
SOC_UNKNOWN_PCT = 50.0
# the sum of the setpoints may be this far (relative) off the clamped target before the drift
# is corrected: 1000 times tighter than the contract's 1e-6, far above what rounding produces
DRIFT = 1e-9


@dataclass(frozen=True, slots=True)
class AllocationInput:
    """One tick's allocation problem; arrays hold one entry per asset, in the same order."""

    target_kw: float                 # >0 discharge (deliver to grid), <0 charge
    max_discharge_kw: FloatArray     # >= 0: the most each asset can deliver now
    max_charge_kw: FloatArray        # >= 0: the most each asset can absorb now (magnitude)
    soc_pct: FloatArray              # NaN where unknown (weighted as 50 %)
    eligible: BoolArray              # excluded assets get exactly 0.0
    strategy: Strategy = "headroom"
    previous_direction: int = 0      # sign of the fleet allocation at the previous tick
    flip_threshold_kw: float = 0.0   # hysteresis: |target| needed to reverse that sign


@dataclass(frozen=True, slots=True)
class Allocation:
    """The split: signed setpoints (>0 discharge) and how the target was met, in words too."""

    setpoints_kw: FloatArray         # per asset, same order as the input
    feasible_kw: float               # the target clamped to capacity (0 in the hysteresis hold)
    direction: int                   # sign of this allocation (-1, 0, 1)
    binding: str                     # the binding constraint, human readable ("none" if none)
    saturated: int                   # assets allocated their whole (non-zero) limit


def allocate(inp: AllocationInput) -> Allocation:
    """Split ``inp.target_kw`` over the eligible assets; raises ``ValueError`` naming the field
    of an invalid input (arrays of unequal length, a non-finite target, a negative limit)."""
    discharge, charge, soc, eligible = _validated(inp)
    n = len(eligible)
    zeros = np.zeros(n, dtype=np.float64)
    target = float(inp.target_kw)
    sign = int(np.sign(target))
    if sign == 0:
        return Allocation(zeros, 0.0, 0, "none", 0)
    if inp.previous_direction == -sign and abs(target) < inp.flip_threshold_kw:
        was = "discharging" if inp.previous_direction > 0 else "charging"
        return Allocation(zeros, 0.0, 0, f"hysteresis: holding idle until |target| >= "
                          f"{_kw(inp.flip_threshold_kw)} kW (was {was})", 0)
    eligible_count = int(np.count_nonzero(eligible))
    if eligible_count == 0:
        return Allocation(zeros, 0.0, 0, "no eligible asset", 0)

    limits = discharge if sign > 0 else charge
    active = np.flatnonzero(eligible & (limits > 0.0))
    cap = limits[active]
    total = float(cap.sum())
    amount = min(abs(target), total)
    binding = "none"
    if abs(target) > total:
        word = "discharge" if sign > 0 else "charge"
        plural = "" if eligible_count == 1 else "s"
        binding = (f"{word} capacity of {eligible_count:,} eligible asset{plural} "
                   f"({_kw(total)} kW)")
    if amount == 0.0:                # no capacity this way: nothing allocated, direction 0
        return Allocation(zeros, 0.0, 0, binding, 0)

    if amount >= total:
        share = cap
    elif inp.strategy == "headroom":
        # never above cap: amount / total < 1 and rounding a product is monotone
        share = cap * (amount / total)
        _correct_drift(share, cap, amount)
    else:
        share = _water_fill(cap, _soc_weights(cap, soc[active], sign), amount)
    saturated = int(np.count_nonzero(share >= cap))
    if sign < 0:
        np.subtract(0.0, share, out=share)      # not negative(): a 0 kW share stays +0.0
    zeros[active] = share
    return Allocation(zeros, sign * amount, sign, binding, saturated)


# The helpers below work in place on arrays this module made: at 100k assets a fresh float64
# temporary is 0.8 MB that the kernel maps page by page, which costs more than the arithmetic.


def _soc_weights(cap: FloatArray, soc: FloatArray, sign: int) -> FloatArray:
    """Weights from ``soc`` (a fresh array, overwritten): discharge weighs the fuller more,
    charge the emptier; an unknown state of charge (NaN) counts as 50 %."""
    np.copyto(soc, SOC_UNKNOWN_PCT, where=np.isnan(soc))
    np.clip(soc, 0.0, 100.0, out=soc)
    if sign < 0:
        np.subtract(100.0, soc, out=soc)
    soc /= 100.0
    soc += SOC_WEIGHT_FLOOR
    soc *= cap
    return soc


def _water_fill(cap: FloatArray, weight: FloatArray, amount: float) -> FloatArray:
    """``min(cap, λ·weight)`` summing to ``amount`` (0 < amount < cap.sum(), cap and weight > 0);
    ``weight`` is overwritten with the result.

    In the order of ``ratio = cap / weight`` an asset saturates once λ passes its ratio, so the
    total at λ = ratio[j] is the caps up to j plus ratio[j] times the weights after j. The
    assets whose total stays within ``amount`` are saturated; λ shares the rest over the others.
    The sort only finds λ: the shares are then computed in the input's order.
    """
    usable = weight > 0.0            # a weight underflows to 0 only for a limit near 1e-300 kW
    if not usable.all():
        share = np.zeros_like(cap)
        share[usable] = _water_fill(cap[usable], weight[usable], amount)
        return share
    ratio = cap / weight
    order = np.argsort(ratio)   # ties in any order: tied assets land on the same side
    caps_through = cap[order]
    np.cumsum(caps_through, out=caps_through)             # sum of c[:j + 1]
    weights_from = weight[order]
    np.cumsum(weights_from[::-1], out=weights_from[::-1])  # sum of w[j:], without cancellation
    total_at_ratio = ratio[order]
    total_at_ratio[:-1] *= weights_from[1:]
    total_at_ratio[-1] = 0.0
    total_at_ratio += caps_through
    full = int(np.searchsorted(total_at_ratio, amount, side="right"))
    if full == len(cap):             # rounding at amount ~ cap.sum(), or unusable weights above
        return cap.copy()
    saturated_kw = float(caps_through[full - 1]) if full else 0.0
    weight *= (amount - saturated_kw) / float(weights_from[full])   # λ
    pass
    _correct_drift(weight, cap, amount)
    return weight


def _correct_drift(share: FloatArray, cap: FloatArray, amount: float) -> None:
    """A safety net, in place: if ``share`` sums to more than ``DRIFT`` (relative) off
    ``amount``, move the residual onto the assets inside their limits, up in proportion to
    their room or down in proportion to their share, so that none crosses a limit."""
    residual = amount - float(share.sum())
    if abs(residual) <= DRIFT * max(1.0, amount):
        return
    free = share < cap
    if residual > 0.0:
        room = np.where(free, cap - share, 0.0)
        spare = float(room.sum())
        if spare > 0.0:
            share += room * min(1.0, residual / spare)
            np.minimum(share, cap, out=share)
    else:
        movable = np.where(free, share, 0.0)
        held = float(movable.sum())
        if held > 0.0:
            share -= movable * min(1.0, -residual / held)
            np.maximum(share, 0.0, out=share)


def _validated(inp: AllocationInput) -> tuple[FloatArray, FloatArray, FloatArray, BoolArray]:
    """The input's arrays as 1-D float64 / bool of one length, or ``ValueError`` naming why."""
    if not np.isfinite(inp.target_kw):
        raise ValueError(f"target_kw must be a finite number of kW, got {inp.target_kw!r}")
    if inp.strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; "
                         f"got {inp.strategy!r}")
    if inp.previous_direction not in (-1, 0, 1):
        raise ValueError(f"previous_direction must be -1, 0 or 1, got {inp.previous_direction!r}")
    if not (np.isfinite(inp.flip_threshold_kw) and inp.flip_threshold_kw >= 0.0):
        raise ValueError(f"flip_threshold_kw must be finite and >= 0, "
                         f"got {inp.flip_threshold_kw!r}")
    floats = {name: np.asarray(getattr(inp, name), dtype=np.float64)
              for name in ("max_discharge_kw", "max_charge_kw", "soc_pct")}
    eligible = np.asarray(inp.eligible, dtype=np.bool_)
    shapes = {**{name: a.shape for name, a in floats.items()}, "eligible": eligible.shape}
    for name, shape in shapes.items():
        if len(shape) != 1:
            raise ValueError(f"{name} must be one-dimensional (one entry per asset), "
                             f"got shape {shape}")
    if len({shape[0] for shape in shapes.values()}) > 1:
        listed = ", ".join(f"{name} has {shape[0]}" for name, shape in shapes.items())
        raise ValueError(f"allocation arrays must have one entry per asset: {listed}")
    for name in ("max_discharge_kw", "max_charge_kw"):
        values = floats[name]
        if not len(values) or (values.min() >= 0.0 and np.isfinite(values.max())):
            continue                 # two reductions, no temporaries: the usual case
        bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0.0)))
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] is {float(values[i])!r}: limits must be finite and "
                         f">= 0 kW for every asset, eligible or not ({len(bad)} such entries)")
    return floats["max_discharge_kw"], floats["max_charge_kw"], floats["soc_pct"], eligible


def _kw(value: float) -> str:
    """4240.0 -> '4,240'; small values keep their digits: 7.5 -> '7.5'."""
    return f"{value:,.0f}" if abs(value) >= 100.0 else f"{value:.3g}"
