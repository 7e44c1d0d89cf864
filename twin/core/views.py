"""What the facade hands out about single assets and commands."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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

    @property
    def age_s(self) -> float | None:
        """Seconds since the last valid sample arrived (``None`` if it never reported)."""
        return None if self.last_seen is None else self.as_of - self.last_seen

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "site": self.site, "state": self.state,
                "expected": dict(self.expected), "desired": dict(self.desired),
                "reported": dict(self.reported), "last_seen": self.last_seen,
                "last_sample_ts": self.last_sample_ts, "age_s": self.age_s,
                "quality": dict(self.quality), "restarts": self.restarts, "as_of": self.as_of}


@dataclass(frozen=True, slots=True)
class CommandReceipt:
    """A command the asset's actor accepted: the desired view it now holds."""

    asset_id: str
    desired: Mapping[str, Any]
    at: float
