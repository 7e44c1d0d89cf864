"""Time: every timer of the fleet fires from here, on a virtual clock or the real one.

With a ``VirtualClock`` nothing runs on its own: :meth:`Timers.advance` moves time, stopping
at every scheduled model change so timers and changes keep their order. With a real clock a
daemon ticker thread ticks every ``tick_interval_s``, so offline detection never waits for
the next API call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from twin.core.clock import VirtualClock
from twin.core.errors import FleetClosed
from twin.fleet.changes import ModelChanges
from twin.fleet.core import FleetCore
from twin.fleet.failover import Failover

log = structlog.get_logger("twin.fleet")


class Timers:
    """See the module docstring."""

    def __init__(self, core: FleetCore, changes: ModelChanges, failover: Failover,
                 control_tick: Callable[[float], None]) -> None:
        self.core = core
        self.changes = changes
        self.failover = failover
        self.control_tick = control_tick
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def advance(self, seconds: float) -> float:
        """Under the fleet lock: see :meth:`twin.Fleet.advance`."""
        clock = self.core.clock
        if not isinstance(clock, VirtualClock):
            raise TypeError("advance() needs a VirtualClock; the real clock runs on its own")
        if not seconds >= 0:
            raise ValueError(f"time only moves forward: advance({seconds!r})")
        target = clock.now() + seconds
        # stop at every scheduled model change, so timers and changes keep their order
        due = self.changes.next_due()
        while due is not None and due <= target:
            clock.jump_to(max(due, clock.now()))
            self.tick_at(clock.now())
            if self.changes.next_due() == due:
                break          # not applied: it waits until every shard is up again
            due = self.changes.next_due()
        clock.jump_to(target)
        self.tick_at(target)
        return target

    def tick_at(self, now: float) -> None:
        """Run every timer due at ``now`` (under the fleet lock)."""
        core = self.core
        if not core.hosting.embedded and not core.replaying:
            self.failover.watch(now)
        self.changes.fire_scheduled(now)
        core.tick_shards(now)
        if not core.replaying:
            self.control_tick(now)

    def start(self, interval: float, tick: Callable[[], None]) -> None:
        """Start the ticker thread calling ``tick`` (none on a VirtualClock)."""
        if isinstance(self.core.clock, VirtualClock):
            return
        self._ticker = threading.Thread(target=self._loop, args=(interval, tick),
                                        name="twin-ticker", daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join()

    def _loop(self, interval: float, tick: Callable[[], None]) -> None:
        while not self._stop.wait(interval):
            try:
                tick()
            except FleetClosed:
                return
            except Exception:
                log.exception("tick_failed")
