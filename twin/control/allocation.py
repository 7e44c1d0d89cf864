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
       redistribute-until-stable loop. The fleet's total ``f(λ)`` is increasing and
       piecewise linear with a breakpoint at each ratio ``cap_i / w_i`` (where asset i
       saturates). Sorting the ratios and bisecting over them finds the linear segment that
       holds the target, and λ is exact within it. One sort and about log2(n) passes over the
       arrays: O(n log n). (Prefix sums over the assets in ratio order would replace the
       passes, but need an argsort and gathers, which measured twice as slow at 100k.)
       With ``headroom`` (``w_i = cap_i``) every ratio is 1: the split is proportional to
       capacity and nothing is sorted. ``soc`` weighs discharge by state of charge (fuller
       batteries deliver more) and charge by its complement (emptier ones absorb more).
    4. *Float drift.* The setpoints' sum is the clamped target to about 1e-15 relative (the
       contract asks 1e-6). A safety net corrects anything beyond 1e-9 by moving the
       residual onto assets inside their limits, never past a limit; no input seen in the
       tests needs it.

Why numpy: one dispatch tick (1 s of fleet time by default) allocates over up to 100k assets; a
Python loop per asset costs tens of milliseconds there, vectorized array work a few
(``bench/bench_allocation.py``). The arrays keep every asset, excluded ones with a limit of 0,
rather than gathering the eligible ones: each temporary 0.8 MB array costs page faults that,
on a VM, cost as much as the arithmetic. Water-filling being monotone in λ is why "more target
never gives an asset less in the same direction" holds.
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
    target = float(inp.target_kw)
    sign = int(np.sign(target))
    if sign == 0:
        return _idle(eligible, "none")
    if inp.previous_direction == -sign and abs(target) < inp.flip_threshold_kw:
        was = "discharging" if inp.previous_direction > 0 else "charging"
        return _idle(eligible, f"hysteresis: holding idle until |target| >= "
                               f"{_kw(inp.flip_threshold_kw)} kW (was {was})")
    eligible_count = int(np.count_nonzero(eligible))
    if eligible_count == 0:
        return _idle(eligible, "no eligible asset")

    limits = discharge if sign > 0 else charge
    cap = np.where(eligible, limits, 0.0)          # excluded: a limit of 0, so a share of 0
    total = float(cap.sum())
    amount = min(abs(target), total)
    binding = "none"
    if abs(target) > total:
        word = "discharge" if sign > 0 else "charge"
        plural = "" if eligible_count == 1 else "s"
        binding = (f"{word} capacity of {eligible_count:,} eligible asset{plural} "
                   f"({_kw(total)} kW)")
    if amount == 0.0:                # no capacity this way: nothing allocated, direction 0
        return _idle(eligible, binding)

    if amount >= total:
        share = cap
    elif inp.strategy == "headroom":
        # never above cap: amount / total < 1 and rounding a product is monotone
        share = cap * (amount / total)
        _correct_drift(share, cap, amount)
    else:
        weight, ratio = _soc_weights(cap, soc, sign)
        share = _water_fill(cap, weight, ratio, amount)
    saturated = int(np.count_nonzero((share >= cap) & (cap > 0.0)))
    if sign < 0:
        np.subtract(0.0, share, out=share)      # not negative(): a 0 kW share stays +0.0
    return Allocation(share, sign * amount, sign, binding, saturated)


def _idle(eligible: BoolArray, binding: str) -> Allocation:
    return Allocation(np.zeros(len(eligible), dtype=np.float64), 0.0, 0, binding, 0)


# The helpers below work in place on arrays this module made: at 100k assets a fresh float64
# temporary is 0.8 MB that the kernel maps page by page, which costs more than the arithmetic.


def _soc_weights(cap: FloatArray, soc: FloatArray, sign: int) -> tuple[FloatArray, FloatArray]:
    """Weights ``cap · (0.05 + fill)`` and ratios ``cap / weight``, where fill is the state of
    charge (discharge: fuller weighs more) or its complement (charge: emptier weighs more); an
    unknown state of charge (NaN) counts as 50 %. The ratio is taken as ``1 / (0.05 + fill)``
    so that it stays finite where a limit is 0 (excluded assets, empty batteries)."""
    factor = np.where(np.isnan(soc), SOC_UNKNOWN_PCT, soc)
    np.clip(factor, 0.0, 100.0, out=factor)
    if sign < 0:
        np.subtract(100.0, factor, out=factor)
    factor /= 100.0
    factor += SOC_WEIGHT_FLOOR
    ratio = np.divide(1.0, factor)
    factor *= cap
    return factor, ratio


def _water_fill(cap: FloatArray, weight: FloatArray, ratio: FloatArray,
                amount: float) -> FloatArray:
    """``min(cap, λ·weight)`` summing to ``amount`` (0 < amount < cap.sum()); ``ratio`` is
    ``cap / weight`` (any finite value where both are 0); ``weight`` is overwritten with the
    result.

    The total at λ = r, ``f(r) = Σ min(cap, r·weight)``, grows with r and is linear between
    consecutive ratios. Bisecting over the sorted ratios finds the two around the target, a
    with ``f(a) <= amount`` and the next, b, with ``f(b) > amount``; λ interpolates between
    them, exactly since f is linear there (the assets with a ratio up to a are saturated,
    the others take λ·weight). The error of λ moves the sum by the rounding of f(a) and
    f(b), about 1e-16 of the total.
    """
    ordered = np.sort(ratio)
    scratch = np.empty_like(cap)

    def total_at(r: float) -> float:
        np.multiply(weight, r, out=scratch)
        np.minimum(scratch, cap, out=scratch)
        return float(scratch.sum())

    below, total_below = 0.0, 0.0     # a, f(a): λ = 0 delivers nothing
    above, total_above = 0.0, float(cap.sum())
    lo, hi = 0, len(ordered)          # f(ordered[j]) <= amount for j < lo, > amount for j >= hi
    while lo < hi:
        mid = (lo + hi) // 2
        r = float(ordered[mid])
        total = total_at(r)
        if total <= amount:
            lo, below, total_below = mid + 1, r, total
        else:
            hi, above, total_above = mid, r, total
    if lo == len(ordered):            # rounding at amount ~ cap.sum(): every asset at its limit
        return cap.copy()
    step = (amount - total_below) / (total_above - total_below)   # in [0, 1)
    weight *= below + min(1.0, step) * (above - below)           # λ
    np.minimum(weight, cap, out=weight)
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
