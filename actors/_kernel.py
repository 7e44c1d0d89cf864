"""The lightweight actor kernel (DESIGN decision 1).

Hundreds of thousands of actors live in one shard process. Each has its own mailbox (created
only while messages wait, so an idle actor costs no deque), handles one message at a time and
owns its state. A kernel is single-threaded: whoever drives it (the shard host) calls
:meth:`Kernel.run` and :meth:`Kernel.advance`; nothing else touches its actors.

Failure: an exception raised by a handler suspends the actor and is handed to its supervisor
(any object with ``child_failed``); the kernel itself never dies of an actor's error.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

RUNNING: Final = 0
SUSPENDED: Final = 1   # restarting: messages wait in the mailbox
STOPPED: Final = 2     # quarantined or removed: messages are refused


class FailureHandler(Protocol):
    def child_failed(self, child: Any, message: Any, error: BaseException) -> None: ...


class Actor:
    """Base of every kernel actor. Subclasses implement :meth:`receive`."""

    __slots__ = ("_mailbox", "status", "supervisor")

    def __init__(self) -> None:
        self._mailbox: deque[Any] | None = None
        self.status: int = RUNNING
        self.supervisor: FailureHandler | None = None

    def receive(self, message: Any) -> Any:
        raise TypeError(f"{type(self).__name__} does not handle {type(message).__name__}")

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def pending(self) -> int:
        return 0 if self._mailbox is None else len(self._mailbox)


class Delivery:
    """A reply of :meth:`Kernel.deliver` when the handler did not run at once."""

    __slots__ = ("label",)

    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return self.label


DEFERRED: Final = Delivery("DEFERRED")   # waiting in the mailbox of a suspended actor
REFUSED: Final = Delivery("REFUSED")     # the actor is stopped


class Kernel:
    """Run queue, mailboxes and timers of one shard."""

    def __init__(self) -> None:
        self._runnable: deque[Actor] = deque()
        self.timers = Timers()
        self.failures = 0

    # -- messaging ------------------------------------------------------------------------

    def tell(self, actor: Actor, message: Any) -> bool:
        """Queue ``message`` for ``actor``; it runs at the next :meth:`run`. A stopped actor
        refuses mail (returns ``False``)."""
        if actor.status == STOPPED:
            return False
        mailbox = actor._mailbox
        if mailbox is None:
            actor._mailbox = deque((message,))
            if actor.status == RUNNING:
                self._runnable.append(actor)
        else:
            mailbox.append(message)
        return True

    def deliver(self, actor: Actor, message: Any,
                handler: Callable[[Any, Any], Any] | None = None) -> Any:
        """Handle ``message`` now if ``actor`` is idle and running (the hot path for samples
        from outside the kernel: no mailbox hop), else queue it and return ``DEFERRED``.

        Only the shard's dispatch loop calls this, never a handler, so handlers do not nest.
        ``handler`` (an unbound method, e.g. ``AssetActor.on_sample``) skips ``receive``'s
        dispatch on the message type when the caller already knows it.
        """
        if actor._mailbox is None and actor.status == RUNNING:
            try:
                if handler is not None:
                    return handler(actor, message)
                return actor.receive(message)
            except Exception as error:
                self._failed(actor, message, error)
                return error
        if self.tell(actor, message):
            return DEFERRED
        return REFUSED

    def run(self) -> int:
        """Process queued messages until every mailbox is empty or its actor suspended."""
        handled = 0
        runnable = self._runnable
        while runnable:
            actor = runnable.popleft()
            mailbox = actor._mailbox
            while mailbox and actor.status == RUNNING:
                message = mailbox.popleft()
                handled += 1
                try:
                    actor.receive(message)
                except Exception as error:
                    self._failed(actor, message, error)
            if actor.status == STOPPED or not mailbox:
                actor._mailbox = None
        return handled

    def suspend(self, actor: Actor) -> None:
        if actor.status == RUNNING:
            actor.status = SUSPENDED

    def resume(self, actor: Actor) -> None:
        """Let a suspended actor run again; its waiting messages are scheduled."""
        if actor.status == SUSPENDED:
            actor.status = RUNNING
            if actor._mailbox:
                self._runnable.append(actor)

    def stop(self, actor: Actor) -> int:
        """Stop ``actor`` for good; returns how many waiting messages were dropped."""
        dropped = actor.pending
        actor.status = STOPPED
        actor._mailbox = None
        return dropped

    def restart_running(self, actor: Actor) -> None:
        """Bring a stopped actor back (an operator released it from quarantine)."""
        actor.status = RUNNING

    def _failed(self, actor: Actor, message: Any, error: BaseException) -> None:
        self.failures += 1
        if actor.status == RUNNING:
            actor.status = SUSPENDED
        supervisor = actor.supervisor
        if supervisor is None:
            raise RuntimeError(f"unsupervised actor {actor.name} failed") from error
        supervisor.child_failed(actor, message, error)

    # -- time -----------------------------------------------------------------------------

    def advance(self, now: float) -> int:
        """Fire every timer due at ``now`` and run what they queued."""
        fired = self.timers.fire_due(now)
        self.run()
        return fired


class Timers:
    """One-shot timers on a heap, for rare events (restart backoff, scheduled work).

    Per-asset liveness does not use these: see :class:`DeadlineWheel`.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = itertools.count()
        self._live: set[int] = set()      # handles not yet fired or cancelled

    def call_at(self, when: float, callback: Callable[[float], None]) -> int:
        handle = next(self._seq)
        heapq.heappush(self._heap, (when, handle, callback))
        self._live.add(handle)
        return handle

    def cancel(self, handle: int) -> None:
        """Forget a timer; cancelling one that fired (or was cancelled) changes nothing."""
        self._live.discard(handle)

    def next_due(self) -> float | None:
        heap = self._heap
        while heap and heap[0][1] not in self._live:    # drop cancelled heads
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def fire_due(self, now: float) -> int:
        fired = 0
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, handle, callback = heapq.heappop(heap)
            if handle not in self._live:
                continue
            self._live.discard(handle)
            callback(now)
            fired += 1
        return fired

    def __len__(self) -> int:
        return len(self._live)


class DeadlineWheel:
    """Liveness deadlines for very many actors at O(1) per sample.

    Each entry is an object with a ``deadline`` (a float it keeps up to date itself) and an
    ``armed`` flag. A sample only moves the deadline; the entry stays in the bucket it was
    armed in. When that bucket comes due, each entry is checked against its *current*
    deadline: due ones fire, the rest are re-armed once. So the cost per sample is one
    attribute write, and each actor is re-armed at most once per timeout period, whatever the
    fleet's size. Buckets are ``resolution`` seconds wide; firing is exact to the deadline
    (an entry due later in the current bucket waits for a later ``advance``).
    """

    def __init__(self, on_expired: Callable[[Any, float], None], resolution: float = 1.0) -> None:
        self._on_expired = on_expired
        self._resolution = resolution
        self._buckets: dict[int, list[Any]] = {}
        self._keys: list[int] = []          # heap of bucket keys; few, not one per actor
        self.arms = 0                       # bucket insertions so far (a cost measure)
        self.fired = 0

    def arm(self, entry: Any) -> None:
        key = int(entry.deadline // self._resolution)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [entry]
            heapq.heappush(self._keys, key)
        else:
            bucket.append(entry)
        entry.armed = True
        self.arms += 1

    def advance(self, now: float) -> int:
        """Fire every entry whose deadline is at or before ``now``; returns how many."""
        fired = 0
        current = int(now // self._resolution)
        keys, buckets = self._keys, self._buckets
        while keys and keys[0] <= current:
            key = heapq.heappop(keys)
            bucket = buckets.pop(key)
            for entry in bucket:
                if not entry.armed:
                    continue
                entry.armed = False
                if entry.deadline <= now:
                    fired += 1
                    self.fired += 1
                    self._on_expired(entry, now)
                else:
                    self.arm(entry)       # seen since: re-arm at its current deadline
            if key == current:
                break                     # re-armed entries of this bucket wait for later
        return fired

    def disarm(self, entry: Any) -> None:
        """Forget ``entry`` (it is skipped when its bucket comes due)."""
        entry.armed = False

    def next_due(self) -> float | None:
        return self._keys[0] * self._resolution if self._keys else None

    @property
    def buckets(self) -> int:
        return len(self._buckets)
