"""The Thespian actors of a fleet: shard hosts and the fleet supervisor over them.

Protocol
--------
``StartShards``     facade → supervisor: create the shard hosts; answered by ``ShardsStarted``.
``CallRequest``     facade → shard host: run a typed call (:mod:`twin.runtime.calls`) on its
                    :class:`twin.runtime.shard.Shard`, or ``Configure`` it; answered by
                    ``ShardReply`` carrying the value or the error.
``StatusRequest``   facade → supervisor: answered by ``StatusReply`` (every shard's state).
``ShardRecovered``  facade → supervisor: a restarted host has its state back; it is running.
``Ping``/``Pong``    supervisor ↔ shard hosts on other nodes: heartbeats (see below).

A shard host's process may die (killed, out of memory). Its supervisor hears it as Thespian's
``ChildActorExited``, and restarts it after a backoff unless the restart intensity is exceeded;
then it marks the shard ``failed`` and stops restarting (no restart storm). Re-filling a new
host with its sites, snapshot and log is the facade's job: only it holds the model and store.

Nodes: other machines run ``twin node --join`` (an actor system that joins the fleet's, the
convention leader, with the capability ``twin.node=<name>``). A shard is placed on a node
explicitly by that unique capability (Thespian's own choice among matching systems does not
balance). Thespian sends no ``ChildActorExited`` for a child on another node and notices a dead
node only after several re-registration periods, so the supervisor pings its remote hosts
every ``heartbeat_s``; one silent for ``heartbeat_timeout_s``, or on a node that left the
convention, is dead, and is restarted on a live node (its own if it is back, else the one
holding the fewest shards).
"""

from __future__ import annotations

import os
import pickle
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from thespian.actors import (
    Actor,
    ActorAddress,
    ActorExitRequest,
    ActorSystemConventionUpdate,
    ChildActorExited,
    WakeupMessage,
)

from supervisors import SupervisionPolicy, backoff_delay, record_restart
from twin.core.errors import TwinError
from twin.core.states import ShardStatus
from twin.hosting.lifeline import (
    NODE_CAPABILITY,
    OWNER_CHECK_S,
    alive,
    die_with_parent,
    own_process,
    start_time,
    stop_actor_system,
)
from twin.hosting.listen import ANY, LOOPBACK
from twin.runtime.calls import ShardCall
from twin.runtime.shard import Shard, ShardConfig

log = structlog.get_logger("twin.hosting")


@dataclass(frozen=True, slots=True)
class Configure:
    """Make the host's shard (a new, empty one); the reply is the host's process id."""

    config: ShardConfig


@dataclass(frozen=True, slots=True)
class CallRequest:
    call_id: int
    call: ShardCall[Any] | Configure


@dataclass(frozen=True, slots=True)
class ShardReply:
    call_id: int
    value: Any = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class StartShards:
    count: int
    policy: SupervisionPolicy
    seed: int = 0
    owner_pid: int | None = None      # the facade's process: when it is gone, so are we
    admin_port: int | None = None
    system_base: str = "multiprocTCPBase"
    placement: tuple[str, ...] = ()   # node name per shard (empty: all local)
    join_timeout_s: float = 60.0
    heartbeat_s: float = 0.5
    heartbeat_timeout_s: float = 5.0
    bind: str = LOOPBACK              # the address the fleet's actor system listens on


@dataclass(frozen=True, slots=True)
class StartFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class Ping:
    index: int          # echoed back: a remote actor's address as its parent holds it is not
    generation: int     # always equal to the sender address its replies carry


@dataclass(frozen=True, slots=True)
class Pong:
    index: int
    generation: int


@dataclass(frozen=True, slots=True)
class ShardsStarted:
    addresses: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class StatusRequest:
    call_id: int


@dataclass(frozen=True, slots=True)
class ShardState:
    """A shard host as its supervisor sees it. ``status`` is ``running``, ``down`` (dead,
    restart pending), ``restarting`` (a new host waits to be filled) or ``failed`` (restart
    intensity exceeded: no more restarts)."""

    index: int
    address: Any
    generation: int
    status: ShardStatus
    restarts: int = 0
    reason: str = ""
    failures: tuple[float, ...] = field(default=(), repr=False)
    node: str = "local"


@dataclass(frozen=True, slots=True)
class StatusReply:
    call_id: int
    shards: tuple[ShardState, ...]


@dataclass(frozen=True, slots=True)
class ShardRecovered:
    index: int
    generation: int


LOCAL = "local"                # the node name of the fleet's own actor system
_WATCH_OWNER = "watch-owner"
_HEARTBEAT = "heartbeat"
_JOIN_TIMEOUT = "join-timeout"

def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling (it may cross a process), else a TwinError saying it."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return TwinError(f"{type(error).__name__}: {error}")


class ShardHost(Actor):  # type: ignore[misc]
    """A Thespian actor that holds one shard of asset actors."""

    def __init__(self, capabilities: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.shard: Shard | None = None
        if own_process(capabilities):
            die_with_parent()          # its supervisor, or a node's admin, took it along

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict[str, Any],
                                   requirements: dict[str, Any]) -> bool:
        """Placement by a unique capability per node: only the named node matches."""
        wanted = (requirements or {}).get(NODE_CAPABILITY)
        return wanted is None or capabilities.get(NODE_CAPABILITY) == wanted

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, CallRequest):
            self.send(sender, self._call(message))
        elif isinstance(message, Ping):
            self.send(sender, Pong(message.index, message.generation))

    def _call(self, request: CallRequest) -> ShardReply:
        try:
            call = request.call
            if isinstance(call, Configure):
                self.shard = Shard(call.config)
                return ShardReply(request.call_id, value=os.getpid())
            if self.shard is None:
                raise TwinError("shard host used before it was configured")
            return ShardReply(request.call_id, value=call.run(self.shard))
        except Exception as error:  # returned, never raised into Thespian (see module doc)
            return ShardReply(request.call_id, error=_portable(error))


class FleetSupervisor(Actor):  # type: ignore[misc]
    """The Thespian actor at the top: creates, watches and restarts the shard hosts."""

    def __init__(self, capabilities: dict[str, Any] | None = None) -> None:
        super().__init__()
        if own_process(capabilities):
            die_with_parent()          # the admin: a fleet whose admin died cannot stop us
        self.states: list[ShardState] = []
        self.policy = SupervisionPolicy()
        self.rng = random.Random(0)
        self.closing = False
        self.owner_pid: int | None = None
        self.owner_started: str | None = None
        self.admin_port: int | None = None
        self.system_base = "multiprocTCPBase"
        self.start = StartShards(0, self.policy)
        self.pending: ActorAddress | None = None       # who waits for StartShards' answer
        self.nodes: dict[str, Any] = {}                # remote nodes in the convention
        self.last_pong: dict[int, float] = {}          # shard index → when it last answered

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, StartShards):
            self._start(message, sender)
        elif isinstance(message, StatusRequest):
            self.send(sender, StatusReply(message.call_id, tuple(self.states)))
        elif isinstance(message, ChildActorExited):
            self._exited(message.childAddress)
        elif isinstance(message, WakeupMessage) and message.payload == _WATCH_OWNER:
            self._watch_owner()
        elif isinstance(message, WakeupMessage) and message.payload == _HEARTBEAT:
            self._heartbeat()
        elif isinstance(message, WakeupMessage) and message.payload == _JOIN_TIMEOUT:
            self._join_timeout()
        elif isinstance(message, Pong):
            if (message.index < len(self.states) and
                    self.states[message.index].generation == message.generation):
                self.last_pong[message.index] = time.monotonic()
        elif isinstance(message, ActorSystemConventionUpdate):
            self._convention(message)
        elif isinstance(message, WakeupMessage):
            self._restart(*message.payload)
        elif isinstance(message, ShardRecovered):
            state = self.states[message.index]
            if state.generation == message.generation and state.status == ShardStatus.RESTARTING:
                self.states[message.index] = replace(state, status=ShardStatus.RUNNING)
        elif isinstance(message, ActorExitRequest):
            self.closing = True

    def _start(self, message: StartShards, sender: ActorAddress) -> None:
        self.start = message
        self.policy = message.policy
        self.rng = random.Random(message.seed)
        self.owner_pid = message.owner_pid
        self.admin_port = message.admin_port
        self.system_base = message.system_base
        if self.owner_pid is not None:
            self.owner_started = start_time(self.owner_pid)
            self.wakeupAfter(OWNER_CHECK_S, payload=_WATCH_OWNER)
        self.pending = sender
        if any(node != LOCAL for node in message.placement):
            self.notifyOnSystemRegistrationChanges(True)
            self.wakeupAfter(message.join_timeout_s, payload=_JOIN_TIMEOUT)
            self.wakeupAfter(message.heartbeat_s, payload=_HEARTBEAT)
        self._start_when_joined()

    def _missing_nodes(self) -> list[str]:
        return sorted({n for n in self.start.placement if n != LOCAL and n not in self.nodes})

    def _start_when_joined(self) -> None:
        if self.pending is None or self._missing_nodes():
            return
        placement = self.start.placement or (LOCAL,) * self.start.count
        while len(self.states) < self.start.count:
            index = len(self.states)
            node = placement[index % len(placement)]
            self.states.append(ShardState(index, self._host_on(node), 0, ShardStatus.RUNNING,
                                          node=node))
            self.last_pong[index] = time.monotonic()
        self.send(self.pending, ShardsStarted(tuple(s.address for s in self.states)))
        self.pending = None

    def _join_timeout(self) -> None:
        if self.pending is not None:
            self.send(self.pending, StartFailed(
                f"node(s) {', '.join(self._missing_nodes())} did not join the fleet's actor "
                f"system within {self.start.join_timeout_s:g}s (run `twin node --join "
                f"{self.start.bind if self.start.bind != ANY else 'HOST'}:{self.admin_port} "
                "--name NAME` on each)"))
            self.pending = None

    def _host_on(self, node: str) -> ActorAddress:
        if node == LOCAL:
            return self.createActor(ShardHost)
        return self.createActor(ShardHost, targetActorRequirements={NODE_CAPABILITY: node})

    def _convention(self, update: ActorSystemConventionUpdate) -> None:
        node = (update.remoteCapabilities or {}).get(NODE_CAPABILITY)
        if not isinstance(node, str):
            return
        if update.remoteAdded:
            self.nodes[node] = update.remoteAdminAddress
            log.info("node_joined", supervisor="fleet", node=node)
            self._start_when_joined()
            return
        self.nodes.pop(node, None)
        for state in self.states:
            if state.node == node and state.status.alive:
                self._lost(state, f"node {node!r} left the convention")

    def _heartbeat(self) -> None:
        if self.closing:
            return
        now = time.monotonic()
        timeout = self.start.heartbeat_timeout_s
        for state in list(self.states):
            if state.node == LOCAL or not state.status.alive:
                continue
            if now - self.last_pong.get(state.index, now) > timeout:
                # the node is suspect until it registers again: restart elsewhere
                if self.nodes.pop(state.node, None) is not None:
                    log.error("node_silent", supervisor="fleet", node=state.node,
                              reason=f"no heartbeat for {timeout:g}s", action="place elsewhere")
                self._lost(state, f"no heartbeat from node {state.node!r} for {timeout:g}s")
            else:
                self.send(state.address, Ping(state.index, state.generation))
        self.wakeupAfter(self.start.heartbeat_s, payload=_HEARTBEAT)

    def _place(self, previous: str) -> str:
        """The node for a restarted shard: its own if alive, else the least loaded."""
        if previous == LOCAL or previous in self.nodes:
            return previous
        live = [LOCAL, *sorted(self.nodes)]
        load = {n: sum(1 for s in self.states if s.node == n and s.status != ShardStatus.FAILED)
                for n in live}
        return min(live, key=lambda n: (load[n], n != LOCAL, n))

    def _watch_owner(self) -> None:
        """A fleet whose process was killed cannot close its actor system: without this its
        shard processes would live on as orphans. Stop the whole system instead."""
        assert self.owner_pid is not None
        if alive(self.owner_pid, self.owner_started) or self.admin_port is None:
            self.wakeupAfter(OWNER_CHECK_S, payload=_WATCH_OWNER)   # (embedded: the owner's
            return                                                  # own process)
        log.error("fleet_process_gone", supervisor="fleet", reason="owner process exited",
                  offender=f"pid-{self.owner_pid}", action="stop actor system")
        self.closing = True
        # what fleet.close() would have done
        stop_actor_system(self.system_base, self.admin_port, self.start.bind)

    def _lost(self, state: ShardState, reason: str) -> None:
        """A remote host found dead by us, not by Thespian: Thespian still counts it among
        this actor's children, and on exit would wait for it for ever (its exit request
        fails, and thespian 4.0.1's failure callback names another child: a late-bound
        loop variable). Say it exited, so that a stop after a failover is a stop. (A host
        that lives on after all, on a partitioned node, stops with its node.)"""
        self._exited(state.address, reason)
        self.send(self.myAddress, ChildActorExited(state.address))

    def _exited(self, address: ActorAddress, reason: str = "shard host process exited"
                ) -> None:
        index = next((s.index for s in self.states if s.address == address), None)
        if index is None or self.closing:
            return
        state = self.states[index]
        if state.status.dead:
            return
        failures, exceeded = record_restart(state.failures, time.monotonic(),
                                            self.policy.max_restarts, self.policy.within_s)
        if exceeded:
            self.states[index] = replace(state, status=ShardStatus.FAILED, failures=failures,
                                         reason=f"{reason}; restart intensity exceeded "
                                                f"({self.policy.max_restarts} in "
                                                f"{self.policy.within_s:g}s)")
            log.error("shard_failed", supervisor="fleet", reason=reason,
                      offender=f"shard-{index}", action="escalate")
            return
        delay = backoff_delay(len(failures), self.policy, self.rng)
        self.states[index] = replace(state, status=ShardStatus.DOWN, failures=failures,
                                     reason=reason)
        log.warning("shard_exited", supervisor="fleet", reason=reason, offender=f"shard-{index}",
                    action="restart", delay_s=round(delay, 3))
        self.wakeupAfter(max(delay, 0.001), payload=(index, state.generation))

    def _restart(self, index: int, generation: int) -> None:
        state = self.states[index]
        if self.closing or state.generation != generation or state.status != ShardStatus.DOWN:
            return
        node = self._place(state.node)
        self.states[index] = replace(state, address=self._host_on(node), node=node,
                                     generation=generation + 1, status=ShardStatus.RESTARTING,
                                     restarts=state.restarts + 1)
        self.last_pong[index] = time.monotonic()
