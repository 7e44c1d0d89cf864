"""What the facade hands out about single assets and commands."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class AssetView:
    """One asset at one moment: its state and its three views kept apart.

    ``expected`` comes from the model (rating, capacity), ``desired`` from commands, and
    ``reported`` from the device's last accepted sample. ``last_seen`` is our clock when that
    sample arrived; ``last_sample_ts`` its device time.
    """

    id: str
    kind: str
    site: str
    state: str
    expected: Mapping[str, Any]
    desired: Mapping[str, Any]
    reported: Mapping[str, Any]
    last_seen: float | None
    last_sample_ts: float | None
    quality: Mapping[str, int]
    restarts: int
    as_of: float
    desired_version: int = 0              # of the asset's current command (0: never one)
    following: str | None = None          # converged, converging, not_following (or None)

    @property
    def age_s(self) -> float | None:
        """Seconds since the last valid sample arrived (``None`` if it never reported)."""
        return None if self.last_seen is None else self.as_of - self.last_seen

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "site": self.site, "state": self.state,
                "expected": dict(self.expected), "desired": dict(self.desired),
                "reported": dict(self.reported), "last_seen": self.last_seen,
                "last_sample_ts": self.last_sample_ts, "age_s": self.age_s,
                "quality": dict(self.quality), "restarts": self.restarts, "as_of": self.as_of,
                "desired_version": self.desired_version, "following": self.following}


@dataclass(frozen=True, slots=True)
class CommandReceipt:
    """A command the asset's actor accepted: the desired view it now holds, the command's id
    and the asset's desired version it set, and when its lease ends (``None``: it stands
    until superseded). ``state`` is live: where the command is now (docs/control.md)."""

    asset_id: str
    desired: Mapping[str, Any]
    at: float
    command_id: str = ""
    desired_version: int = 0
    expires_at: float | None = None
    _state_of: Callable[[str, int], str] | None = field(default=None, repr=False,
                                                         compare=False)

    @property
    def state(self) -> str:
        """sent, delivered, applied, not_followed, rejected, unacknowledged, superseded or
        expired."""
        if self._state_of is None:
            return "sent"
        return self._state_of(self.asset_id, self.desired_version)

    def to_dict(self) -> dict[str, Any]:
        return {"asset_id": self.asset_id, "desired": dict(self.desired), "at": self.at,
                "command_id": self.command_id, "desired_version": self.desired_version,
                "expires_at": self.expires_at, "state": self.state}
