"""Durability (DESIGN decision 4): snapshots of every actor's state, and the way back.

Two ways back share one routine: a restarted *fleet* restores every shard (the model changes
the store recorded, the newest snapshot, the commands after it, the log replayed from its
offset, each in the order they happened); a restarted *shard host* is refilled with the same
steps filtered to the assets placed on it (:meth:`Recovery.refill`), while the rest of the
fleet runs on.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import structlog

from twin.core.changes import change_from_dict
from twin.core.errors import ShardDown, TwinError
from twin.core.samples import IngestReport, Sample
from twin.core.states import ShardStatus
from twin.fleet.core import FleetCore
from twin.hosting.system import ShardClient
from twin.runtime.calls import Replay, Restore, RestoreDesired, TakeSnapshot
from twin.store.persistence import Persistence
from twin.store.store import LogEntry, Snapshot, Store, StoreBusy, StoreUnavailable
from twin.wire import pack_rows, unpack_batch

log = structlog.get_logger("twin.fleet")

_REPLAY_CHUNK = 64          # logged batches per replay call into a shard host

# the ingest path's run_batch: (now, samples, their indices, report) → samples with outcomes
Command = tuple[int, str, int, str]     # id, asset id, log offset, desired (JSON)
RunBatch = Callable[[float, list[Sample], list[int] | None, IngestReport],
                    list[tuple[list[Sample], bytes]]]


class Snapshots:
    """Taking snapshots: captured under the fleet lock, written without it."""

    def __init__(self, core: FleetCore) -> None:
        self.core = core

    def take(self) -> int:
        """See :meth:`twin.Fleet.snapshot`."""
        core = self.core
        with core.ingest_lock:
            with core.lock:
                core.check_open()
                if core.persist is None:
                    raise TwinError("snapshot() needs a store: Fleet(model, store=url)")
                for index, reason in core.down.items():
                    raise ShardDown(index, ShardStatus.DOWN, reason)
                taken = self.capture(core.clock.now())
            self.save(taken)
            return taken.log_offset

    def due(self, now: float) -> Snapshot | None:
        """The actors' states, if a snapshot is due (under the fleet's lock)."""
        persist = self.core.persist
        # a shard that is down cannot give its actors' states: wait until it is back
        if persist is not None and not self.core.down and persist.snapshot_due(now):
            return self.capture(now)
        return None

    def capture(self, now: float) -> Snapshot:
        core = self.core
        assert core.persist is not None
        rows = [shard.call(TakeSnapshot()) for shard in core.shards]
        return core.persist.capture(now, core.model.version, rows)

    def save(self, taken: Snapshot) -> None:
        """Write a captured snapshot (holding the ingest lock, not the fleet's)."""
        assert self.core.persist is not None
        self.core.persist.save(taken)
        with self.core.view_lock:
            self.core.counters["snapshots"] += 1

    def save_due(self, taken: Snapshot) -> None:
        """A snapshot due after a batch: if the store cannot take it now, the batch stays
        acknowledged and the snapshot is tried again one period later."""
        assert self.core.persist is not None
        try:
            self.save(taken)
        except (StoreBusy, StoreUnavailable) as error:
            self.core.persist.postpone(taken.taken_at)
            log.error("snapshot_failed", log_offset=taken.log_offset, reason=str(error))


class Recovery:
    """Restore after a fleet restart, refill after a shard host restart."""

    def __init__(self, core: FleetCore, reapply: Callable[[Any], None],
                 schedule: Callable[..., None], run_batch: RunBatch) -> None:
        self.core = core
        self._reapply = reapply
        self._schedule = schedule
        self._run_batch = run_batch
        self.last_recovery_s: float | None = None

    def restore(self) -> None:
        """After a fleet restart: re-apply recorded model changes, load the newest snapshot,
        replay the log after it (commands and model changes in their places)."""
        core = self.core
        assert core.persist is not None
        store = core.persist.store
        core.replaying = True
        try:
            versions = deque(store.model_versions(core.model.version))
            snapshot = store.latest_snapshot()
            if snapshot is not None:
                # the model as the snapshot saw it, then the actors' states
                while versions and versions[0].version <= snapshot.model_version:
                    self._reapply(versions.popleft())
            start, commands = self._load(store, snapshot, core.shards, lambda _: True)
            core.persist.last_offset = start
            for entry in store.read_log(start):
                # model changes, commands and batches in the order they happened
                while versions and versions[0].log_offset < entry.offset:
                    self._reapply(versions.popleft())
                while commands and commands[0][2] < entry.offset:
                    self._restore_command(commands.popleft())
                core.tick_shards(entry.received_at)
                decoded = unpack_batch(entry.payload)
                parts = self._run_batch(entry.received_at, decoded.samples, decoded.indices,
                                        IngestReport())
                core.persist.derived(entry.offset, entry.received_at, parts, core.unsaved)
                core.unsaved = []
                core.counters["replayed_batches"] += 1
                core.counters["replayed_samples"] += decoded.size
            while versions:
                self._reapply(versions.popleft())
            while commands:
                self._restore_command(commands.popleft())
            for scheduled_id, effective, raw in store.scheduled_changes():
                self._schedule(effective, change_from_dict(json.loads(raw)), scheduled_id)
            core.unsaved = []
        finally:
            core.replaying = False
        log.info("restored", snapshot_offset=snapshot.log_offset if snapshot else 0,
                 log_offset=core.persist.last_offset,
                 replayed_batches=core.counters["replayed_batches"])

    def refill(self, shard: ShardClient, now: float) -> None:
        """Give a new shard host its actors' states back: the same steps as :meth:`restore`,
        for the assets placed on it. The log is replayed up to the newest batch the fleet
        applied (or held for this shard): a batch logged after it is still on its way
        through ``ingest``, which applies it to this shard once the shard is back."""
        core = self.core
        assert core.persist is not None
        store = core.persist.store
        applied = core.persist.last_offset
        model, placement, index = core.model, core.placement, shard.index

        def mine(asset_id: Any) -> bool:
            return placement.shard_of(model, asset_id) == index

        start, commands = self._load(store, store.latest_snapshot(), [shard], mine)
        for command in commands:
            if mine(command[1]):
                self._restore_command(command)
        chunk: list[tuple[float, bytes]] = []
        meta: list[tuple[int, float, list[Sample]]] = []
        for entry in _log_until(store, start, applied):
            samples = [s for s in unpack_batch(entry.payload).samples if mine(s.asset_id)]
            if samples:
                chunk.append((entry.received_at, pack_rows(samples)))
                meta.append((entry.offset, entry.received_at, samples))
            if len(chunk) >= _REPLAY_CHUNK:
                self._replay_chunk(shard, chunk, meta)
                chunk, meta = [], []
        if chunk:
            self._replay_chunk(shard, chunk, meta)

    def _load(self, store: Store, snapshot: Snapshot | None, shards: list[ShardClient],
              mine: Callable[[Any], bool]) -> tuple[int, deque[Command]]:
        """Snapshot rows of the assets ``mine`` accepts into ``shards``; returns the log
        offset to replay from and the commands recorded since the snapshot."""
        start = last_command = 0
        if snapshot is not None:
            rows, last_command = Persistence.snapshot_rows(snapshot)
            mine_rows = {a: row for a, row in rows.items() if mine(a)}
            for shard in shards:
                self.core.absorb(shard.call(Restore(snapshot.taken_at, mine_rows)))
            start = snapshot.log_offset
        return start, deque(store.commands(last_command))

    def _restore_command(self, command: Command) -> None:
        core = self.core
        assert core.persist is not None
        command_id, asset_id, _, desired = command
        if asset_id in core.model.assets:        # it may have been decommissioned since
            core.shard_of(asset_id).call(RestoreDesired(asset_id, json.loads(desired)))
        if core.replaying:
            core.persist.last_command = command_id

    def _replay_chunk(self, shard: ShardClient, chunk: list[tuple[float, bytes]],
                      meta: list[tuple[int, float, list[Sample]]]) -> None:
        core = self.core
        assert core.persist is not None
        out = shard.call(Replay(tuple(chunk)))
        core.absorb(out)
        # the store's rows again (idempotent): samples held while the shard was down get
        # theirs only now
        unsaved = core.unsaved
        for n, ((offset, received_at, samples), codes) in enumerate(
                zip(meta, out.reply, strict=True)):
            core.persist.derived(offset, received_at, [(samples, codes)],
                                 unsaved if n == len(meta) - 1 else [])
        if unsaved:
            unsaved.clear()
        with core.view_lock:
            core.counters["replayed_batches"] += len(chunk)


def _log_until(store: Store, start: int, last: int) -> Iterator[LogEntry]:
    for entry in store.read_log(start):
        if entry.offset > last:
            return
        yield entry
