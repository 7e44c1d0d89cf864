"""Device physics: what each simulated device really does, step by step.

- Turbines turn a site's wind (a smooth, mean-reverting field shared by the site, plus a small
  per-turbine gust term) into power through a power curve capped at the rating.
- Batteries follow the setpoints the runtime sends them as a first-order-plus-dead-time
  response and integrate power into stored energy, within their capacity and power limits.
- Chargers serve sessions that arrive at random, draw up to their rating (and the car's limit),
  and end when the session's energy is delivered.

Units are the runtime's: kW, kWh, seconds; power is positive when delivered to the grid.
"""

from __future__ import annotations

import math
import random
from collections import deque

CUT_IN_MS = 3.0
RATED_MS = 12.0
CUT_OUT_MS = 25.0
MAX_WIND_MS = 40.0
# a battery's response to a new setpoint, drawn per device: well inside the battery kind's
# declared dead time (1 s) and settle time (9 s), so a battery that follows is seen to
DEAD_TIME_S = (0.1, 0.9)
TIME_CONSTANT_S = (0.3, 1.8)      # within 2 % of a full swing after four of them


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
    """A battery and its inverter: power follows the setpoint as a first-order-plus-dead-time
    response, stored energy integrates power within ``0..capacity``.

    A setpoint received at ``at`` (:meth:`receive`) is what the battery reports as
    ``setpoint_kw`` from then on; its power starts moving ``dead_time_s`` later and closes the
    gap with time constant ``time_constant_s``. The target is clamped to ``±rated``; an empty
    battery delivers nothing and a full one takes nothing (its power drops to what the stored
    energy allows). A setpoint's lease ends on the device itself at ``expires_at``: it goes
    back to idle (0 kW), as IEEE 2030.5's default control does, so a battery cut off from its
    controller never stays at an old setpoint. Between ``ignore_from`` and ``ignore_until``
    it acknowledges setpoints (and reports them) but its power does not follow: a local
    override, a stuck inverter. From ``ignore_until`` on it takes the setpoint then standing.

    ``t`` is the battery's time; :meth:`step` integrates from ``t`` to ``t + dt``, taking the
    setpoints received meanwhile in order (times are exact, not rounded to the step).
    """

    __slots__ = ("capacity_kwh", "dead_time_s", "energy_kwh", "ignore_from",
                 "ignore_until", "inbox", "lease_end", "limited", "pending", "power_kw",
                 "rated_kw", "resumed", "setpoint_kw", "t", "target_kw", "time_constant_s")

    def __init__(self, rated_kw: float, capacity_kwh: float, soc: float, *,
                 dead_time_s: float = 0.0, time_constant_s: float = 0.0, t: float = 0.0
                 ) -> None:
        self.rated_kw = rated_kw
        self.capacity_kwh = capacity_kwh
        self.energy_kwh = capacity_kwh * min(1.0, max(0.0, soc))
        self.dead_time_s = dead_time_s
        self.time_constant_s = time_constant_s
        self.t = t                      # the time of power_kw and energy_kwh
        self.setpoint_kw = 0.0          # the setpoint received last (reported)
        self.target_kw = 0.0            # the setpoint the power is moving to (after the dead time)
        self.power_kw = 0.0
        self.lease_end = math.inf
        self.ignore_from = math.inf
        self.ignore_until = math.inf
        self.resumed = False            # the end of the ignore window was handled
        self.limited = False            # the stored energy (or room) cut the power last step
        self.inbox: deque[tuple[float, float, float | None]] = deque()
        self.pending: deque[tuple[float, float]] = deque()    # (effective at, target)

    def receive(self, at: float, setpoint_kw: float, expires_at: float | None = None) -> None:
        """A setpoint arrives at time ``at`` (not before the battery's time ``t``)."""
        self.inbox.append((max(at, self.t), setpoint_kw, expires_at))

    def ignores(self, at: float) -> bool:
        return self.ignore_from <= at < self.ignore_until

    def step(self, dt: float) -> None:
        """Integrate to ``t + dt``. Only a new target changes the dynamics, so the power is
        integrated piecewise between target changes; setpoints received, leases ending and
        an ignore window ending only schedule them (after the dead time)."""
        end = self.t + dt
        while True:
            at = self._next_event(end)
            if at is None:
                break
            if self._schedule(at):
                continue
            target = self.pending.popleft()[1]
            self._evolve(at - self.t)
            self.t = at
            self.target_kw = min(self.rated_kw, max(-self.rated_kw, target))
        self._evolve(end - self.t)
        self.t = end

    def _next_event(self, end: float) -> float | None:
        at = math.inf
        if self.inbox:
            at = self.inbox[0][0]
        if self.pending:
            at = min(at, self.pending[0][0])
        at = min(at, self.lease_end)
        if not self.resumed:
            at = min(at, self.ignore_until)
        return at if at <= end else None

    def _schedule(self, at: float) -> bool:
        """Handle what is due at ``at`` besides targets: setpoints received, a lease ending,
        the end of an ignore window (in that order). False when only a target is left."""
        if self.inbox and self.inbox[0][0] <= at:
            received, setpoint, expires = self.inbox.popleft()
            self.setpoint_kw = setpoint
            self.lease_end = math.inf if expires is None else max(expires, received)
            if not self.ignores(received):
                self._aim(received + self.dead_time_s, setpoint)
            return True
        if self.lease_end <= at:
            self.lease_end = math.inf
            self.setpoint_kw = 0.0
            if not self.ignores(at):
                self._aim(at + self.dead_time_s, 0.0)
            return True
        if not self.resumed and self.ignore_until <= at:
            self.resumed = True
            self._aim(at + self.dead_time_s, self.setpoint_kw)
            return True
        return False

    def _aim(self, effective: float, target: float) -> None:
        """Move to ``target`` from ``effective`` on, unless already headed there (a lease
        renewed with the same setpoint changes nothing)."""
        last = self.pending[-1][1] if self.pending else self.target_kw
        if target != last:
            self.pending.append((effective, target))

    def _evolve(self, span: float) -> None:
        """Power toward the target (exact exponential), energy by its integral, in slices of
        at most a second while the power moves, so the stored energy's limits bite in time."""
        tau = self.time_constant_s
        while span > 1e-9:
            u, p = self.target_kw, self.power_kw
            if (u > 0 and self.energy_kwh <= 0.0) or (u < 0 and
                                                      self.energy_kwh >= self.capacity_kwh):
                self.power_kw, self.limited = 0.0, True     # empty (full): nothing to give
                return
            moving = tau > 0 and abs(p - u) > 1e-6 * max(1.0, self.rated_kw)
            h = min(span, 1.0) if moving else span
            if moving:
                decay = math.exp(-h / tau)
                end_kw = u + (p - u) * decay
                kwh = (u * h + (p - u) * tau * (1.0 - decay)) / 3600.0
            else:
                end_kw, kwh = u, u * h / 3600.0
            self.limited = False
            if kwh > self.energy_kwh:                      # runs empty: what is left, then 0
                end_kw, kwh = min(end_kw, self.energy_kwh * 3600.0 / h), self.energy_kwh
                self.limited = True
            room = self.capacity_kwh - self.energy_kwh
            if -kwh > room:                                # full: the room left, then 0
                end_kw, kwh = max(end_kw, -room * 3600.0 / h), -room
                self.limited = True
            self.power_kw = end_kw
            self.energy_kwh = min(self.capacity_kwh, max(0.0, self.energy_kwh - kwh))
            span -= h

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
