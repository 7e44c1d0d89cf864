"""Samples, their data-quality outcomes, and the report ``Fleet.ingest`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final


class Sample:
    """One device reading: which asset, its device time (unix s), and its signal values.

    ``seq`` is the device's sequence number when it sends one (the wire format carries it).
    """

    __slots__ = ("asset_id", "seq", "signals", "ts")

    def __init__(self, asset_id: str, ts: float, signals: dict[str, Any],
                 seq: int | None = None) -> None:
        self.asset_id = asset_id
        self.ts = ts
        self.signals = signals
        self.seq = seq

    def __repr__(self) -> str:
        seq = "" if self.seq is None else f", seq={self.seq}"
        return f"Sample({self.asset_id!r}, ts={self.ts!r}, signals={self.signals!r}{seq})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        return (self.asset_id, self.ts, self.signals, self.seq) == (
            other.asset_id, other.ts, other.signals, other.seq)

    __hash__ = None  # type: ignore[assignment]  # mutable signals


# Outcome codes: small ints, so the hot path counts into a list.
ACCEPTED: Final = 0     # clean and newest: moves the asset's current state
DUPLICATE: Final = 1    # same asset and device time already seen
LATE: Final = 2         # older than the newest accepted sample: history only
FUTURE: Final = 3       # device time beyond now + allowed skew
STALE: Final = 4        # older than the retention horizon (a replay)
ANOMALOUS: Final = 5    # outside the kind's physical bounds, NaN or infinite
REJECTED: Final = 6     # malformed, unknown asset, wrong types, or its handler crashed
DEFERRED: Final = 7     # queued in the mailbox of an actor that is restarting
HELD_QUARANTINED: Final = 8  # its asset is quarantined: kept raw, not applied

OUTCOMES: Final = ("accepted", "duplicate", "late", "future", "stale", "anomalous", "rejected",
                   "deferred", "quarantined")


@dataclass(frozen=True, slots=True)
class SampleError:
    """Why sample ``index`` of a batch was rejected: the field, its value, the reason."""

    index: int
    asset_id: Any
    field: str
    value: Any
    reason: str

    def __str__(self) -> str:
        return (f"sample {self.index} (asset {self.asset_id!r}): {self.field}={self.value!r}: "
                f"{self.reason}")


@dataclass(slots=True)
class IngestReport:
    """Per-outcome counts for one ingested batch; they sum to the batch's size."""

    accepted: int = 0
    duplicate: int = 0
    late: int = 0
    future: int = 0
    stale: int = 0
    anomalous: int = 0
    rejected: int = 0
    deferred: int = 0
    quarantined: int = 0
    errors: list[SampleError] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts().values())

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in OUTCOMES}

    def add_counts(self, counts: list[int]) -> None:
        for code, n in enumerate(counts):
            if n:
                name = OUTCOMES[code]
                setattr(self, name, getattr(self, name) + n)

    def __str__(self) -> str:
        parts = [f"{n} {name}" for name, n in self.counts().items() if n]
        return ", ".join(parts) or "empty batch"
