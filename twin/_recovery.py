"""The fleet's durability: snapshots, and recovery after a restart (DESIGN decision 4).

A mixin of :class:`twin.Fleet`, kept apart so the facade stays readable; it uses the fleet's
locks, shards and persistence exactly as the facade does. A snapshot is taken in two steps:
the shards' rows under the fleet's lock, then the wait for the writer and the write, which
depend on the store, holding only the ingest lock (reads and timers go on meanwhile).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from twin.core.changes import Change, ModelVersion, change_from_dict
from twin.core.clock import Clock
from twin.core.errors import ShardDown, TwinError
from twin.core.model import FleetModel
from twin.core.samples import IngestReport, Sample
from twin.core.states import ShardStatus, Transition
from twin.runtime.calls import Restore, RestoreDesired, TakeSnapshot
from twin.store.persistence import Persistence
from twin.store.store import Snapshot, Store, StoreBusy, StoredVersion, StoreUnavailable
from twin.wire import unpack_batch

if TYPE_CHECKING:
    from twin.hosting.system import ShardClient

log = structlog.get_logger("twin.fleet")


class Recovery:
    """Snapshots and restore, for :class:`twin.Fleet`."""

    # provided by Fleet
    model: FleetModel
    clock: Clock
    _ingest_lock: threading.RLock
    _lock: threading.RLock
    _persist: Persistence | None
    _shards: list[ShardClient]
    _counters: dict[str, int]
    _down: dict[int, str]
    _unsaved: list[Transition]
    _replaying: bool
    _check_open: Callable[[], None]
    _absorb: Callable[..., None]
    _tick: Callable[[float], None]
    _shard_of: Callable[[str], ShardClient]
    _apply_now: Callable[[Change, float, float], ModelVersion]
    _schedule: Callable[[float, Change, int | None], None]
    _run_batch: Callable[[float, list[Sample], list[int] | None, IngestReport],
                         list[tuple[list[Sample], bytes]]]

    @property
    def store(self) -> Store | None:
        return None if self._persist is None else self._persist.store

    def flush(self) -> None:
        """Wait until every derived row queued so far is in the store (the raw log always is:
        ``ingest`` returns once its batch is)."""
        if self._persist is not None:
            self._persist.store.writer.flush()

    def snapshot(self) -> int:
        """Snapshot every actor's state now; returns the log offset it reflects.
        :class:`StoreBusy` or :class:`StoreUnavailable` if the store could not take it."""
        with self._ingest_lock:
            with self._lock:
                self._check_open()
                if self._persist is None:
                    raise TwinError("snapshot() needs a store: Fleet(model, store=url)")
                for index, reason in self._down.items():
                    raise ShardDown(index, ShardStatus.DOWN, reason)
                taken = self._capture_snapshot(self.clock.now())
            self._save_snapshot(taken)
            return taken.log_offset

    def _restore_command(self, command: tuple[int, str, int, str]) -> None:
        assert self._persist is not None
        command_id, asset_id, _, desired = command
        if asset_id in self.model.assets:        # it may have been decommissioned since
            self._shard_of(asset_id).call(RestoreDesired(asset_id, json.loads(desired)))
        self._persist.last_command = command_id

    def _reapply(self, stored: StoredVersion) -> None:
        self._apply_now(change_from_dict(json.loads(stored.change_json)), stored.effective,
                        stored.recorded_at)
        if self.model.version != stored.version:
            raise TwinError(f"the store's model version {stored.version} does not follow the "
                            f"model given (version {self.model.version - 1}): pass the model "
                            "the fleet was first built from")

    def _due_snapshot(self, now: float) -> Snapshot | None:
        """The actors' states, if a snapshot is due (under the fleet's lock)."""
        # a shard that is down cannot give its actors' states: wait until it is back
        if self._persist is not None and not self._down and self._persist.snapshot_due(now):
            return self._capture_snapshot(now)
        return None

    def _capture_snapshot(self, now: float) -> Snapshot:
        assert self._persist is not None
        rows = [shard.call(TakeSnapshot()) for shard in self._shards]
        return self._persist.capture(now, self.model.version, rows)

    def _save_snapshot(self, taken: Snapshot) -> None:
        """Write a captured snapshot (holding the ingest lock, not the fleet's)."""
        assert self._persist is not None
        self._persist.save(taken)
        self._counters["snapshots"] += 1

    def _save_due_snapshot(self, taken: Snapshot) -> None:
        """A snapshot due after a batch: if the store cannot take it now, the batch stays
        acknowledged and the snapshot is tried again one period later."""
        assert self._persist is not None
        try:
            self._save_snapshot(taken)
        except (StoreBusy, StoreUnavailable) as error:
            self._persist.postpone(taken.taken_at)
            log.error("snapshot_failed", log_offset=taken.log_offset, reason=str(error))

    def _restore(self) -> None:
        """After a restart: re-apply recorded model changes, load the newest snapshot, replay
        the log after it, then let time catch up to now."""
        assert self._persist is not None
        store = self._persist.store
        self._replaying = True
        try:
            versions = deque(store.model_versions(self.model.version))
            snapshot = store.latest_snapshot()
            start = last_command = 0
            if snapshot is not None:
                # the model as the snapshot saw it, then the actors' states
                while versions and versions[0].version <= snapshot.model_version:
                    self._reapply(versions.popleft())
                rows, last_command = Persistence.snapshot_rows(snapshot)
                for shard in self._shards:
                    self._absorb(shard.call(Restore(snapshot.taken_at, rows)))
                start = snapshot.log_offset
            commands = deque(store.commands(last_command))
            self._persist.last_offset = start
            for entry in store.read_log(start):
                # model changes, commands and batches in the order they happened
                while versions and versions[0].log_offset < entry.offset:
                    self._reapply(versions.popleft())
                while commands and commands[0][2] < entry.offset:
                    self._restore_command(commands.popleft())
                self._tick(entry.received_at)
                decoded = unpack_batch(entry.payload)
                parts = self._run_batch(entry.received_at, decoded.samples, decoded.indices,
                                        IngestReport())
                self._persist.derived(entry.offset, entry.received_at, parts, self._unsaved)
                self._unsaved = []
                self._counters["replayed_batches"] += 1
                self._counters["replayed_samples"] += decoded.size
            while versions:
                self._reapply(versions.popleft())
            while commands:
                self._restore_command(commands.popleft())
            for scheduled_id, effective, raw in store.scheduled_changes():
                self._schedule(effective, change_from_dict(json.loads(raw)), scheduled_id)
            self._unsaved = []
        finally:
            self._replaying = False
        self._tick(self.clock.now())
        log.info("restored", snapshot_offset=start, log_offset=self._persist.last_offset,
                 replayed_batches=self._counters["replayed_batches"])

