"""Simulated devices: physics, a clock of their own, and how they report.

A device reads its sensors every step and reports when a value moved beyond its deadband or
when its periodic report is due, as real devices do. What it sends is stamped with its own
clock (which may be skewed and drift) and a sequence number. While cut off it keeps what it
would have sent in a bounded buffer when it will flush a late burst on reconnect.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from sim.config import START
from sim.physics import BatteryPhysics, ChargerPhysics, TurbinePhysics
from sim.truth import Episode, Expectation

Physics = TurbinePhysics | BatteryPhysics | ChargerPhysics


class Device:
    """One simulated device and the simulator's record of what the runtime knows of it."""

    __slots__ = (
        "buffer",
        "connected",
        "deadband_kw",
        "drift",
        "episodes",
        "expect",
        "id",
        "index",
        "kind",
        "last_crash",
        "last_report_t",
        "lost_report_at",
        "never_up",
        "offline_until",
        "offset_s",
        "period_s",
        "physics",
        "rated_kw",
        "sent_active",
        "sent_power",
        "sent_setpoint",
        "seq",
        "stuck_reading",
        "stuck_until",
        "timeout_s",
    )

    def __init__(self, index: int, asset_id: str, kind: str, physics: Physics, rated_kw: float,
                 period_s: float, timeout_s: float, deadband: float) -> None:
        self.index = index
        self.id = asset_id
        self.kind = kind
        self.physics = physics
        self.rated_kw = rated_kw
        self.period_s = period_s
        self.timeout_s = timeout_s
        self.deadband_kw = deadband * rated_kw
        self.offset_s = 0.0           # clock skew at START
        self.drift = 0.0              # seconds gained per second
        self.seq = 0
        self.never_up = False
        self.connected = True
        self.offline_until = math.inf
        self.buffer: deque[tuple[float, dict[str, Any]]] | None = None
        self.stuck_until = -math.inf
        self.stuck_reading: dict[str, Any] | None = None
        self.last_report_t = -math.inf
        self.lost_report_at = -math.inf   # a report lost on the way (dropout, bad value)
        self.sent_power = math.nan
        self.sent_setpoint = math.nan
        self.sent_active = False
        self.last_crash = -math.inf
        self.episodes: list[Episode] = []
        self.expect = Expectation()

    # -- readings ---------------------------------------------------------------------------

    def read(self, t: float) -> dict[str, Any]:
        """The sensor values now (frozen while the sensor is stuck)."""
        if t < self.stuck_until:
            if self.stuck_reading is None:
                self.stuck_reading = self._fresh()
            return dict(self.stuck_reading)
        self.stuck_reading = None
        return self._fresh()

    def _fresh(self) -> dict[str, Any]:
        p = self.physics
        if type(p) is TurbinePhysics:
            return {"power_kw": round(p.power_kw, 1), "wind_speed_ms": round(p.wind_ms, 2)}
        if type(p) is BatteryPhysics:
            return {"power_kw": round(p.power_kw, 3), "soc_pct": round(p.soc_pct, 2),
                    "energy_kwh": round(p.energy_kwh, 3), "setpoint_kw": p.setpoint_kw}
        assert type(p) is ChargerPhysics
        return {"power_kw": round(p.power_kw, 2) + 0.0, "session_active": p.active,
                "session_energy_kwh": round(p.delivered_kwh, 3)}

    def due(self, t: float) -> bool:
        """Report on change beyond the deadband, or when the periodic report is due (checked
        on the physics itself, so a device that stays quiet costs no reading)."""
        if t - self.last_report_t >= self.period_s:
            return True
        if t < self.stuck_until:
            return False                  # a stuck sensor's values never move
        p = self.physics
        if abs(p.power_kw - self.sent_power) > self.deadband_kw:
            return True
        if type(p) is BatteryPhysics:
            return p.setpoint_kw != self.sent_setpoint
        if type(p) is ChargerPhysics:
            return p.active != self.sent_active
        return False

    def note_report(self, t: float, reading: dict[str, Any]) -> None:
        self.last_report_t = t
        self.sent_power = reading["power_kw"]
        if self.kind == "battery":
            self.sent_setpoint = reading["setpoint_kw"]
        elif self.kind == "charger":
            self.sent_active = reading["session_active"]

    # -- clock and sequence ------------------------------------------------------------------

    def stamp(self, t: float) -> float:
        """Device time for true time ``t``: skewed and drifting clocks, to the millisecond."""
        if self.offset_s == 0.0 and self.drift == 0.0:
            return t
        return round(t + self.offset_s + self.drift * (t - START), 3)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # -- losses -----------------------------------------------------------------------------

    def may_lose(self, t: float) -> bool:
        """Whether a report at ``t`` may be lost (dropped, or a bad value) without the device
        looking silent for a whole offline timeout: its next periodic report, ``period_s``
        later, must still come before the timeout counted from its last accepted sample."""
        accepted_at = self.expect.accepted_at
        return accepted_at is not None and t + self.period_s - accepted_at < self.timeout_s

    @property
    def power_kw(self) -> float:
        return 0.0 if self.never_up else self.physics.power_kw
