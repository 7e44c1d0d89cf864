"""Thespian hosting: the fleet supervisor and shard hosts as Thespian actors.

Thespian's camelCase API and its message conventions stay inside this module. A shard host
is a Thespian actor holding one :class:`twin._shard.Shard` (thousands of lightweight asset
actors); the fleet supervisor is the Thespian actor that creates the shard hosts (and, on the
multi-process bases, will watch them through ``ChildActorExited``).

Calls are ``ShardCall(method, args)`` answered by ``ShardReply``. A shard host never lets an
exception escape ``receiveMessage``: Thespian would retry the message (applying a batch twice)
and then turn it into a ``PoisonMessage``; the error travels back in the reply instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from thespian.actors import Actor, ActorAddress, ActorExitRequest, ActorSystem

from twin._errors import TwinError
from twin._shard import Shard, ShardConfig

EMBEDDED_BASE = "simpleSystemBase"


@dataclass(frozen=True, slots=True)
class ShardCall:
    method: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ShardReply:
    value: Any = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class StartShards:
    count: int


@dataclass(frozen=True, slots=True)
class ShardsStarted:
    addresses: tuple[Any, ...]


# Methods of Shard a host lets callers invoke.
_CALLABLE = frozenset({
    "add_site", "add_assets", "ingest", "tick", "command", "inject_fault", "release",
    "asset_view", "decommission", "move_local", "export_asset", "import_asset", "collect",
    "next_due", "metrics", "snapshot", "restore", "restore_desired",
})


class ShardHost(Actor):  # type: ignore[misc]
    """A Thespian actor that holds one shard of asset actors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shard: Shard | None = None

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, ShardConfig):
            self.shard = Shard(message)
            self.send(sender, ShardReply(value=message.index))
        elif isinstance(message, ShardCall):
            self.send(sender, self._call(message))

    def _call(self, call: ShardCall) -> ShardReply:
        if self.shard is None:
            return ShardReply(error=TwinError("shard host used before it was configured"))
        if call.method not in _CALLABLE:
            return ShardReply(error=TwinError(f"shard has no call {call.method!r}"))
        try:
            return ShardReply(value=getattr(self.shard, call.method)(*call.args))
        except Exception as error:  # returned, never raised into Thespian (see module doc)
            return ShardReply(error=error)


class FleetSupervisor(Actor):  # type: ignore[misc]
    """The Thespian actor at the top: it creates the shard hosts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shards: list[ActorAddress] = []

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, StartShards):
            while len(self.shards) < message.count:
                self.shards.append(self.createActor(ShardHost))
            self.send(sender, ShardsStarted(tuple(self.shards)))


class ShardClient:
    """Typed calls from the fleet facade to one shard host."""

    def __init__(self, system: ActorSystem, address: ActorAddress, index: int,
                 timeout_s: float) -> None:
        self._system = system
        self.address = address
        self.index = index
        self.timeout_s = timeout_s

    def configure(self, config: ShardConfig) -> None:
        self._ask(config)

    def call(self, method: str, *args: Any) -> Any:
        return self._ask(ShardCall(method, args))

    def _ask(self, message: Any) -> Any:
        reply = self._system.ask(self.address, message, self.timeout_s)
        if reply is None:
            raise TwinError(f"shard {self.index} did not answer within {self.timeout_s:g}s")
        if not isinstance(reply, ShardReply):
            raise TwinError(f"shard {self.index} answered {reply!r}")
        if reply.error is not None:
            raise reply.error
        return reply.value


class Hosting:
    """The actor system of one fleet, its supervisor and its shard hosts."""

    def __init__(self, system_base: str, shards: int, timeout_s: float = 60.0) -> None:
        if system_base != EMBEDDED_BASE:
            raise TwinError(f"system {system_base!r} is not supported yet; use "
                            f"{EMBEDDED_BASE!r} (the embedded default)")
        self.system = ActorSystem(system_base, transientUnique=True)
        try:
            self.supervisor = self.system.createActor(FleetSupervisor)
            started = self.system.ask(self.supervisor, StartShards(shards), timeout_s)
            if not isinstance(started, ShardsStarted):
                raise TwinError(f"the fleet supervisor did not start its shards: {started!r}")
        except BaseException:
            self.system.shutdown()
            raise
        self.shards = [ShardClient(self.system, address, i, timeout_s)
                       for i, address in enumerate(started.addresses)]

    def shutdown(self) -> None:
        self.system.tell(self.supervisor, ActorExitRequest())
        self.system.shutdown()
