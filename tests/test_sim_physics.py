"""Device physics and the fleet generator: the simulated world behaves like the real one."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import SimConfigError
from sim.fleetgen import apportion, generate_fleet
from sim.physics import (
    CUT_IN_MS,
    CUT_OUT_MS,
    RATED_MS,
    BatteryPhysics,
    ChargerPhysics,
    TurbinePhysics,
    WindField,
    power_curve,
)
from twin import FleetModel


def test_power_curve_is_zero_outside_the_operating_range_and_full_at_rated_wind() -> None:
    assert power_curve(0.0) == power_curve(CUT_IN_MS - 0.1) == 0.0
    assert power_curve(RATED_MS) == power_curve(CUT_OUT_MS - 0.1) == 1.0
    assert power_curve(CUT_OUT_MS) == 0.0
    speeds = [CUT_IN_MS + i * 0.5 for i in range(int((RATED_MS - CUT_IN_MS) / 0.5) + 1)]
    fractions = [power_curve(s) for s in speeds]
    assert fractions == sorted(fractions)


def test_wind_field_moves_smoothly_from_step_to_step() -> None:
    wind = WindField(random.Random(1), mean=9.0)
    speeds = [wind.step(10.0) for _ in range(720)]
    jumps = [abs(b - a) for a, b in itertools.pairwise(speeds)]
    assert max(jumps) < 1.5
    assert 3.0 < statistics.mean(speeds) < 15.0


def test_turbines_of_one_site_see_correlated_wind_and_never_exceed_their_rating() -> None:
    rng = random.Random(3)
    site_a, site_b = WindField(rng, 9.0), WindField(rng, 9.0)
    a1, a2 = TurbinePhysics(3000.0, site_a, rng), TurbinePhysics(3000.0, site_a, rng)
    b1 = TurbinePhysics(3000.0, site_b, rng)
    series: dict[str, list[float]] = {"a1": [], "a2": [], "b1": []}
    for _ in range(2000):
        site_a.step(10.0)
        site_b.step(10.0)
        for name, turbine in (("a1", a1), ("a2", a2), ("b1", b1)):
            turbine.step(10.0)
            assert 0.0 <= turbine.power_kw <= 3000.0
            series[name].append(turbine.wind_ms)
    same_site = statistics.correlation(series["a1"], series["a2"])
    other_site = statistics.correlation(series["a1"], series["b1"])
    assert same_site > 0.9
    assert same_site > other_site + 0.3


@settings(max_examples=60, deadline=None)
@given(setpoints=st.lists(st.floats(-2000.0, 2000.0), min_size=1, max_size=60),
       soc=st.floats(0.0, 1.0), dt=st.sampled_from([1.0, 5.0, 10.0, 20.0]))
def test_an_instant_battery_keeps_energy_within_capacity_and_power_within_rating(
        setpoints: list[float], soc: float, dt: float) -> None:
    battery = BatteryPhysics(rated_kw=250.0, capacity_kwh=500.0, soc=soc)
    for setpoint in setpoints:
        battery.receive(battery.t, setpoint)
        for _ in range(30):
            before = battery.energy_kwh
            battery.step(dt)
            assert 0.0 <= battery.energy_kwh <= 500.0
            assert -250.0 <= battery.power_kw <= 250.0
            assert 0.0 <= battery.soc_pct <= 100.0
            # energy moves by what the power says (discharging lowers it)
            assert battery.energy_kwh == pytest.approx(before - battery.power_kw * dt / 3600.0,
                                                       abs=1e-9)


def test_battery_follows_its_setpoint_until_full() -> None:
    battery = BatteryPhysics(rated_kw=5.0, capacity_kwh=13.5, soc=0.5)
    battery.receive(0.0, -5.0)                      # charge at full power
    battery.step(60.0)
    assert battery.power_kw == -5.0
    for _ in range(200):
        battery.step(60.0)
    assert battery.energy_kwh == pytest.approx(13.5)
    assert battery.power_kw == pytest.approx(0.0, abs=1e-9)


def test_charger_sessions_draw_within_rating_and_end_when_their_energy_is_delivered() -> None:
    charger = ChargerPhysics(rated_kw=50.0, rng=random.Random(5), sessions_per_hour=3.0)
    ended = 0
    for _ in range(20000):
        was_active = charger.active
        charger.step(10.0)
        assert -50.0 <= charger.power_kw <= 0.0
        if charger.active:
            assert charger.delivered_kwh <= charger.needed_kwh + 1e-9
        if was_active and not charger.active:
            ended += 1
    assert charger.sessions >= 3
    assert ended >= charger.sessions - 1          # every session but the last one ended


def test_generated_fleet_follows_the_mix_exactly_and_loads_as_a_model() -> None:
    raw = generate_fleet(1000, owners=3, regions=8, sites=90,
                         mix={"turbine": 0.5, "battery": 0.3, "charger": 0.2}, seed=4)
    model = FleetModel.from_dict(raw)
    kinds = [spec.kind for spec in model.assets.values()]
    assert (kinds.count("turbine"), kinds.count("battery"), kinds.count("charger")) == (
        500, 300, 200)
    assert len(model.owners) == 3
    assert sum(len(regions) for regions in model.owners.values()) == 8
    assert 85 <= len(model.sites) <= 90
    assert all(len({a.kind for a in site.assets.values()}) == 1 for site in model.sites.values())
    assert model.assets["c-000000"].offline_after_s == 180.0     # chargers report every 60 s


def test_same_seed_gives_the_same_fleet_and_another_seed_another() -> None:
    mix = {"turbine": 0.4, "battery": 0.6}
    assert generate_fleet(200, mix=mix, seed=1) == generate_fleet(200, mix=mix, seed=1)
    assert generate_fleet(200, mix=mix, seed=1) != generate_fleet(200, mix=mix, seed=2)


@given(total=st.integers(0, 5000),
       shares=st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3))
def test_apportion_hands_out_every_asset(total: int, shares: list[float]) -> None:
    norm = {k: s / sum(shares) for k, s in zip(("turbine", "battery", "charger"), shares,
                                                 strict=True)}
    counts = apportion(total, norm)
    assert sum(counts.values()) == total
    assert all(abs(counts[k] - total * norm[k]) < 1 for k in counts)


def test_fewer_regions_than_owners_is_refused_with_both_numbers() -> None:
    with pytest.raises(SimConfigError, match="2 regions cannot be shared by 3 owners"):
        generate_fleet(10, owners=3, regions=2, mix={"turbine": 1.0})
