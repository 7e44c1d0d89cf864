"""Shard processes that die, and come back (DESIGN decisions 1 and 4).

A mixin of :class:`twin.Fleet`, like :mod:`twin._recovery`. On the multi-process bases the
fleet supervisor (a Thespian actor) restarts a dead shard host; the facade, which holds the
model and the store, notices through its shard watch (a thread that asks the supervisor every
0.1 s, waiting behind no call), or when a call to that shard fails, and:

1. marks the shard *down*: its sites' leaves are replaced by summaries that count every one
   of its assets as ``unknown`` and missing, so roll-ups stay honest rather than shrinking;
2. once the supervisor has a new host, refills it: the actors of its sites, their states from
   the newest snapshot, the commands since, and the durable log replayed from the snapshot's
   offset (only this shard's samples); then the shard's real summaries replace the unknowns.
   This happens on the next tick (the ticker thread's, or ``advance``).

Past the supervisor's restart intensity the shard stays ``failed``: its assets stay unknown
and listed missing, and ``fleet.shards()``, the logs and the metrics say why.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from actors.asset import capacity_w
from actors.groups import LeafSummary
from twin.core.clock import Clock
from twin.core.model import FleetModel
from twin.core.rollup import ROW_CAPACITY_W, ROW_UNKNOWN, ROW_WIDTH
from twin.core.samples import IngestReport, Sample, SampleError
from twin.core.states import ShardStatus, Transition
from twin.hosting.host_actors import ShardState
from twin.runtime.calls import Collect, Replay, Restore, RestoreDesired, Tick
from twin.runtime.shard import ShardConfig, partial_key, site_key
from twin.runtime.tree import RollupTree
from twin.store.persistence import Persistence
from twin.wire import pack_rows, unpack_batch

if TYPE_CHECKING:
    from twin.hosting.system import Hosting, ShardClient

log = structlog.get_logger("twin.fleet")

_REPLAY_CHUNK = 64          # logged batches per replay call into a shard host


class Failover:
    """Shard-host failure and recovery, for :class:`twin.Fleet`."""

    # provided by Fleet
    model: FleetModel
    clock: Clock
    _lock: threading.RLock
    _view_lock: threading.RLock
    _closed: bool
    _hosting: Hosting
    _shards: list[ShardClient]
    _configs: list[ShardConfig]
    _down: dict[int, str]
    _site_shard: dict[str, int]
    _direct: dict[str, tuple[str, ...]]
    _tree: RollupTree
    _persist: Persistence | None
    _counters: dict[str, int]
    _check_open: Callable[[], None]
    _absorb: Callable[..., None]
    _deliver: Callable[[], None]
    _tick: Callable[[float], None]
    _populate: Callable[[ShardClient], None]
    _partial_leaves: Callable[[], list[tuple[str, str]]]
    _unsaved: list[Transition]

    _shard_states: tuple[ShardState, ...] = ()
    _last_recovery_s: float | None = None

    # -- what an operator sees --------------------------------------------------------------

    def shards(self) -> list[dict[str, Any]]:
        """Every shard host: ``status`` (running, down, recovering, failed), its process id,
        generation (restarts so far), sites and assets, and why it is down if it is."""
        with self._lock:
            self._check_open()
            states = self._hosting.status()
            self._shard_states = states
            out = []
            for state in states:
                i = state.index
                status = state.status
                if (status.dead and not self._hosting.embedded and
                        state.generation >= self._hosting.generations[i]):
                    self._mark_down(i, state.reason)        # the supervisor says why
                if status == ShardStatus.RESTARTING or (
                        status == ShardStatus.RUNNING and i in self._down):
                    status = ShardStatus.RECOVERING
                sites = [s for s, k in self._site_shard.items() if k == i]
                out.append({"index": i, "node": state.node, "status": status,
                            "generation": state.generation,
                            "restarts": state.restarts, "pid": self._hosting.pids.get(i),
                            "sites": len(sites),
                            "assets": sum(len(self.model.sites[s].assets) for s in sites),
                            "reason": self._down.get(
                                i, state.reason if status != ShardStatus.RUNNING else "")})
            return out

    def wait_for_shards(self, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Block until no shard is down or recovering (each is running, or failed for good),
        or ``timeout_s`` passes; returns :meth:`shards`. Real time: shard hosts are processes.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                self._check_open()
                self._tick(self.clock.now())
                states = self.shards()
            self._deliver()
            if all(s["status"] in (ShardStatus.RUNNING, ShardStatus.FAILED) for s in states):
                return states
            if time.monotonic() >= deadline:
                return states
            time.sleep(0.02)

    # -- noticing ---------------------------------------------------------------------------

    def _watch_shards(self, now: float) -> None:
        """Act on what the shard watch last heard: mark dead shards down, refill new hosts."""
        states = self._hosting.latest_status()
        self._shard_states = states
        for state in states:
            i = state.index
            ours = self._hosting.generations[i]
            if state.generation < ours:
                continue                  # heard before the host in use was adopted
            if state.status.dead:
                self._mark_down(i, state.reason)
            elif state.generation != ours or i in self._down:
                self._mark_down(i, state.reason or "shard host restarted")
                # a host still "running" that a call found dead waits for its supervisor
                if state.status == ShardStatus.RESTARTING:
                    self._recover_shard(state, now)

    def _on_shard_states(self, states: tuple[ShardState, ...]) -> bool:
        """From the shard watch's thread: count a dead shard's assets unknown at once.

        It never waits: when the fleet's lock is busy it returns False and is called again
        after the next poll; meanwhile whoever holds the lock learns the same from the watch
        (a call to a dead shard gives up on it by itself)."""
        gens = self._hosting.generations
        dead = [s for s in states if s.index not in self._down and s.generation >= gens[s.index]
                and (s.status.dead or s.generation > gens[s.index])]
        if not dead:
            return True
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if not self._closed:
                for state in dead:
                    if state.generation >= self._hosting.generations[state.index]:
                        self._mark_down(state.index, state.reason or "shard host restarted")
        finally:
            self._lock.release()
        return True

    def _mark_down(self, index: int, reason: str) -> None:
        """Count the shard's assets as unknown (and missing) until it is back."""
        if index in self._down:
            self._down[index] = reason or self._down[index]
            return
        self._down[index] = reason
        keys, summaries = self._unknown_leaves(index)
        with self._view_lock:
            self._counters["shard_downs"] += 1
            self._tree.forget_leaves(keys)
            self._tree.absorb(summaries)
        log.error("shard_down", shard=index, reason=reason,
                  assets=sum(len(self.model.sites[s].assets) for s, i in self._site_shard.items()
                             if i == index))

    def _unknown_leaves(self, index: int) -> tuple[list[str], list[LeafSummary]]:
        """The shard's leaf keys, and summaries counting all their assets as unknown."""
        model = self.model
        members: dict[str, list[str]] = {}
        for site_id, shard in self._site_shard.items():
            if shard == index and site_id in model.sites:
                members[site_key(site_id)] = list(model.sites[site_id].assets)
        for leaf, name in self._partial_leaves():
            if leaf == partial_key(name, index):
                members[leaf] = [a for a, groups in self._direct.items() if name in groups and
                                 a in model.assets and
                                 self._site_shard[model.assets[a].site] == index]
        summaries = []
        for key, asset_ids in members.items():
            rows: dict[str, list[int]] = {}
            for asset_id in asset_ids:
                spec = model.assets[asset_id]
                row = rows.setdefault(spec.kind, [0] * ROW_WIDTH)
                row[ROW_UNKNOWN] += 1
                row[ROW_CAPACITY_W] += capacity_w(spec)
            summaries.append(LeafSummary(
                key, 1, {kind: tuple(row) for kind, row in rows.items()},  # type: ignore[misc]
                ((key, frozenset(asset_ids)),)))
        return list(members), summaries

    def _hold(self, index: int, part: list[Sample], indices: list[int],
              report: IngestReport) -> None:
        """Samples for a shard that is down: with a store they are in the log and will be
        applied when it is back; without one they cannot be, and are rejected."""
        if self._persist is not None:
            report.deferred += len(part)
            return
        report.rejected += len(part)
        reason = self._down.get(index, ShardStatus.DOWN)
        report.errors.extend(SampleError(i, s.asset_id, "asset_id", s.asset_id,
                                         f"the shard holding this asset is down ({reason}) "
                                         "and the fleet has no store to keep the sample for it")
                             for i, s in zip(indices, part, strict=True))

    # -- coming back ------------------------------------------------------------------------

    def _recover_shard(self, state: ShardState, now: float) -> None:
        started = time.monotonic()
        index = state.index
        self._hosting.adopt(state)
        shard = self._shards[index]
        try:
            shard.configure(self._configs[index])
            self._populate(shard)
            if self._persist is not None:
                self._refill(shard, now)
            shard.call(Tick(now))
            full = shard.call(Collect(True))
        except Exception as error:    # the host died again, or the store is away: next tick
            log.error("shard_recovery_failed", shard=index, reason=str(error))
            return
        keys, _ = self._unknown_leaves(index)
        with self._view_lock:
            self._tree.forget_leaves(keys)
            self._absorb(full)
            self._counters["shard_recoveries"] += 1
        del self._down[index]
        self._hosting.recovered(index)
        self._last_recovery_s = time.monotonic() - started
        log.info("shard_recovered", shard=index, generation=state.generation,
                 seconds=round(self._last_recovery_s, 3))

    def _placed_on(self, asset_id: Any) -> int | None:
        spec = self.model.assets.get(asset_id) if type(asset_id) is str else None
        return None if spec is None else self._site_shard[spec.site]

    def _refill(self, shard: ShardClient, now: float) -> None:
        """Give a new shard host its actors' states back: snapshot, commands, log replay.

        The log is replayed up to the newest batch the fleet applied (or held for this
        shard): a batch logged after it is still on its way through ``ingest``, which applies
        it to this shard itself once the shard is back."""
        assert self._persist is not None
        store = self._persist.store
        index = shard.index
        applied = self._persist.last_offset
        snapshot = store.latest_snapshot()
        start = last_command = 0
        if snapshot is not None:
            rows, last_command = Persistence.snapshot_rows(snapshot)
            shard.call(Restore(snapshot.taken_at,
                               {a: row for a, row in rows.items() if self._placed_on(a) == index}))
            start = snapshot.log_offset
        for _, asset_id, _, desired in store.commands(last_command):
            if self._placed_on(asset_id) == index:
                shard.call(RestoreDesired(asset_id, json.loads(desired)))
        chunk: list[tuple[float, bytes]] = []
        meta: list[tuple[int, float, list[Sample]]] = []
        for entry in store.read_log(start):
            if entry.offset > applied:
                break
            mine = [s for s in unpack_batch(entry.payload).samples
                    if self._placed_on(s.asset_id) == index]
            if mine:
                chunk.append((entry.received_at, pack_rows(mine)))
                meta.append((entry.offset, entry.received_at, mine))
            if len(chunk) >= _REPLAY_CHUNK:
                self._replay_chunk(shard, chunk, meta)
                chunk, meta = [], []
        if chunk:
            self._replay_chunk(shard, chunk, meta)

    def _replay_chunk(self, shard: ShardClient, chunk: list[tuple[float, bytes]],
                      meta: list[tuple[int, float, list[Sample]]]) -> None:
        assert self._persist is not None
        out = shard.call(Replay(tuple(chunk)))
        self._absorb(out)
        # the store's rows again (idempotent): samples held while the shard was down get
        # theirs only now
        unsaved = self._unsaved
        for n, ((offset, received_at, samples), codes) in enumerate(
                zip(meta, out.reply, strict=True)):
            self._persist.derived(offset, received_at, [(samples, codes)],
                                  unsaved if n == len(meta) - 1 else [])
        if unsaved:
            unsaved.clear()
        with self._view_lock:
            self._counters["replayed_batches"] += len(chunk)
            self._counters["replayed_samples"] += sum(len(m[2]) for m in meta)
