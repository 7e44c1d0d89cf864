"""Roll-up actors (DESIGN decision 2).

Protocol
--------
``LeafSummary``   a leaf tally's whole current state, versioned: its rows per kind and, when it
                  changed, its set of missing asset ids. Sent upward, never a delta.
``RemoveChild``   a child left this group (the model moved it); forget its contribution.
``Flush``         (to self) send the coalesced summary upward once per round of messages.

A :class:`LeafTally` is kept by a shard for each site (and for each extra group's directly
listed assets on that shard); asset actors adjust it in place, in the shard's own thread.
A :class:`GroupActor` sits above: it *replaces* a child's previous summary and adjusts its
totals, so a lost or duplicated summary cannot corrupt a total and a re-send converges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors._kernel import Actor, Kernel
from twin.core.rollup import ROW_CAPACITY_W, ROW_ONLINE, ROW_POWER_W, ROW_WIDTH, Rollup, Row


@dataclass(frozen=True, slots=True)
class LeafSummary:
    key: str
    version: int
    rows: dict[str, Row]
    missing: tuple[tuple[str, frozenset[str] | None], ...]   # (leaf key, ids | None = gone)


@dataclass(frozen=True, slots=True)
class RemoveChild:
    key: str


@dataclass(frozen=True, slots=True)
class Flush:
    full: bool = False   # also re-send every missing set (after a move, or periodically)


class LeafTally:
    """Per-kind counts of one leaf's assets, adjusted in place by its asset actors."""

    __slots__ = ("dirty", "key", "missing", "missing_dirty", "rows", "sink", "version")

    def __init__(self, key: str, sink: list[LeafTally]) -> None:
        self.key = key
        self.rows: dict[str, list[int]] = {}
        self.missing: set[str] = set()
        self.dirty = False
        self.missing_dirty = False
        self.version = 0
        self.sink = sink            # the shard's list of leaves changed since the last flush

    def _row(self, kind: str) -> list[int]:
        row = self.rows.get(kind)
        if row is None:
            row = self.rows[kind] = [0] * ROW_WIDTH
        return row

    def mark(self) -> None:
        if not self.dirty:
            self.dirty = True
            self.sink.append(self)

    def add(self, kind: str, asset_id: str, state: int, power_w: int, capacity_w: int) -> None:
        row = self._row(kind)
        row[state] += 1
        row[ROW_CAPACITY_W] += capacity_w
        if state == ROW_ONLINE:
            row[ROW_POWER_W] += power_w
        else:
            self.missing.add(asset_id)
            self.missing_dirty = True
        self.mark()

    def remove(self, kind: str, asset_id: str, state: int, power_w: int, capacity_w: int) -> None:
        row = self.rows[kind]
        row[state] -= 1
        row[ROW_CAPACITY_W] -= capacity_w
        if state == ROW_ONLINE:
            row[ROW_POWER_W] -= power_w
        elif asset_id in self.missing:
            self.missing.discard(asset_id)
            self.missing_dirty = True
        if not any(row):
            del self.rows[kind]
        self.mark()

    def transition(self, kind: str, asset_id: str, old: int, new: int, power_w: int) -> None:
        row = self.rows[kind]
        row[old] -= 1
        row[new] += 1
        if old == ROW_ONLINE:
            row[ROW_POWER_W] -= power_w
            self.missing.add(asset_id)
            self.missing_dirty = True
        elif new == ROW_ONLINE:
            row[ROW_POWER_W] += power_w
            self.missing.discard(asset_id)
            self.missing_dirty = True
        self.mark()

    def summary(self, full: bool = False) -> LeafSummary:
        """The whole current state; clears the dirty marks."""
        self.dirty = False
        self.version += 1
        missing: tuple[tuple[str, frozenset[str] | None], ...] = ()
        if self.missing_dirty or full:
            missing = ((self.key, frozenset(self.missing)),)
            self.missing_dirty = False
        return LeafSummary(self.key, self.version,
                           {kind: tuple(row) for kind, row in self.rows.items()},  # type: ignore[misc]
                           missing)


class GroupActor(Actor):
    """An owner, region, site or extra group above the leaves: keeps totals of its children's
    latest summaries, coalesces, and sends its own summary to its parents."""

    __slots__ = ("_flush_queued", "_full", "_kernel", "_leaf_of", "_on_change", "_pending_missing",
                 "_snapshot", "as_of", "child_rows", "child_versions", "key", "level",
                 "missing_parts", "not_following", "parents", "path", "rows", "version")

    def __init__(self, key: str, path: str, level: str, kernel: Kernel,
                 on_change: Callable[[GroupActor], None]) -> None:
        super().__init__()
        self.key = key
        self.path = path
        self.level = level
        self._kernel = kernel
        self._on_change = on_change
        self.parents: list[GroupActor] = []
        self.rows: dict[str, list[int]] = {}
        self.child_rows: dict[str, dict[str, Row]] = {}
        self.child_versions: dict[str, int] = {}
        self.missing_parts: dict[str, frozenset[str]] = {}    # leaf key → its missing ids
        self._leaf_of: dict[str, set[str]] = {}               # child key → leaf keys below it
        self._pending_missing: dict[str, frozenset[str] | None] = {}
        self._flush_queued = False
        self._full = False
        self._snapshot: Rollup | None = None
        self.version = 0
        self.as_of = 0.0
        self.not_following: set[str] = set()       # set by the control layer (facade side)

    @property
    def name(self) -> str:
        return f"group:{self.path}"

    def receive(self, message: Any) -> None:
        if isinstance(message, LeafSummary):
            self._on_summary(message)
        elif isinstance(message, Flush):
            self._on_flush(message)
        elif isinstance(message, RemoveChild):
            self._on_remove(message)
        else:
            super().receive(message)

    def _on_summary(self, summary: LeafSummary) -> None:
        if summary.version <= self.child_versions.get(summary.key, -1):
            return                                  # an old or repeated summary: no news
        self.child_versions[summary.key] = summary.version
        previous = self.child_rows.get(summary.key)
        if previous != summary.rows:
            if previous:
                self._add_rows(previous, -1)
            self._add_rows(summary.rows, 1)
            self.child_rows[summary.key] = summary.rows
            self._changed()
        leaves = self._leaf_of.setdefault(summary.key, set())
        for leaf, ids in summary.missing:
            if ids is None:
                leaves.discard(leaf)
                if self.missing_parts.pop(leaf, None) is not None:
                    self._pending_missing[leaf] = None
                    self._changed()
            elif self.missing_parts.get(leaf) != ids:
                leaves.add(leaf)
                self.missing_parts[leaf] = ids
                self._pending_missing[leaf] = ids
                self._changed()

    def _on_remove(self, message: RemoveChild) -> None:
        rows = self.child_rows.pop(message.key, None)
        self.child_versions.pop(message.key, None)
        if rows:
            self._add_rows(rows, -1)
        for leaf in self._leaf_of.pop(message.key, ()):
            self.missing_parts.pop(leaf, None)
            self._pending_missing[leaf] = None
        self._changed()

    def _add_rows(self, rows: dict[str, Row], sign: int) -> None:
        for kind, row in rows.items():
            mine = self.rows.get(kind)
            if mine is None:
                mine = self.rows[kind] = [0] * ROW_WIDTH
            for i in range(ROW_WIDTH):
                mine[i] += sign * row[i]
            if not any(mine):
                del self.rows[kind]

    def _changed(self) -> None:
        self._snapshot = None
        if not self._flush_queued:
            self._flush_queued = True
            self._kernel.tell(self, Flush())

    def request_full_flush(self) -> None:
        """Re-send everything (after a move, or as the periodic convergence re-send)."""
        self._full = True
        self._changed()

    def _on_flush(self, message: Flush) -> None:
        self._flush_queued = False
        self.version += 1
        full = self._full or message.full
        self._full = False
        missing: tuple[tuple[str, frozenset[str] | None], ...]
        if full:
            missing = tuple(self.missing_parts.items())
        else:
            missing = tuple(self._pending_missing.items())
        self._pending_missing = {}
        summary = LeafSummary(self.key, self.version,
                              {kind: tuple(row) for kind, row in self.rows.items()},  # type: ignore[misc]
                              missing)
        for parent in self.parents:
            self._kernel.tell(parent, summary)
        self._on_change(self)

    def snapshot(self) -> Rollup:
        snap = self._snapshot
        if snap is None:
            snap = self._snapshot = Rollup(self.path, self.level, self.rows, self.version,
                                           self.as_of, self.missing_parts.values(),
                                           self.not_following)
        return snap
