"""Model changes in time: applied now (the shards and the roll-up tree follow before the call
returns), or scheduled for a future effective time and applied exactly once when the clock
gets there (persisted with a store, so a restart keeps the schedule)."""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass

import structlog

from twin.core.changes import (
    AddAsset,
    AddSite,
    Change,
    DecommissionAsset,
    ModelVersion,
    MoveAsset,
    apply_change,
    change_from_dict,
    change_to_dict,
)
from twin.core.errors import ShardDown, TwinError
from twin.core.states import ShardStatus
from twin.fleet.core import FleetCore
from twin.runtime.calls import (
    AddAssets,
    AddSites,
    Decommission,
    ExportAsset,
    ImportAsset,
    MoveLocal,
)
from twin.store.store import StoredVersion

log = structlog.get_logger("twin.fleet")


@dataclass(frozen=True, slots=True)
class PendingChange:
    """A model change scheduled for a future effective time."""

    effective: float
    change: Change


class ModelChanges:
    """See the module docstring."""

    def __init__(self, core: FleetCore) -> None:
        self.core = core
        # scheduled changes: (effective, order, change, id in the store's schedule or None)
        self.pending: list[tuple[float, int, Change, int | None]] = []
        self._order = 0

    def apply(self, change: Change, effective: float | None) -> ModelVersion | PendingChange:
        """Under the fleet lock: see :meth:`twin.Fleet.apply`."""
        core = self.core
        now = core.clock.now()
        when = now if effective is None else float(effective)
        if when > now:
            scheduled_id = (core.persist.schedule(when, change_to_dict(change))
                            if core.persist is not None else None)
            self.schedule(when, change, scheduled_id)
            return PendingChange(when, change)
        for index, reason in core.down.items():
            # a shard that is down cannot follow the change; it waits for nobody
            raise ShardDown(index, ShardStatus.DOWN, f"{reason}; model changes wait until "
                            "every shard is up")
        return self.apply_now(change, when, now)

    def schedule(self, when: float, change: Change, scheduled_id: int | None) -> None:
        bisect.insort(self.pending, (when, self._order, change, scheduled_id),
                      key=lambda item: (item[0], item[1]))
        self._order += 1

    def pending_changes(self) -> list[PendingChange]:
        return [PendingChange(when, change) for when, _, change, _ in self.pending]

    def next_due(self) -> float | None:
        return self.pending[0][0] if self.pending else None

    def fire_scheduled(self, now: float) -> None:
        core = self.core
        if core.down:
            return                     # applied once every shard is up again
        while self.pending and self.pending[0][0] <= now:
            when, _, change, scheduled_id = self.pending.pop(0)
            try:
                self.apply_now(change, when, now, scheduled_id)
            except (TwinError, ValueError) as error:
                if core.persist is not None and scheduled_id is not None:
                    core.persist.store.finish_scheduled(scheduled_id)
                core.counters["scheduled_change_failures"] += 1
                log.error("scheduled_change_failed", change=repr(change), effective=when,
                          reason=str(error))

    def reapply(self, stored: StoredVersion) -> None:
        """Apply a change the store recorded (restore after a restart)."""
        model = self.core.model
        self.apply_now(change_from_dict(json.loads(stored.change_json)), stored.effective,
                       stored.recorded_at)
        if model.version != stored.version:
            raise TwinError(f"the store's model version {stored.version} does not follow the "
                            f"model given (version {model.version - 1}): pass the model "
                            "the fleet was first built from")

    def apply_now(self, change: Change, effective: float, now: float,
                  scheduled_id: int | None = None) -> ModelVersion:
        core = self.core
        model = core.model
        before = (model.assets.get(change.asset)
                  if isinstance(change, DecommissionAsset | MoveAsset) else None)
        version = apply_change(model, change, effective, now)
        core.counters["model_changes"] += 1
        if core.persist is not None and not core.replaying:
            core.persist.record_change(version.version, effective, now, change_to_dict(change),
                                       scheduled_id)
        if isinstance(change, AddSite):
            index = core.placement.place(change.site, model)
            core.shards[index].call(AddSites((change.site,)))
        direct = core.direct_memberships()
        placed: set[str] = set()       # assets placed with their final direct groups below
        if isinstance(change, AddAsset):
            spec = version.undo
            placed.add(spec.id)
            core.shard_of(spec.id).call(AddAssets((spec,), {spec.id: direct.get(spec.id, ())}))
        elif isinstance(change, DecommissionAsset):
            assert before is not None
            shard = core.shards[core.placement.shard_of_site(before.site)]
            core.absorb(shard.call(Decommission(now, before.id)))
        elif isinstance(change, MoveAsset):
            assert before is not None
            spec = model.assets[change.asset]
            source = core.shards[core.placement.shard_of_site(before.site)]
            target = core.shards[core.placement.shard_of_site(spec.site)]
            groups = direct.get(spec.id, ())
            placed.add(spec.id)
            if source is target:
                core.absorb(source.call(MoveLocal(now, spec, groups)))
            else:
                out = source.call(ExportAsset(now, spec.id))
                core.absorb(out)
                core.absorb(target.call(ImportAsset(now, spec, out.reply, groups)))
        # direct group memberships may shift after any change (coverage is normalized)
        for asset_id in sorted((set(direct) | set(core.direct)) - placed):
            if asset_id in model.assets and direct.get(asset_id) != core.direct.get(asset_id):
                core.absorb(core.shard_of(asset_id).call(
                    MoveLocal(now, model.assets[asset_id], direct.get(asset_id, ()))))
        core.direct = direct
        leaves = core.partial_leaves()
        with core.view_lock:
            core.tree.wire(model, leaves)
        core.collect_all()
        log.info("model_changed", version=version.version, change=type(change).__name__,
                 effective=effective)
        return version
