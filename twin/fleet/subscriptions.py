"""Subscriptions to roll-ups: callbacks after every change, delivered in order.

A callback runs on the thread that caused the change, after that thread let go of the fleet's
other locks (a callback may call the fleet), before the call that caused it returns; one
delivery at a time, so a subscriber sees its roll-up's values in the order they were taken.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from twin.core.rollup import Rollup
from twin.fleet.core import FleetCore

log = structlog.get_logger("twin.fleet")

RollupCallback = Callable[[Rollup], None]


class Subscription:
    """A live subscription to one roll-up; ``cancel()`` ends it."""

    def __init__(self, subscriptions: Subscriptions, node_key: str, path: str,
                 callback: RollupCallback) -> None:
        self._subscriptions = subscriptions
        self.node_key = node_key
        self.path = path
        self.callback = callback
        self.active = True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self._subscriptions.remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class StreamSubscription:
    """A live subscription to a stream of events (command states, dispatch reports);
    ``cancel()`` ends it."""

    def __init__(self, cancel: Callable[[], None]) -> None:
        self._cancel = cancel
        self.active = True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self._cancel()

    def __enter__(self) -> StreamSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Subscriptions:
    """See the module docstring."""

    def __init__(self, core: FleetCore) -> None:
        self.core = core
        self._subs: dict[str, list[Subscription]] = {}

    def __len__(self) -> int:
        return sum(len(subs) for subs in self._subs.values())

    def add(self, path: str, callback: RollupCallback) -> Subscription:
        core = self.core
        with core.view_lock:
            core.check_open()
            node = core.tree.lookup(path)
            sub = Subscription(self, node.key, path, callback)
            self._subs.setdefault(node.key, []).append(sub)
            return sub

    def remove(self, sub: Subscription) -> None:
        with self.core.view_lock:
            subs = self._subs.get(sub.node_key, [])
            if sub in subs:
                subs.remove(sub)
            if not subs:
                self._subs.pop(sub.node_key, None)

    def deliver(self) -> None:
        """Call the subscribers of every roll-up that changed since the last delivery
        (with no other lock of the fleet held)."""
        core = self.core
        with core.deliver_lock:
            with core.view_lock:
                changed = core.tree.take_changed()
                if not self._subs:
                    return
                due: list[tuple[Subscription, Rollup]] = []
                for node in changed:
                    subs = self._subs.get(node.key)
                    if subs:
                        rollup = node.snapshot()
                        due.extend((sub, rollup) for sub in subs)
            for sub, rollup in due:
                if not sub.active:
                    continue
                try:
                    sub.callback(rollup)
                except Exception as error:
                    core.counters["callback_errors"] += 1
                    log.error("subscriber_failed", path=sub.path, reason=repr(error))
