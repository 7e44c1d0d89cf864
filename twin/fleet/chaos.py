"""The two chaos levers of supervision: inject a fault into an asset's actor, release a
quarantined one. (Commands to devices live in :mod:`twin.fleet.control`.)"""

from __future__ import annotations

from twin.fleet.core import FleetCore
from twin.runtime.calls import InjectFault, Release


class Chaos:
    """See the module docstring; every method runs under the fleet lock."""

    def __init__(self, core: FleetCore) -> None:
        self.core = core

    def inject_fault(self, asset_id: str, reason: str) -> None:
        core = self.core
        core.model.asset(asset_id)
        core.absorb(core.shard_of(asset_id).call(InjectFault(core.clock.now(), asset_id, reason)))

    def release(self, asset_id: str) -> None:
        core = self.core
        core.model.asset(asset_id)
        core.absorb(core.shard_of(asset_id).call(Release(core.clock.now(), asset_id)))
