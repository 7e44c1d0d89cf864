"""The dispatch allocation function: properties over random fleets (Hypothesis), then examples.

Fleets are small (0-30 assets) with limits drawn from a short list as well as at random, so
that equal limits, empty batteries (0 kW) and exact ties between assets occur often.
Deterministic: ``derandomize=True``, no example database.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.control.allocation import (
    DRIFT,
    Allocation,
    AllocationInput,
    _correct_drift,
    allocate,
)

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None)

LIMIT = st.one_of(st.sampled_from([0.0, 0.5, 2.5, 5.0, 5.0, 100.0]),
                  st.floats(min_value=0.0, max_value=1e4))
SOC = st.one_of(st.just(float("nan")), st.sampled_from([0.0, 50.0, 100.0]),
                st.floats(min_value=0.0, max_value=100.0))
STRATEGY = st.sampled_from(["headroom", "soc"])


@st.composite
def fleets(draw: st.DrawFn, min_assets: int = 0) -> AllocationInput:
    """A fleet and a target: 0, exactly the capacity one way, a part of it, or any value."""
    n = draw(st.integers(min_value=min_assets, max_value=30))
    discharge = np.array(draw(st.lists(LIMIT, min_size=n, max_size=n)), dtype=np.float64)
    charge = np.array(draw(st.lists(LIMIT, min_size=n, max_size=n)), dtype=np.float64)
    soc = np.array(draw(st.lists(SOC, min_size=n, max_size=n)), dtype=np.float64)
    eligible = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=np.bool_)
    exact = [float(discharge[eligible].sum()), -float(charge[eligible].sum())]
    part = st.tuples(st.sampled_from(exact), st.floats(min_value=0.0, max_value=1.0))
    target = draw(st.one_of(st.just(0.0), st.sampled_from(exact),
                            part.map(lambda capacity_fraction: float(np.prod(capacity_fraction))),
                            st.floats(min_value=-2e5, max_value=2e5)))
    return AllocationInput(target, discharge, charge, soc, eligible, draw(STRATEGY))


def capacity(inp: AllocationInput, sign: int) -> float:
    limits = inp.max_discharge_kw if sign > 0 else inp.max_charge_kw
    return float(limits[inp.eligible].sum())


def tolerance(kw: float) -> float:
    return 1e-6 * max(1.0, abs(kw))


# ------------------------------------------------------------------------- properties


@SETTINGS
@given(fleets())
def test_setpoints_add_up_to_the_target_clamped_to_the_eligible_capacity(
        inp: AllocationInput) -> None:
    out = allocate(inp)
    sign = int(np.sign(inp.target_kw))
    total = capacity(inp, sign) if sign else 0.0
    clamped = sign * min(abs(inp.target_kw), total)
    assert out.feasible_kw == pytest.approx(clamped, rel=1e-12, abs=1e-12)
    assert abs(float(out.setpoints_kw.sum()) - out.feasible_kw) <= tolerance(out.feasible_kw)
    if sign and abs(abs(inp.target_kw) - total) <= 1e-12 * total:
        pass              # at capacity: summed in another order, it may read either way
    elif sign and abs(inp.target_kw) > total:
        assert out.binding.startswith(("discharge capacity of", "charge capacity of",
                                       "no eligible asset"))
        assert out.saturated == int(np.count_nonzero(out.setpoints_kw))
    else:
        assert out.binding == "none"


@SETTINGS
@given(fleets())
def test_no_asset_is_set_beyond_its_limits_nor_against_the_direction(
        inp: AllocationInput) -> None:
    out = allocate(inp)
    sp = out.setpoints_kw
    assert sp.dtype == np.float64 and sp.shape == inp.eligible.shape
    assert np.all(sp <= inp.max_discharge_kw) and np.all(sp >= -inp.max_charge_kw)
    assert set(np.sign(sp).tolist()) <= {0.0, float(out.direction)}
    assert out.direction == (int(np.sign(out.feasible_kw)))
    at_limit = sp == (inp.max_discharge_kw if out.direction > 0 else -inp.max_charge_kw)
    assert out.saturated == int(np.count_nonzero(at_limit & (sp != 0.0)))


def weights(inp: AllocationInput, sign: int) -> np.ndarray:
    """The documented weights, recomputed here: headroom = limit; soc = limit x (0.05 + fill)."""
    limits = inp.max_discharge_kw if sign > 0 else inp.max_charge_kw
    if inp.strategy == "headroom":
        return limits
    soc = np.where(np.isnan(inp.soc_pct), 50.0, inp.soc_pct)
    fill = soc / 100.0 if sign > 0 else (100.0 - soc) / 100.0
    return limits * (0.05 + fill)


@st.composite
def soc_fleets_in_part_saturated(draw: st.DrawFn) -> AllocationInput:
    """SoC-weighted fleets asked for most of their capacity, where some assets saturate and
    the rest share the remainder: the case where water-filling differs from a plain split."""
    n = draw(st.integers(min_value=2, max_value=30))
    limits = np.array(draw(st.lists(st.sampled_from([0.5, 2.5, 5.0, 13.5]), min_size=n,
                                    max_size=n)), dtype=np.float64)
    soc = np.array(draw(st.lists(SOC, min_size=n, max_size=n)), dtype=np.float64)
    sign = draw(st.sampled_from([-1.0, 1.0]))
    fraction = draw(st.floats(min_value=0.3, max_value=1.0, exclude_max=True))
    return AllocationInput(sign * fraction * float(limits.sum()), limits, limits, soc,
                           np.ones(n, dtype=np.bool_), "soc")


@SETTINGS
@given(st.one_of(fleets(), soc_fleets_in_part_saturated()))
def test_the_split_is_water_filling_one_level_for_all_below_their_limit_and_none_above_it(
        inp: AllocationInput) -> None:
    out = allocate(inp)
    if out.direction == 0:
        return
    share = np.abs(out.setpoints_kw)
    limits = inp.max_discharge_kw if out.direction > 0 else inp.max_charge_kw
    w = weights(inp, out.direction)
    used = inp.eligible & (limits > 0.0) & (w > 1e-300)
    below = used & (share < limits)
    normal = below & (share > 1e-200)                  # shares that have not underflowed
    if not normal.any():
        return
    level = share[normal] / w[normal]                  # λ: the same for every one of them
    lam = float(np.median(level))
    assert np.allclose(level, lam, rtol=1e-9, atol=0.0)
    assert np.all(lam * w[below & ~normal] <= 1e-190)
    at_limit = used & ~below                           # saturated: λ·w would exceed the limit
    assert np.all(limits[at_limit] / w[at_limit] <= lam * (1 + 1e-9))


@SETTINGS
@given(st.one_of(fleets(), soc_fleets_in_part_saturated()))
def test_the_split_is_exact_without_the_drift_safety_net(inp: AllocationInput) -> None:
    residuals: list[float] = []

    def watch(share: np.ndarray, cap: np.ndarray, amount: float) -> None:
        residuals.append(abs(amount - float(share.sum())) / max(1.0, amount))
        _correct_drift(share, cap, amount)

    with mock.patch("twin.control.allocation._correct_drift", watch):
        allocate(inp)
    assert all(r <= DRIFT for r in residuals)


@SETTINGS
@given(fleets())
def test_no_excluded_asset_is_allocated_not_even_minus_zero(inp: AllocationInput) -> None:
    excluded = allocate(inp).setpoints_kw[~inp.eligible]
    assert np.all(excluded == 0.0) and not np.any(np.signbit(excluded))


@SETTINGS
@given(fleets(), st.floats(min_value=0.0, max_value=1.0), st.sampled_from([-1, 0, 1]),
       st.sampled_from([0.0, 1.0, 50.0]))
def test_more_target_never_gives_an_asset_less_in_the_same_direction(
        inp: AllocationInput, fraction: float, previous: int, threshold: float) -> None:
    inp = replace(inp, previous_direction=previous, flip_threshold_kw=threshold)
    less = allocate(replace(inp, target_kw=inp.target_kw * fraction)).setpoints_kw
    more = allocate(inp).setpoints_kw
    sign = np.sign(inp.target_kw)
    # exact for headroom; soc's λ may round either way by an ulp per tick
    assert np.all(sign * more >= sign * less - DRIFT * max(1.0, abs(inp.target_kw)))


@SETTINGS
@given(fleets(), st.sampled_from([-1, 0, 1]), st.sampled_from([0.0, 10.0]))
def test_same_inputs_give_bitwise_the_same_output_and_the_inputs_are_left_alone(
        inp: AllocationInput, previous: int, threshold: float) -> None:
    inp = replace(inp, previous_direction=previous, flip_threshold_kw=threshold)
    arrays = ("max_discharge_kw", "max_charge_kw", "soc_pct", "eligible")
    before = {name: getattr(inp, name).copy() for name in arrays}
    first = allocate(inp)
    again = allocate(replace(inp, **{name: before[name].copy() for name in arrays}))
    assert first.setpoints_kw.tobytes() == again.setpoints_kw.tobytes()
    assert (first.feasible_kw, first.direction, first.binding, first.saturated) == (
        again.feasible_kw, again.direction, again.binding, again.saturated)
    for name in arrays:
        assert getattr(inp, name).tobytes() == before[name].tobytes()


@st.composite
def equal_limit_fleets(draw: st.DrawFn) -> AllocationInput:
    """All assets eligible with one limit each way, so only the state of charge tells them
    apart; the target is anywhere up to beyond capacity, either way."""
    n = draw(st.integers(min_value=2, max_value=20))
    limit = draw(st.sampled_from([1.0, 5.0, 13.5]))
    soc = np.array(draw(st.lists(SOC, min_size=n, max_size=n)), dtype=np.float64)
    target = draw(st.floats(min_value=-1.2, max_value=1.2).filter(lambda f: f != 0.0))
    return AllocationInput(target * n * limit, np.full(n, limit), np.full(n, limit), soc,
                           np.ones(n, dtype=np.bool_), "soc")


@SETTINGS
@given(equal_limit_fleets())
def test_soc_strategy_discharges_fuller_batteries_and_charges_emptier_ones_at_least_as_much(
        inp: AllocationInput) -> None:
    magnitude = np.abs(allocate(inp).setpoints_kw)
    soc = np.where(np.isnan(inp.soc_pct), 50.0, inp.soc_pct)
    fuller = soc[:, None] > soc[None, :]              # fuller[i, j]: i fuller than j
    gives = magnitude[:, None] - magnitude[None, :]   # gives[i, j]: i's share over j's
    slack = DRIFT * max(1.0, abs(inp.target_kw))
    if inp.target_kw > 0:
        assert np.all(gives[fuller] >= -slack)
    else:
        assert np.all(gives[fuller] <= slack)


@SETTINGS
@given(fleets(min_assets=1), st.sampled_from([-1, 1]),
       st.floats(min_value=0.5, max_value=500.0),
       st.one_of(st.sampled_from([0.0, 5e-324, 0.5, 1.0, 2.0]),
                 st.floats(min_value=0.0, max_value=2.0)))
def test_a_reverse_target_below_the_threshold_holds_the_fleet_idle_and_at_it_is_released(
        inp: AllocationInput, previous: int, threshold: float, scale: float) -> None:
    target = -previous * threshold * scale
    held = allocate(replace(inp, target_kw=target, previous_direction=previous,
                            flip_threshold_kw=threshold))
    fresh = allocate(replace(inp, target_kw=target))    # what it would be with no history
    if 0.0 < abs(target) < threshold:   # (a scale of 5e-324 makes a target of 0: no reversal)
        assert not np.any(held.setpoints_kw) and not np.any(np.signbit(held.setpoints_kw))
        assert (held.feasible_kw, held.direction, held.saturated) == (0.0, 0, 0)
        assert held.binding.startswith("hysteresis: holding idle until |target| >= ")
    else:
        assert held.setpoints_kw.tobytes() == fresh.setpoints_kw.tobytes()
        assert (held.feasible_kw, held.direction, held.binding) == (
            fresh.feasible_kw, fresh.direction, fresh.binding)


@SETTINGS
@given(fleets(min_assets=1), st.sampled_from([-1, 1]), st.floats(min_value=1.0, max_value=50.0))
def test_a_target_the_same_way_as_before_is_never_held_however_small(
        inp: AllocationInput, previous: int, threshold: float) -> None:
    same = replace(inp, target_kw=previous * threshold / 2)
    out = allocate(replace(same, previous_direction=previous, flip_threshold_kw=threshold))
    assert out.setpoints_kw.tobytes() == allocate(same).setpoints_kw.tobytes()
    assert not out.binding.startswith("hysteresis")


# ------------------------------------------------------------------------- validation


def three(**changes: Any) -> AllocationInput:
    base = AllocationInput(6.0, np.full(3, 5.0), np.full(3, 5.0), np.full(3, 50.0),
                           np.array([True, False, True]))
    return replace(base, **changes)


@pytest.mark.parametrize(("changes", "named"), [
    ({"max_charge_kw": np.full(4, 5.0)}, "max_charge_kw has 4"),
    ({"soc_pct": np.full(2, 50.0)}, "soc_pct has 2"),
    ({"eligible": np.ones(5, dtype=np.bool_)}, "eligible has 5"),
    ({"max_discharge_kw": np.full((3, 1), 5.0)}, "max_discharge_kw must be one-dimensional"),
    ({"target_kw": float("nan")}, "target_kw must be a finite number of kW, got nan"),
    ({"target_kw": float("-inf")}, "target_kw must be a finite number of kW, got -inf"),
    ({"max_discharge_kw": np.array([5.0, -0.1, 5.0])}, "max_discharge_kw[1] is -0.1"),
    ({"max_charge_kw": np.array([5.0, 5.0, np.nan])}, "max_charge_kw[2] is nan"),
    ({"max_charge_kw": np.array([np.inf, 5.0, 5.0])}, "max_charge_kw[0] is inf"),
    ({"strategy": "fair"}, "strategy must be one of headroom, soc; got 'fair'"),
    ({"previous_direction": 2}, "previous_direction must be -1, 0 or 1, got 2"),
    ({"flip_threshold_kw": -1.0}, "flip_threshold_kw must be finite and >= 0, got -1.0"),
])
def test_an_invalid_input_is_refused_with_a_message_naming_the_field(
        changes: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError) as error:
        allocate(three(**changes))
    assert named in str(error.value)


def test_arrays_of_unequal_length_are_all_listed_with_their_lengths() -> None:
    with pytest.raises(ValueError) as error:
        allocate(three(max_charge_kw=np.full(4, 5.0)))
    assert str(error.value) == (
        "allocation arrays must have one entry per asset: max_discharge_kw has 3, "
        "max_charge_kw has 4, soc_pct has 3, eligible has 3")


def test_a_negative_limit_of_an_excluded_asset_is_refused_too() -> None:
    with pytest.raises(ValueError, match=r"max_discharge_kw\[1\] is -5.0"):
        allocate(three(max_discharge_kw=np.array([5.0, -5.0, 5.0])))


# ------------------------------------------------------------------------- examples


def test_three_batteries_one_offline_share_the_target_by_headroom() -> None:
    out = allocate(three(max_discharge_kw=np.array([2.0, 5.0, 4.0])))
    assert out.setpoints_kw.tolist() == pytest.approx([2.0, 0.0, 4.0])
    assert (out.feasible_kw, out.direction, out.binding, out.saturated) == (6.0, 1, "none", 2)
    out = allocate(three(max_discharge_kw=np.array([2.0, 5.0, 4.0]), target_kw=3.0))
    assert out.setpoints_kw.tolist() == pytest.approx([1.0, 0.0, 2.0])
    assert out.saturated == 0


def test_a_target_beyond_the_fleet_is_clamped_and_says_which_capacity_binds() -> None:
    out = allocate(three(target_kw=20.0))
    assert out.setpoints_kw.tolist() == [5.0, 0.0, 5.0]
    assert (out.feasible_kw, out.direction, out.saturated) == (10.0, 1, 2)
    assert out.binding == "discharge capacity of 2 eligible assets (10 kW)"
    out = allocate(replace(three(target_kw=-1e6), max_charge_kw=np.full(3, 2120.0)))
    assert out.binding == "charge capacity of 2 eligible assets (4,240 kW)"
    assert out.setpoints_kw.tolist() == [-2120.0, 0.0, -2120.0]


def test_soc_strategy_charges_the_emptiest_most_and_weighs_unknown_as_half_full() -> None:
    out = allocate(AllocationInput(-3.0, np.full(3, 5.0), np.full(3, 5.0),
                                   np.array([90.0, 10.0, np.nan]), np.ones(3, dtype=np.bool_),
                                   "soc"))
    weights = np.array([0.15, 0.95, 0.55])    # 0.05 + (100 - soc) / 100
    assert out.setpoints_kw.tolist() == pytest.approx((-3.0 * weights / weights.sum()).tolist())
    assert out.direction == -1 and out.binding == "none"


def test_soc_strategy_gives_the_remainder_of_a_saturated_battery_to_the_others() -> None:
    # weights 1 kW x (0.05 + 0.95) = 1 and 4 kW x (0.05 + 0.45) = 2: in proportion 2.4 kW would
    # split 0.8 / 1.6; 4 kW would ask 1.33 of the first, which holds at 1 and passes on 0.33
    inp = AllocationInput(2.4, np.array([1.0, 4.0]), np.zeros(2), np.array([95.0, 45.0]),
                          np.ones(2, dtype=np.bool_), "soc")
    assert allocate(inp).setpoints_kw.tolist() == pytest.approx([0.8, 1.6])
    out = allocate(replace(inp, target_kw=4.0))
    assert out.setpoints_kw.tolist() == pytest.approx([1.0, 3.0])
    assert out.saturated == 1 and out.binding == "none"


def test_an_idle_or_empty_fleet_allocates_nothing_and_says_why() -> None:
    assert allocate(three(target_kw=0.0)).binding == "none"
    nobody = allocate(three(eligible=np.zeros(3, dtype=np.bool_)))
    assert (nobody.feasible_kw, nobody.direction, nobody.binding) == (0.0, 0,
                                                                      "no eligible asset")
    empty = np.zeros(0)
    none_at_all = allocate(AllocationInput(5.0, empty, empty, empty, np.zeros(0, np.bool_)))
    assert none_at_all.binding == "no eligible asset" and none_at_all.setpoints_kw.shape == (0,)


def test_batteries_that_cannot_discharge_are_reported_as_the_binding_capacity() -> None:
    # "never says all is well while allocating nothing": eligible, but empty
    out = allocate(three(max_discharge_kw=np.zeros(3)))
    assert (out.feasible_kw, out.direction, out.saturated) == (0.0, 0, 0)
    assert out.binding == "discharge capacity of 2 eligible assets (0 kW)"
    assert not np.any(out.setpoints_kw)


def test_the_hold_names_the_threshold_and_the_direction_it_keeps() -> None:
    out = allocate(three(target_kw=-3.0, previous_direction=1, flip_threshold_kw=50.0))
    assert out.binding == "hysteresis: holding idle until |target| >= 50 kW (was discharging)"
    assert not np.any(out.setpoints_kw)


def test_the_drift_safety_net_moves_the_residual_onto_free_assets_within_their_limits() -> None:
    cap = np.array([1.0, 2.0, 3.0])
    short = np.array([1.0, 1.0, 1.0])          # 3 kW where 4 were asked: first asset is full
    _correct_drift(short, cap, 4.0)
    assert short.tolist() == pytest.approx([1.0, 4 / 3, 5 / 3])   # in proportion to room 1, 2
    over = np.array([1.0, 2.0, 3.0]) * 0.9     # 5.4 kW where 5 were asked
    _correct_drift(over, cap, 5.0)
    assert over.sum() == pytest.approx(5.0) and np.all(over >= 0.0) and np.all(over <= cap)
    close = np.array([0.5, 0.5])
    _correct_drift(close, np.ones(2), 1.0 + DRIFT / 2)   # within the drift: left alone
    assert close.tolist() == [0.5, 0.5]


def test_allocation_is_a_plain_record_the_dispatch_loop_can_read() -> None:
    out = allocate(three())
    assert isinstance(out, Allocation) and isinstance(out.feasible_kw, float)
    assert isinstance(out.direction, int) and isinstance(out.saturated, int)
