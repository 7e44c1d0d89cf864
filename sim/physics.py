"""Device physics: what each simulated device really does, step by step.

- Turbines turn a site's wind (a smooth, mean-reverting field shared by the site, plus a small
  per-turbine gust term) into power through a power curve capped at the rating.
- Batteries integrate power into stored energy, within their capacity and power limits, and
  follow the setpoint the control application last sent them.
- Chargers serve sessions that arrive at random, draw up to their rating (and the car's limit),
  and end when the session's energy is delivered.

Units are the runtime's: kW, kWh, seconds; power is positive when delivered to the grid.
"""

from __future__ import annotations

import math
import random

CUT_IN_MS = 3.0
RATED_MS = 12.0
CUT_OUT_MS = 25.0
MAX_WIND_MS = 40.0


def power_curve(wind_ms: float) -> float:
    """Fraction of rated power at ``wind_ms``: cubic from cut-in to rated, flat to cut-out."""
    if wind_ms < CUT_IN_MS or wind_ms >= CUT_OUT_MS:
        return 0.0
    if wind_ms >= RATED_MS:
        return 1.0
    span = RATED_MS**3 - CUT_IN_MS**3
    return (wind_ms**3 - CUT_IN_MS**3) / span


class WindField:
    """A site's wind speed: an Ornstein-Uhlenbeck process (smooth, mean-reverting), so every
    turbine of a site sees correlated wind."""

    __slots__ = ("mean", "reversion", "rng", "speed", "volatility")

    def __init__(self, rng: random.Random, mean: float, volatility: float = 0.08,
                 reversion: float = 1.0 / 1800.0) -> None:
        self.rng = rng
        self.mean = mean
        self.volatility = volatility        # m/s per sqrt(s)
        self.reversion = reversion          # 1/s: how fast the wind returns to its mean
        self.speed = max(0.0, rng.gauss(mean, 2.0))

    def step(self, dt: float) -> float:
        drift = self.reversion * (self.mean - self.speed) * dt
        shock = self.volatility * math.sqrt(dt) * self.rng.gauss(0.0, 1.0)
        self.speed = min(MAX_WIND_MS, max(0.0, self.speed + drift + shock))
        return self.speed


class TurbinePhysics:
    __slots__ = ("field", "gust", "power_kw", "rated_kw", "rng", "wind_ms")

    def __init__(self, rated_kw: float, field: WindField, rng: random.Random) -> None:
        self.rated_kw = rated_kw
        self.field = field
        self.rng = rng
        self.gust = 0.0
        self.wind_ms = field.speed
        self.power_kw = 0.0

    def step(self, dt: float) -> None:
        # the turbine's own wind: the site's field plus a short-lived local deviation
        self.gust += -self.gust * min(1.0, dt / 120.0) + 0.05 * math.sqrt(dt) * self.rng.gauss(
            0.0, 1.0)
        self.wind_ms = min(MAX_WIND_MS, max(0.0, self.field.speed + self.gust))
        self.power_kw = self.rated_kw * power_curve(self.wind_ms)


class BatteryPhysics:
    """Stored energy within ``0..capacity``; power within ``±rated`` and what the stored energy
    allows in one step. ``setpoint_kw`` is what the device follows (from the control app)."""

    __slots__ = ("capacity_kwh", "energy_kwh", "power_kw", "rated_kw", "setpoint_kw")

    def __init__(self, rated_kw: float, capacity_kwh: float, soc: float) -> None:
        self.rated_kw = rated_kw
        self.capacity_kwh = capacity_kwh
        self.energy_kwh = capacity_kwh * min(1.0, max(0.0, soc))
        self.setpoint_kw = 0.0
        self.power_kw = 0.0

    def step(self, dt: float) -> None:
        hours = dt / 3600.0
        want = min(self.rated_kw, max(-self.rated_kw, self.setpoint_kw))
        if want > 0:      # discharging: cannot deliver more than is stored
            power = min(want, self.energy_kwh / hours)
        else:             # charging: cannot take more than the room left
            power = max(want, -(self.capacity_kwh - self.energy_kwh) / hours)
        self.power_kw = power
        self.energy_kwh = min(self.capacity_kwh, max(0.0, self.energy_kwh - power * hours))

    @property
    def soc_pct(self) -> float:
        return 100.0 * self.energy_kwh / self.capacity_kwh


class ChargerPhysics:
    """Sessions arrive as a Poisson process; each wants some energy and has a car power limit."""

    __slots__ = ("arrivals_per_s", "car_limit_kw", "delivered_kwh", "needed_kwh", "power_kw",
                 "rated_kw", "rng", "sessions")

    def __init__(self, rated_kw: float, rng: random.Random, sessions_per_hour: float = 0.6
                 ) -> None:
        self.rated_kw = rated_kw
        self.rng = rng
        self.arrivals_per_s = sessions_per_hour / 3600.0
        self.needed_kwh = 0.0          # 0: no session
        self.delivered_kwh = 0.0
        self.car_limit_kw = 0.0
        self.power_kw = 0.0
        self.sessions = 0

    @property
    def active(self) -> bool:
        return self.needed_kwh > 0.0

    def step(self, dt: float) -> None:
        if not self.active:
            self.power_kw = 0.0
            if self.rng.random() < 1.0 - math.exp(-self.arrivals_per_s * dt):
                self.sessions += 1
                self.needed_kwh = self.rng.uniform(5.0, 80.0)
                self.delivered_kwh = 0.0
                self.car_limit_kw = self.rng.choice((7.4, 11.0, 50.0, 150.0, 250.0))
            return
        draw = min(self.rated_kw, self.car_limit_kw, (self.needed_kwh - self.delivered_kwh)
                   * 3600.0 / dt)
        self.delivered_kwh += draw * dt / 3600.0
        self.power_kw = -draw                    # drawn from the grid: negative
        if self.delivered_kwh >= self.needed_kwh - 1e-9:
            self.needed_kwh = 0.0                # delivered: the car leaves


def site_wind_mean(rng: random.Random) -> float:
    """A site's mean wind: most sites are moderately windy, a few are very windy or calm."""
    return min(14.0, max(4.0, rng.gauss(8.5, 2.0)))
