"""Commands to single assets, and the two chaos levers of supervision (inject a fault,
release a quarantined actor). The control issue's leases build on this."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from actors.asset import CommandAccepted, Unavailable
from twin.core.errors import AssetUnavailable, InvalidCommand, TwinError
from twin.core.views import CommandReceipt
from twin.fleet.core import FleetCore
from twin.runtime.calls import Command, InjectFault, Release

CommandSink = Callable[[str, Mapping[str, Any]], None]


class Commands:
    """See the module docstring; every method runs under the fleet lock."""

    def __init__(self, core: FleetCore, sink: CommandSink | None) -> None:
        self.core = core
        self.sink = sink

    def send(self, asset_id: str, payload: Mapping[str, Any]) -> Callable[[], CommandReceipt]:
        """Run the command on the asset's actor; returns what the caller gets once the fleet
        lock is let go (the receipt, or the refusal raised)."""
        core = self.core
        core.model.asset(asset_id)
        now = core.clock.now()
        output = core.shard_of(asset_id).call(Command(now, asset_id, payload))
        core.absorb(output)
        reply = output.reply
        if isinstance(reply, CommandAccepted):
            if core.persist is not None:
                changed = {k: v for k, v in reply.desired.items() if k in payload}
                core.persist.record_command(now, asset_id, changed)
            if self.sink is not None:      # in the order commands were accepted
                self.sink(asset_id, reply.desired)
        return lambda: _receipt(asset_id, reply, now)

    def inject_fault(self, asset_id: str, reason: str) -> None:
        core = self.core
        core.model.asset(asset_id)
        core.absorb(core.shard_of(asset_id).call(InjectFault(core.clock.now(), asset_id, reason)))

    def release(self, asset_id: str) -> None:
        core = self.core
        core.model.asset(asset_id)
        core.absorb(core.shard_of(asset_id).call(Release(core.clock.now(), asset_id)))


def _receipt(asset_id: str, reply: Any, now: float) -> CommandReceipt:
    if isinstance(reply, Unavailable):
        raise AssetUnavailable(reply.asset_id, reply.state, reply.last_seen)
    if isinstance(reply, InvalidCommand):
        raise reply
    if not isinstance(reply, CommandAccepted):
        raise TwinError(f"asset {asset_id!r} failed while handling the command "
                        f"({reply!r}); it is being restarted")
    return CommandReceipt(asset_id, reply.desired, now)
