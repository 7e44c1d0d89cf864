"""Roll-up values: what a group of assets produces and how many of them we can see.

Counts come from the model's *expected* membership, so a silent asset is counted (and named)
as missing instead of vanishing from a group-by. Power is kept in integer watts inside the
runtime, so totals are exact sums, never drifting floats.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final

from twin.core.states import OFFLINE, ONLINE, QUARANTINED, UNKNOWN

# A row of counts for one kind: the counted states' codes index it directly (an asset actor
# adds 1 at ``row[state]``), then power and capacity follow the last counted state.
ROW_UNKNOWN: Final = UNKNOWN
ROW_ONLINE: Final = ONLINE
ROW_OFFLINE: Final = OFFLINE
ROW_QUARANTINED: Final = QUARANTINED
ROW_POWER_W: Final = max(ROW_UNKNOWN, ROW_ONLINE, ROW_OFFLINE, ROW_QUARANTINED) + 1
ROW_CAPACITY_W: Final = ROW_POWER_W + 1
ROW_WIDTH: Final = ROW_CAPACITY_W + 1

Row = tuple[int, int, int, int, int, int]


class KindRollup:
    """Counts and power for the assets of one kind (or all kinds) in a group."""

    __slots__ = ("capacity_kw", "expected", "offline", "power_kw", "quarantined", "reporting",
                 "unknown")

    def __init__(self, row: Row | list[int]) -> None:
        self.unknown = row[ROW_UNKNOWN]
        self.reporting = row[ROW_ONLINE]
        self.offline = row[ROW_OFFLINE]
        self.quarantined = row[ROW_QUARANTINED]
        self.expected = self.unknown + self.reporting + self.offline + self.quarantined
        self.power_kw = row[ROW_POWER_W] / 1000.0
        self.capacity_kw = row[ROW_CAPACITY_W] / 1000.0

    def counts(self) -> dict[str, Any]:
        return {"expected": self.expected, "reporting": self.reporting, "offline": self.offline,
                "unknown": self.unknown, "quarantined": self.quarantined,
                "power_kw": self.power_kw, "capacity_kw": self.capacity_kw}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KindRollup) and self.counts() == other.counts()

    def __hash__(self) -> int:
        return hash(tuple(self.counts().values()))

    def __repr__(self) -> str:
        return (f"KindRollup({self.reporting}/{self.expected} reporting, "
                f"{self.power_kw:g} kW of {self.capacity_kw:g} kW)")


class Rollup(KindRollup):
    """A group's roll-up at one moment: an immutable snapshot.

    ``expected`` = ``reporting + offline + unknown + quarantined``. ``power_kw`` sums the
    reporting assets only; ``capacity_kw`` sums every expected asset's rating. ``missing``
    lists, sorted, the ids expected but not reporting; ``not_following`` those reporting but
    not following the setpoint they were given (see docs/control.md).
    """

    __slots__ = ("_missing", "_missing_parts", "as_of", "kinds", "level", "not_following",
                 "path", "version")

    def __init__(self, path: str, level: str, rows: Mapping[str, Row | list[int]], version: int,
                 as_of: float, missing_parts: Iterable[frozenset[str]],
                 not_following: Iterable[str] = ()) -> None:
        total = [0] * ROW_WIDTH
        for row in rows.values():
            for i in range(ROW_WIDTH):
                total[i] += row[i]
        super().__init__(total)
        self.path = path
        self.level = level
        self.version = version
        self.as_of = as_of
        self.kinds: Mapping[str, KindRollup] = MappingProxyType(
            {kind: KindRollup(row) for kind, row in sorted(rows.items())})
        self._missing_parts = tuple(missing_parts)
        self._missing: tuple[str, ...] | None = None
        self.not_following: tuple[str, ...] = tuple(sorted(not_following))

    @property
    def missing(self) -> tuple[str, ...]:
        """Sorted ids of expected assets that are not reporting (computed on first use)."""
        if self._missing is None:
            self._missing = tuple(sorted(set().union(*self._missing_parts)))
        return self._missing

    def to_dict(self, *, with_missing: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "level": self.level, "version": self.version,
                               "as_of": self.as_of, **self.counts(),
                               "kinds": {k: v.counts() for k, v in self.kinds.items()}}
        out["not_following"] = len(self.not_following)
        if with_missing:
            out["missing"] = list(self.missing)
            out["not_following_ids"] = list(self.not_following)
        return out

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Rollup) and self.path == other.path and
                self.counts() == other.counts() and dict(self.kinds) == dict(other.kinds) and
                self.missing == other.missing and self.not_following == other.not_following)

    def __hash__(self) -> int:
        return hash((self.path, self.version))

    def __str__(self) -> str:
        text = (f"{self.path}: {self.power_kw / 1000:.3f} MW now, {self.reporting} of "
                f"{self.expected} reporting")
        if self.expected != self.reporting:
            shown = ", ".join(self.missing[:5]) + (", ..." if len(self.missing) > 5 else "")
            text += f" (missing: {shown})"
        if self.not_following:
            text += (f", {len(self.not_following)} not following "
                     f"{'its' if len(self.not_following) == 1 else 'their'} setpoint")
        return text

    def __repr__(self) -> str:
        return (f"<Rollup {self.path} {self.reporting}/{self.expected} reporting, "
                f"{self.power_kw:g} kW>")
