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
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import structlog

from twin.core.changes import Change, change_from_dict
from twin.core.errors import ShardDown, TwinError
from twin.core.samples import Sample
from twin.core.states import ShardStatus
from twin.fleet.core import FleetCore
from twin.hosting.system import ShardClient
from twin.runtime.calls import Replay, Restore, RestoreDesired, ShardCall, TakeSnapshot
from twin.runtime.shard import ShardOutput
from twin.store.persistence import Persistence
from twin.store.store import (
    LogEntry,
    Snapshot,
    Store,
    StoreBusy,
    StoredVersion,
    StoreUnavailable,
)
from twin.wire import pack_rows, unpack_batch

log = structlog.get_logger("twin.fleet")

_REPLAY_CHUNK = 64          # logged batches per replay call into a shard host

Command = tuple[int, str, int, str]     # id, asset id, log offset, desired (JSON)

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

    def __init__(self, core: FleetCore, reapply: Callable[[StoredVersion], None],
                 schedule: Callable[[float, Change, int | None], None]) -> None:
        self.core = core
        self._reapply = reapply
        self._schedule = schedule
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
            self._replay(store.read_log(start), core.shards, versions, commands)
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
        start, commands = self._load(store, store.latest_snapshot(), [shard],
                                     lambda a: placement.shard_of(model, a) == index)
        mine = deque(c for c in commands if placement.shard_of(model, c[1]) == index)
        self._replay(_log_until(store, start, applied), [shard], deque(), mine)

    def _replay(self, entries: Iterable[LogEntry], shards: list[ShardClient],
                versions: deque[StoredVersion], commands: deque[Command]) -> None:
        """Replay logged batches into ``shards`` (each gets its own assets' samples, in
        chunks, ticking to each batch's arrival first: ``Shard.replay``), with model changes
        and commands applied between the batches they came between; derived rows go to the
        store's writer again (idempotent), which gives rows to samples held while a shard was
        down. A restore (``versions`` given) also counts every batch as applied."""
        core = self.core
        assert core.persist is not None
        restoring = core.replaying
        chunk = _Chunk({shard.index for shard in shards})
        for entry in entries:
            while ((versions and versions[0].log_offset < entry.offset) or
                   (commands and commands[0][2] < entry.offset)):
                self._flush(chunk)                # they see the state as of their offset
                if versions and versions[0].log_offset < entry.offset:
                    self._reapply(versions.popleft())
                else:
                    self._restore_command(commands.popleft())
            decoded = unpack_batch(entry.payload)
            chunk.add(entry, decoded.samples, core, every_entry=restoring)
            if restoring:
                core.counters["replayed_samples"] += decoded.size
            if len(chunk) >= _REPLAY_CHUNK:
                self._flush(chunk)
        self._flush(chunk)
        while versions:
            self._reapply(versions.popleft())
        while commands:
            self._restore_command(commands.popleft())

    def _flush(self, chunk: _Chunk) -> None:
        core = self.core
        assert core.persist is not None
        calls = chunk.calls()
        outs = core.hosting.call_many(calls) if calls else []
        parts: dict[int, list[tuple[list[Sample], bytes]]] = {o: [] for o, _ in chunk.entries}
        for (index, _), out in zip(calls, outs, strict=True):
            core.absorb(out)
            for (offset, samples), codes in zip(chunk.samples[index], out.reply, strict=True):
                parts[offset].append((samples, codes))
        for n, (offset, received_at) in enumerate(chunk.entries):
            last = n == len(chunk.entries) - 1
            core.persist.derived(offset, received_at, parts[offset],
                                 core.unsaved if last else [])
        if chunk.entries:
            core.unsaved = []
        with core.view_lock:
            core.counters["replayed_batches"] += len(chunk.entries)
        chunk.clear()

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


class _Chunk:
    """Logged batches on their way into shards: per shard, the packed rows to replay and the
    samples they hold; the entries, in order, whose derived rows follow."""

    def __init__(self, shards: set[int]) -> None:
        self.shards = shards
        self.rows: dict[int, list[tuple[float, bytes]]] = {i: [] for i in shards}
        self.samples: dict[int, list[tuple[int, list[Sample]]]] = {i: [] for i in shards}
        self.entries: list[tuple[int, float]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: LogEntry, samples: list[Sample], core: FleetCore,
            every_entry: bool) -> None:
        by_shard: dict[int, list[Sample]] = {}
        for sample in samples:
            index = core.placement.shard_of(core.model, sample.asset_id)
            if index in self.shards:
                by_shard.setdefault(index, []).append(sample)
        for index, mine in by_shard.items():
            self.rows[index].append((entry.received_at, pack_rows(mine)))
            self.samples[index].append((entry.offset, mine))
        if by_shard or every_entry:
            self.entries.append((entry.offset, entry.received_at))

    def calls(self) -> list[tuple[int, ShardCall[ShardOutput]]]:
        return [(i, Replay(tuple(rows))) for i, rows in self.rows.items() if rows]

    def clear(self) -> None:
        for index in self.shards:
            self.rows[index] = []
            self.samples[index] = []
        self.entries = []


def _log_until(store: Store, start: int, last: int) -> Iterator[LogEntry]:
    for entry in store.read_log(start):
        if entry.offset > last:
            return
        yield entry
