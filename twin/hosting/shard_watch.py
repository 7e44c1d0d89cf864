"""The facade's channels to its actor system on the multi-process bases: sends that cannot
block, and a watch on the shard hosts that waits behind nobody. A hosting module: with
:mod:`twin.hosting.system` and :mod:`twin.hosting.host_actors`, the only code that speaks Thespian.

Why sends do not use ``ActorSystem.tell`` (Thespian 4.0, TCP transport): ``tell`` returns
only once every message queued on its endpoint is acknowledged by its receiver. Thespian
keeps a connection open between messages; when a shard process is killed with bytes unread
on such a connection, its kernel answers with a reset, and the next send on the connection
fails with ``ECONNRESET``. The transport takes that for a passing error and tries again only
after ``TRANSMIT_RETRY_PERIOD`` (35 s) times the attempt, with no shorter pause, while a
*refused* connection is declared a dead target at once. So one kill in a dozen or so left the
facade inside ``tell`` for 35 s, holding the fleet's lock (issue 10, defect 2).

:func:`post` hands a message to the transport with a retry period of 50 ms and a deadline and
returns at once; the caller's ``listen`` moves it along, and its outcome comes back through a
callback. A send to a dead process is retried, refused and reported within one retry period.

:class:`ShardWatch` asks the fleet supervisor for every shard's state every 0.1 s, from a
thread and an endpoint (``ActorSystem.private()``) of its own: a dead shard is seen within
about 0.1 s of its supervisor hearing of it, whatever the facade's other threads are doing,
and a call waiting for it gives up at once (see ``Hosting._exchange``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import structlog
from thespian.actors import ActorAddress, ActorSystem
from thespian.system.transport import TransmitIntent

from twin.core.errors import TwinError
from twin.hosting.host_actors import ShardState, StatusReply, StatusRequest

log = structlog.get_logger("twin.hosting")

SEND_RETRY = timedelta(milliseconds=50)   # instead of Thespian's 35 s (see module doc)
WATCH_EVERY_S = 0.1                       # between two looks at the shard hosts' states
_SLICE_S = 0.05                           # longest listen between two checks of a waiter

Outcome = Callable[[str], None]           # called with the send's status ("+Sent", ...)


def post(system: ActorSystem, address: ActorAddress, message: Any, deadline_s: float,
         failed: Outcome, sent: Outcome | None = None) -> None:
    """Queue ``message`` for ``address`` on ``system``'s endpoint and return at once.

    The endpoint's next ``listen`` calls carry it out; ``failed`` (or ``sent``) is called
    from inside one of them with the outcome. A send not acknowledged within ``deadline_s``
    fails. Nothing here waits on the receiver.
    """
    def on_error(result: Any, _intent: Any) -> None:
        failed(str(result))

    def on_sent(result: Any, _intent: Any) -> None:
        if sent is not None:
            sent(str(result))

    # ActorSystem.tell has no way to pass a retry period or a deadline: its own transport does
    transport = system._systemBase.transport
    transport.scheduleTransmit(None, TransmitIntent(
        address, message, onSuccess=on_sent, onError=on_error,
        maxPeriod=timedelta(seconds=deadline_s), retryPeriod=SEND_RETRY))


class ShardWatch:
    """A second channel to the fleet supervisor, and a thread that polls it.

    ``states`` is the newest answer (empty before the first). ``on_change(states)``, once
    set, is called from the watch's thread whenever the answer differs from the last one it
    handled; it must not wait: it returns False when it could not handle the answer now (its
    fleet's lock was busy), and is called again after the next poll.
    """

    def __init__(self, system: ActorSystem, supervisor: ActorAddress, timeout_s: float,
                 closing: threading.Event | None = None) -> None:
        self._supervisor = supervisor
        # the fleet's close: a poll in flight gives up (its supervisor may be gone unheard)
        self._closing = closing or threading.Event()
        self._timeout_s = timeout_s
        self._private = system.private()
        self._channel: ActorSystem = self._private.__enter__()
        self._lock = threading.Lock()              # one user of the channel at a time
        self._next_id = 0
        self._stop = threading.Event()
        self.states: tuple[ShardState, ...] = ()
        self.on_change: Callable[[tuple[ShardState, ...]], bool] | None = None
        self._thread = threading.Thread(target=self._run, name="twin-shard-watch", daemon=True)
        self._thread.start()

    def poll(self) -> tuple[ShardState, ...]:
        """Every shard's state as the supervisor sees it now (a round trip)."""
        with self._lock:
            self._next_id += 1
            call_id = self._next_id
            failure: list[str] = []
            post(self._channel, self._supervisor, StatusRequest(call_id), self._timeout_s,
                 failure.append)
            deadline = time.monotonic() + self._timeout_s
            while not failure and not self._stop.is_set() and not self._closing.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                message = self._channel.listen(min(left, _SLICE_S * 2))
                if isinstance(message, StatusReply) and message.call_id == call_id:
                    self.states = message.shards
                    return message.shards
        why = f"failed: {failure[0]}" if failure else f"no answer within {self._timeout_s:g}s"
        raise TwinError(f"the fleet supervisor did not report its shards ({why})")

    def tell(self, message: Any, deadline_s: float | None = None) -> None:
        """Send the supervisor ``message`` on this channel, waiting until it is delivered
        (at most ``deadline_s``, default the call timeout)."""
        wait_s = self._timeout_s if deadline_s is None else deadline_s
        with self._lock:
            outcome: list[str] = []
            post(self._channel, self._supervisor, message, wait_s, outcome.append,
                 outcome.append)
            deadline = time.monotonic() + wait_s
            while not outcome and time.monotonic() < deadline:
                self._channel.listen(_SLICE_S)         # stray status replies: dropped
        if not outcome or not outcome[0].startswith("+"):
            raise TwinError(f"could not send {type(message).__name__} to the fleet supervisor "
                            f"({outcome[0] if outcome else 'timed out'})")

    def _run(self) -> None:
        handled: tuple[ShardState, ...] = ()
        while not self._stop.wait(WATCH_EVERY_S):
            try:
                states = self.poll()
            except TwinError as error:
                if not self._stop.is_set():
                    log.warning("shard_watch_failed", reason=str(error))
                continue
            on_change = self.on_change
            if on_change is not None and states != handled:
                try:
                    if on_change(states):
                        handled = states
                except Exception:
                    log.exception("shard_watch_callback_failed")
                    handled = states

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            self._private.__exit__(None, None, None)
