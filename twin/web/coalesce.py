"""Latest-value slots: what a slow websocket client holds instead of a queue."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

Flush = Callable[[list[tuple[str, Any]]], Awaitable[None]]
_GONE = object()


class Coalescer:
    """Latest-value slots, one per key, flushed at most once per ``min_interval_s`` each.

    ``put`` replaces a slot's value (counted in ``superseded``); ``run`` is the flushing task:
    it hands every due ``(key, value)`` to ``flush`` in one call. Memory is one value per key,
    whatever the rate of ``put`` or the speed of ``flush``.
    """

    def __init__(self, flush: Flush, min_interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not min_interval_s >= 0:
            raise ValueError(f"min_interval_s must be >= 0, got {min_interval_s!r}")
        self._flush = flush
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._slots: dict[str, Any] = {}
        self._last: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self.flushed = 0
        self.superseded = 0

    @property
    def pending(self) -> int:
        return len(self._slots)

    def put(self, key: str, value: Any) -> None:
        if key in self._slots:
            self.superseded += 1
        self._slots[key] = value
        self._wake.set()

    def discard(self, key: str) -> None:
        self._slots.pop(key, None)
        self._last.pop(key, None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                now = self._clock()
                due = [k for k in self._slots
                       if now - self._last.get(k, -math.inf) >= self.min_interval_s]
                batch: list[tuple[str, Any]] = []
                for key in due:
                    value = self._slots.pop(key, _GONE)
                    if value is not _GONE:       # else discarded while a flush awaited
                        self._last[key] = now
                        batch.append((key, value))
                if batch:
                    # one flush (one websocket frame) for everything due: a syscall per
                    # message would make the loop queue for the GIL behind a busy fleet
                    await self._flush(batch)
                    self.flushed += len(batch)
                if self._slots:
                    soonest = min(self._last.get(k, -math.inf) for k in self._slots)
                    wait = soonest + self.min_interval_s - self._clock()
                    if self._timer is not None:
                        self._timer.cancel()
                    self._timer = loop.call_later(max(wait, 0.0), self._wake.set)
        finally:
            if self._timer is not None:
                self._timer.cancel()
