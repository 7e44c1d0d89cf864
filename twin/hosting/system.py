"""Thespian hosting: the fleet supervisor and shard hosts as Thespian actors.

Thespian's camelCase API and its message conventions stay inside this module (and
:mod:`twin.hosting.host_actors`, :mod:`twin.hosting.lifeline`, :mod:`twin.hosting.listen`,
:mod:`twin.hosting.node`).
A shard host is a Thespian actor holding one :class:`twin.runtime.shard.Shard` (thousands of
lightweight asset actors); the fleet supervisor is the Thespian actor that creates the shard
hosts and, on the multi-process bases, watches them (``ChildActorExited``) and restarts them
with backoff and a restart intensity.

Calls are typed (:mod:`twin.runtime.calls`), sent as ``CallRequest`` and answered by
``ShardReply``. A shard host never lets an exception escape ``receiveMessage``: Thespian
would retry the message (applying a batch twice) and then turn it into a ``PoisonMessage``;
the error travels back in the reply instead.

Embedded (``simpleSystemBase``) calls are synchronous asks in the caller's thread. On the
multi-process bases the facade *posts* every shard of a round its call (a send that never
waits, :func:`twin.hosting.shard_watch.post`) and listens for the replies, so shards work in
parallel; while it waits it looks at what the shard watch last heard from the supervisor and
gives up on a shard that died (an ask to a dead actor would otherwise wait for its whole
timeout, and Thespian's own ``tell`` could wait 35 s for one: see :mod:`twin.hosting.shard_watch`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import structlog
from thespian.actors import ActorAddress, ActorExitRequest, ActorSystem

from supervisors import SupervisionPolicy
from twin.core.errors import FleetClosed, ShardDown, TwinError
from twin.core.states import ShardStatus
from twin.hosting.host_actors import (
    LOCAL,
    CallRequest,
    Configure,
    FleetSupervisor,
    ShardRecovered,
    ShardReply,
    ShardsStarted,
    ShardState,
    StartFailed,
    StartShards,
)
from twin.hosting.lifeline import NODE_CAPABILITY
from twin.hosting.listen import LOOPBACK, listen_on
from twin.hosting.shard_watch import ShardWatch, post
from twin.runtime.calls import ShardCall
from twin.runtime.shard import ShardConfig

log = structlog.get_logger("twin.hosting")

EMBEDDED_BASE = "simpleSystemBase"
MULTIPROC_BASES = ("multiprocTCPBase", "multiprocQueueBase", "multiprocUDPBase")

# How long a shutdown waits for the fleet supervisor to take its exit request.
SHUTDOWN_TELL_S = 3.0

# The longest a waiting facade listens before it looks at the shard watch again.
_LIVENESS_CHECK_S = 0.05

T = TypeVar("T")


class ShardClient:
    """Typed calls from the fleet facade to one shard host."""

    def __init__(self, hosting: Hosting, index: int) -> None:
        self._hosting = hosting
        self.index = index

    def configure(self, config: ShardConfig) -> None:
        self._hosting.configure(self.index, config)

    def call(self, call: ShardCall[T]) -> T:
        """Run ``call`` on this shard and return its value (typed by the call's class)."""
        value: T = self._hosting.call_many([(self.index, call)])[0]
        return value


class Hosting:
    """The actor system of one fleet, its supervisor and its shard hosts."""

    def __init__(self, system_base: str, shards: int, timeout_s: float = 60.0, *,
                 restart_policy: SupervisionPolicy | None = None, seed: int = 0,
                 admin_port: int | None = None, nodes: Sequence[str] = (),
                 join_timeout_s: float = 60.0, heartbeat_timeout_s: float = 5.0,
                 bind: str = LOOPBACK) -> None:
        if system_base != EMBEDDED_BASE and system_base not in MULTIPROC_BASES:
            raise TwinError(f"system {system_base!r} is not supported; use {EMBEDDED_BASE!r} "
                            f"(embedded, the default) or one of {', '.join(MULTIPROC_BASES)}")
        self.embedded = system_base == EMBEDDED_BASE
        if nodes and system_base != "multiprocTCPBase":
            raise TwinError(f"nodes={list(nodes)!r} needs system='multiprocTCPBase' (other "
                            f"machines join over TCP), not {system_base!r}")
        placement = tuple(nodes[i % len(nodes)] for i in range(shards)) if nodes else ()
        self.timeout_s = timeout_s
        self.closing = threading.Event()     # set by close(): calls in flight give up at once
        self.admin_port = None if self.embedded else (admin_port or free_port())
        capabilities = {} if self.embedded else {"Admin Port": self.admin_port,
                                                 NODE_CAPABILITY: LOCAL}
        if not self.embedded:
            listen_on(bind)            # Thespian alone would listen on every interface
        self.system = ActorSystem(system_base, capabilities, transientUnique=True)
        self._next_id = 0
        self.pids: dict[int, int] = {}
        self.generations = [0] * shards
        policy = restart_policy or SupervisionPolicy(max_restarts=5, within_s=60.0,
                                                     backoff_base_s=0.2, backoff_max_s=5.0)
        try:
            self.supervisor = self.system.createActor(FleetSupervisor)
            start = StartShards(shards, policy, seed, os.getpid(), self.admin_port, system_base,
                                placement, join_timeout_s,
                                heartbeat_timeout_s=heartbeat_timeout_s, bind=bind)
            started = self.system.ask(self.supervisor, start, timeout_s + join_timeout_s)
            if isinstance(started, StartFailed):
                hint = (f"; the fleet listens on {bind} only: name the address other machines "
                        "reach it on (bind=ADDR, twin serve --bind ADDR)"
                        if bind == LOOPBACK and "did not join" in started.reason else "")
                raise TwinError(started.reason + hint)
            if not isinstance(started, ShardsStarted):
                raise TwinError(f"the fleet supervisor did not start its shards: {started!r}")
        except BaseException:
            self.system.shutdown()
            raise
        self.addresses: list[ActorAddress] = list(started.addresses)
        self.shards = [ShardClient(self, i) for i in range(shards)]
        # a channel of its own to the supervisor: liveness never waits behind a call
        self.watch: ShardWatch | None = None
        if not self.embedded:
            try:
                self.watch = ShardWatch(self.system, self.supervisor, timeout_s, self.closing)
            except BaseException:
                self.system.shutdown()
                raise

    def watch_shards(self, on_change: Callable[[tuple[ShardState, ...]], bool]) -> None:
        """Have ``on_change`` called with the shards' states whenever they change
        (multi-process bases; see :class:`ShardWatch`)."""
        if self.watch is not None:
            self.watch.on_change = on_change

    # -- calls ----------------------------------------------------------------------------

    def configure(self, index: int, config: ShardConfig) -> None:
        self.pids[index] = self._run([(index, Configure(config))], False)[0]

    def call_many(self, calls: Sequence[tuple[int, ShardCall[Any]]],
                  return_errors: bool = False) -> list[Any]:
        """Run ``(shard index, call)`` pairs, in parallel on the multi-process bases;
        returns their values in order. An error (:class:`ShardDown` if a shard died) is
        raised, the first one, or with ``return_errors`` put in the list in its call's place.
        """
        return self._run(calls, return_errors)

    def _run(self, calls: Sequence[tuple[int, ShardCall[Any] | Configure]],
             return_errors: bool) -> list[Any]:
        messages = []
        for index, call in calls:
            self._next_id += 1
            messages.append((index, CallRequest(self._next_id, call)))
        replies = (self._ask_each(messages) if self.embedded else self._exchange(messages))
        values = []
        for _, request in messages:
            reply = replies[request.call_id]
            if reply.error is not None and not return_errors:
                raise reply.error
            values.append(reply.value if reply.error is None else reply.error)
        return values

    def _ask_each(self, messages: list[tuple[int, CallRequest]]) -> dict[int, ShardReply]:
        replies = {}
        for index, call in messages:
            reply = self.system.ask(self.addresses[index], call, self.timeout_s)
            replies[call.call_id] = self._checked(index, reply)
        return replies

    def _checked(self, index: int, reply: Any) -> ShardReply:
        if reply is None:
            raise TwinError(f"shard {index} did not answer within {self.timeout_s:g}s")
        if not isinstance(reply, ShardReply):
            raise TwinError(f"shard {index} answered {reply!r}")
        return reply

    def _exchange(self, messages: list[tuple[int, CallRequest]]) -> dict[int, ShardReply]:
        waiting = {call.call_id: index for index, call in messages}
        calls = {call.call_id: call for _, call in messages}
        refused: set[int] = set()              # calls whose send failed

        def send(call: CallRequest) -> None:
            def failed(_status: str) -> None:
                refused.add(call.call_id)
            post(self.system, self.addresses[waiting[call.call_id]], call, self.timeout_s,
                 failed)

        for call in calls.values():
            send(call)
        replies: dict[int, ShardReply] = {}
        deadline = time.monotonic() + self.timeout_s
        while waiting:
            if self.closing.is_set():
                # the processes may be gone with no one left to say so (a stop signal to
                # every process): do not wait out the call's deadline
                raise FleetClosed("the fleet is closing; the call was given up")
            for call_id, index in list(waiting.items()):
                error = self._gone(index)
                if error is not None:
                    del waiting[call_id]
                    replies[call_id] = ShardReply(call_id, error=error)
                elif call_id in refused:
                    # refused, yet its supervisor counts the host alive: it has not heard of
                    # the death yet (it will within a poll or two), or Thespian called a stale
                    # connection dead (a broken pipe). Send again until one of them is true.
                    refused.discard(call_id)
                    send(calls[call_id])
            left = deadline - time.monotonic()
            if not waiting:
                break
            if left <= 0:
                raise TwinError(f"shard(s) {sorted(set(waiting.values()))} did not answer "
                                f"within {self.timeout_s:g}s")
            message = self.system.listen(min(left, _LIVENESS_CHECK_S))
            if isinstance(message, ShardReply) and message.call_id in waiting:
                del waiting[message.call_id]
                replies[message.call_id] = message
            # anything else is a late reply to a call that was given up on: dropped
        return replies

    def _gone(self, index: int) -> ShardDown | None:
        """Why the host of shard ``index`` will not answer, as the shard watch last heard
        from the supervisor, or None while it may."""
        assert self.watch is not None
        states = self.watch.states
        if not states:
            return None
        state = states[index]
        if state.generation < self.generations[index]:
            return None                # heard before this host was adopted: says nothing
        # "restarting" is alive: the facade is refilling that very host
        if (not state.status.alive or
                state.generation != self.generations[index]):
            return ShardDown(index, state.status, state.reason)
        return None

    # -- supervision ------------------------------------------------------------------------

    def status(self) -> tuple[ShardState, ...]:
        """Every shard's state as the supervisor sees it now (embedded shards are always up)."""
        if self.watch is None:
            return tuple(ShardState(i, addr, self.generations[i], ShardStatus.RUNNING)
                         for i, addr in enumerate(self.addresses))
        return self.watch.poll()

    def latest_status(self) -> tuple[ShardState, ...]:
        """What the watch last heard (no round trip); a fresh answer if it heard nothing."""
        if self.watch is None or not self.watch.states:
            return self.status()
        return self.watch.states

    def adopt(self, state: ShardState) -> None:
        """Use the restarted shard host ``state`` describes (it is not configured yet)."""
        self.addresses[state.index] = state.address
        self.generations[state.index] = state.generation
        self.pids.pop(state.index, None)

    def recovered(self, index: int) -> None:
        assert self.watch is not None
        self.watch.tell(ShardRecovered(index, self.generations[index]))

    def shutdown(self) -> None:
        try:
            if self.watch is not None:
                # on the watch's channel: the main one may still hold a send to a dead shard
                try:
                    # briefly: a supervisor a stop signal took too never acknowledges, and
                    # the system's shutdown below ends what is left anyway
                    self.watch.tell(ActorExitRequest(), deadline_s=SHUTDOWN_TELL_S)
                except TwinError as error:     # the system's shutdown below ends it anyway
                    log.warning("fleet_supervisor_unreachable", reason=str(error))
                finally:
                    self.watch.close()
            else:
                self.system.tell(self.supervisor, ActorExitRequest())
        finally:
            self.system.shutdown()


def free_port() -> int:
    """A TCP port free on loopback now (for a fleet's own actor-system admin)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
