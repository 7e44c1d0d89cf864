"""What a simulation run is asked to do, and the parsers for its command-line values.

Every parser raises :class:`SimConfigError` (a :class:`twin.TwinError`, so ``twin sim``
prints it and exits 2) with a message that names the option and the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from twin import TwinError

if TYPE_CHECKING:
    from sim.schedule import ScheduledDispatch
from twin.fleetgen import DEFAULT_REPORT_EVERY, KINDS

START = 1767225600.0     # 2026-01-01T00:00:00Z: every run starts here, so runs repeat exactly

DEFAULT_MIX: Mapping[str, float] = MappingProxyType(
    {"turbine": 0.5, "battery": 0.3, "charger": 0.2})
# a device reports between periodic reports when a value moved by more than this fraction of
# its rating (kW) since its last report
DEFAULT_DEADBAND: Mapping[str, float] = MappingProxyType(
    {"turbine": 0.02, "battery": 0.02, "charger": 0.05})


class SimConfigError(TwinError, ValueError):
    """A simulation option, or a faults file, has a value that cannot be used."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulation run. ``speed`` is ``None`` for as fast as possible (virtual time)."""

    assets: int = 2000
    fleet_path: str | None = None
    owners: int = 3
    regions: int = 8
    sites: int | None = None             # None: about one site per 10 assets
    mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    duration_s: float = 7200.0
    speed: float | None = None
    seed: int = 7
    step_s: float = 10.0
    batch_size: int = 2000
    report_every: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_REPORT_EVERY))
    deadband: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_DEADBAND))
    store: str | None = None
    # fleet dispatches to start (sim.schedule); None: the default schedule, (): none
    dispatches: tuple[ScheduledDispatch, ...] | None = None
    # how long a battery may stay off its setpoint before the runtime finds it not following;
    # None: the kind's dead time + settle time + one step (devices report once a step)
    follow_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.fleet_path is None and self.assets < 1:
            raise SimConfigError(f"--assets: expected at least 1 asset, got {self.assets}")
        for name in ("owners", "regions"):
            if getattr(self, name) < 1:
                raise SimConfigError(f"--{name}: expected at least 1, got {getattr(self, name)}")
        if self.sites is not None and self.sites < 1:
            raise SimConfigError(f"--sites: expected at least 1, got {self.sites}")
        if not 1.0 <= self.step_s <= 20.0:
            # crash loops are predicted step by step: a restart backoff (<= 1 s) must end within
            # one step, and three steps within the restart window (60 s)
            raise SimConfigError(f"--step: expected 1 to 20 seconds, got {self.step_s:g}")
        if self.duration_s < self.step_s:
            raise SimConfigError(f"--duration: expected at least one step ({self.step_s:g} s), "
                                 f"got {self.duration_s:g} s")
        if self.batch_size < 1:
            raise SimConfigError(f"--batch: expected at least 1, got {self.batch_size}")
        if self.follow_timeout_s is not None and not self.follow_timeout_s > 0:
            raise SimConfigError(f"follow_timeout_s: expected a positive number of seconds, "
                                 f"got {self.follow_timeout_s!r}")
        if self.speed is not None and not self.speed > 0:
            raise SimConfigError(f"--speed: expected a positive factor or 'max', got {self.speed}")

    @property
    def steps(self) -> int:
        return math.ceil(self.duration_s / self.step_s)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_UNIT_S = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, option: str = "--duration") -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1.5d`` → seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise SimConfigError(f"{option}: {text!r} is not a duration (examples: 90s, 15m, 2h, 1d)")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise SimConfigError(f"{option}: expected a positive duration, got {text!r}")
    return seconds


def parse_speed(text: str) -> float | None:
    """``max`` → ``None`` (virtual time, as fast as possible); ``60`` or ``60x`` → 60.0."""
    if text.strip().lower() == "max":
        return None
    try:
        speed = float(text.strip().rstrip("xX"))
    except ValueError:
        raise SimConfigError(f"--speed: {text!r} is neither a factor (e.g. 60) nor 'max'"
                             ) from None
    if not speed > 0 or math.isinf(speed):
        raise SimConfigError(f"--speed: expected a positive finite factor, got {text!r}")
    return speed


def parse_kind_values(text: str, option: str, *, positive: bool = True) -> dict[str, float]:
    """``turbine=0.5,battery=0.3`` → ``{"turbine": 0.5, "battery": 0.3}`` (known kinds only)."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SimConfigError(f"{option}: {part.strip()!r} is not kind=value "
                                 f"(example: turbine=0.5,battery=0.3,charger=0.2)")
        if name not in KINDS:
            raise SimConfigError(f"{option}: unknown kind {name!r} (valid: {', '.join(KINDS)})")
        try:
            number = float(value)
        except ValueError:
            raise SimConfigError(f"{option}: {name}={value.strip()!r} is not a number") from None
        if not math.isfinite(number) or number < 0 or (positive and number == 0):
            raise SimConfigError(f"{option}: {name}={value.strip()} must be a "
                                 f"{'positive' if positive else 'non-negative'} number")
        if name in out:
            raise SimConfigError(f"{option}: kind {name!r} is given twice")
        out[name] = number
    return out


def parse_mix(text: str) -> dict[str, float]:
    """Kind shares that need not sum to 1 (they are normalized); kinds left out get none."""
    shares = parse_kind_values(text, "--mix", positive=False)
    total = sum(shares.values())
    if total <= 0:
        raise SimConfigError(f"--mix: {text!r} gives no kind a share above 0")
    return {kind: shares[kind] / total for kind in KINDS if shares.get(kind, 0.0) > 0}
