"""Sparkline history: roll-ups sampled on the fleet's clock into bounded ring buffers.

A point is the state of a node at the end of one ``step_s`` bucket of *fleet* time (so a
virtual clock works: a simulated hour fills an hour of sparkline). Points are written when a
roll-up changes; a quiet node keeps its last value, so buckets skipped in between are filled
with it, both when the next change comes and when the series is read. Each node keeps at most
``points`` buckets: memory is bounded by the number of nodes, whatever the run time.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import NamedTuple

from twin.core.rollup import Rollup


class Point(NamedTuple):
    """One bucket: its start (fleet time), power over the reporting assets, counts."""

    t: float
    power_kw: float
    reporting: int
    expected: int


class History:
    """Per-path ring buffers of :class:`Point`; safe to write from the fleet's thread and
    read from the web server's loop."""

    def __init__(self, step_s: float = 10.0, points: int = 60) -> None:
        if not (isinstance(step_s, int | float) and math.isfinite(step_s) and step_s > 0):
            raise ValueError(f"history step_s must be a positive number of seconds, got {step_s!r}")
        if not (isinstance(points, int) and points >= 2):
            raise ValueError(f"history points must be an integer of at least 2, got {points!r}")
        self.step_s = float(step_s)
        self.points = points
        self._series: dict[str, deque[Point]] = {}
        self._lock = threading.Lock()

    def bucket(self, t: float) -> float:
        return math.floor(t / self.step_s) * self.step_s   # index * step_s

    def record(self, rollup: Rollup, at: float | None = None) -> None:
        """Keep ``rollup`` as its node's value for the bucket of ``at`` (default: its
        ``as_of``, the fleet time of its last change)."""
        when = rollup.as_of if at is None else at
        self.record_values(rollup.path, when, rollup.power_kw, rollup.reporting,
                           rollup.expected)

    def record_values(self, path: str, t: float, power_kw: float, reporting: int,
                      expected: int) -> None:
        start = self.bucket(t)
        point = Point(start, power_kw, reporting, expected)
        with self._lock:
            series = self._series.get(path)
            if series is None:
                series = self._series[path] = deque(maxlen=self.points)
            if series and series[-1].t == start:
                series[-1] = point                  # the latest value of a bucket wins
            elif series and series[-1].t > start:
                return                              # older than what we have: history is kept
            else:                                   # by the store, not by a sparkline
                self._fill(series, start)
                series.append(point)

    def series(self, path: str, now: float) -> list[Point]:
        """The node's points, oldest first, carried forward to the bucket of ``now``."""
        with self._lock:
            kept = self._series.get(path)
            if not kept:
                return []
            series = deque(kept, maxlen=self.points)
        end = self.bucket(now)
        if series[-1].t < end:
            self._fill(series, end)
            series.append(series[-1]._replace(t=end))
        return list(series)

    def paths(self) -> list[str]:
        with self._lock:
            return list(self._series)

    def forget(self, path: str) -> None:
        with self._lock:
            self._series.pop(path, None)

    def _fill(self, series: deque[Point], before: float) -> None:
        """Carry the last value forward through the empty buckets before ``before`` (at most
        a buffer's worth: older ones would fall out anyway)."""
        if not series:
            return
        last = series[-1]
        # bucket starts are index * step_s, computed the same way everywhere, so they compare
        end = round(before / self.step_s)
        start = max(round(last.t / self.step_s) + 1, end - self.points)
        for index in range(start, end):
            series.append(last._replace(t=index * self.step_s))
