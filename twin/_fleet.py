"""The ``Fleet`` facade: what a control application embeds.

Threading model: a fleet may be shared between threads. Four locks, always taken in this
order, keep what is slow away from what must answer at once:

* the *ingest lock* orders batches: a batch is appended to the durable log and then applied
  before the next one is (the append, which waits on the store, holds only this lock);
* the *fleet lock* (``_lock``) guards the shards, the model and the store's offsets: calls to
  shards (each with a deadline), timers, model changes, commands;
* the *view lock* guards the roll-up tree, subscriptions, transitions and counters, held only
  for in-memory work: ``rollup``, ``rollups`` and ``subscribe`` take nothing else, so they
  never wait on the store or on a shard;
* the *delivery lock* orders subscription callbacks; they run on the thread that caused the
  change, after it let go of the other locks (a callback may call the fleet), before the
  call that caused them returns: keep them short (asyncio code: see :mod:`twin.aio`).

With a real clock (no ``clock=``) a daemon ticker thread runs :meth:`Fleet.tick` every
``tick_interval_s``, so offline detection never waits for the next API call. With a
``VirtualClock`` nothing runs on its own: time moves only in :meth:`Fleet.advance`. On the
multi-process bases a watch thread asks the shard supervisor about its shards every 0.1 s,
so a dead shard is counted unknown without waiting for any call (see
:mod:`twin.hosting.shard_watch`).
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import structlog

from actors.asset import CommandAccepted, Unavailable
from supervisors import SupervisionPolicy
from twin._failover import Failover
from twin._metrics import exposition, registry_for
from twin._recovery import Recovery
from twin.core.changes import (
    AddAsset,
    AddSite,
    Change,
    DecommissionAsset,
    ModelVersion,
    MoveAsset,
    apply_change,
    change_to_dict,
)
from twin.core.clock import Clock, RealClock, VirtualClock
from twin.core.errors import (
    AssetUnavailable,
    FleetClosed,
    IngestError,
    InvalidCommand,
    ShardDown,
    TwinError,
)
from twin.core.model import FleetModel
from twin.core.rollup import Rollup
from twin.core.samples import OUTCOMES, IngestReport, Sample, SampleError
from twin.core.states import ShardStatus, Transition
from twin.core.views import AssetView, CommandReceipt
from twin.hosting.system import EMBEDDED_BASE, Hosting, ShardClient
from twin.runtime.calls import (
    AddAssets,
    AddSites,
    AssetViewOf,
    Collect,
    Command,
    Decommission,
    ExportAsset,
    ImportAsset,
    Ingest,
    IngestRows,
    InjectFault,
    Metrics,
    MoveLocal,
    Release,
    ShardCall,
    Tick,
)
from twin.runtime.shard import ShardConfig, ShardOutput, partial_key
from twin.runtime.tree import RollupTree
from twin.store.persistence import Persistence
from twin.store.store import Store, StoreBusy, StoreUnavailable, open_store
from twin.wire import pack_batch, pack_rows, sample_error, unpack_batch

log = structlog.get_logger("twin.fleet")

T = TypeVar("T")

RollupCallback = Callable[[Rollup], None]


class Subscription:
    """A live subscription to one roll-up; ``cancel()`` ends it."""

    def __init__(self, fleet: Fleet, node_key: str, path: str, callback: RollupCallback) -> None:
        self._fleet = fleet
        self.node_key = node_key
        self.path = path
        self.callback = callback
        self.active = True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self._fleet._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


@dataclass(frozen=True, slots=True)
class PendingChange:
    """A model change scheduled for a future effective time."""

    effective: float
    change: Change


class Fleet(Recovery, Failover):
    """A running fleet: one actor per asset under supervisor trees, with live roll-ups.

    ``Fleet(model)`` runs embedded, in this process, on Thespian's ``simpleSystemBase``.
    ``shards`` splits the sites over several shard hosts (placement by site, balanced by
    asset count). ``system="multiprocTCPBase"`` runs each shard host in its own process,
    watched by a supervisor that restarts it (``shard_restart`` is that policy) and refills it
    from the store's snapshot and log; ``admin_port`` is the port of the fleet's own actor
    system (default: a free one). ``nodes`` places shard ``i`` on ``nodes[i % len(nodes)]``:
    ``"local"`` is this machine, any other name a ``twin node --join HOST:ADMIN_PORT --name
    NAME`` that joined (awaited up to ``join_timeout_s``); a node silent for
    ``heartbeat_timeout_s`` is dead and its shards restart on the live ones. ``bind`` is the
    one address the actor system's processes listen on (default loopback: nothing from
    another machine gets in; name the address nodes reach it on, see docs/security.md).
    ``supervision`` is the policy of each site's supervisor over its assets;
    ``site_supervision`` that of each shard's supervisor over its sites.
    ``command_sink`` is called with ``(asset_id, desired)`` for every accepted command (the
    transport to devices). ``store`` is a URL (SQLite file or PostgreSQL) or a
    :class:`Store`; ``store_options`` are the keyword options of :class:`Store` for a URL
    (``busy_timeout_s``, ``statement_timeout_s``, ``queue_batches``, ...).
    """

    def __init__(self, model: FleetModel, *, clock: Clock | None = None,
                 system: str = EMBEDDED_BASE, shards: int = 1,
                 supervision: SupervisionPolicy | None = None,
                 site_supervision: SupervisionPolicy | None = None,
                 command_sink: Callable[[str, Mapping[str, Any]], None] | None = None,
                 seed: int = 0, tick_interval_s: float = 0.5, resend_every_s: float = 60.0,
                 transitions_kept: int = 1000, call_timeout_s: float = 60.0,
                 store: str | Store | None = None,
                 store_options: Mapping[str, Any] | None = None,
                 snapshot_every_s: float = 300.0, snapshot_every_batches: int = 2000,
                 shard_restart: SupervisionPolicy | None = None,
                 admin_port: int | None = None, nodes: Sequence[str] = (),
                 join_timeout_s: float = 60.0, heartbeat_timeout_s: float = 5.0,
                 bind: str = "127.0.0.1") -> None:
        if not isinstance(model, FleetModel):
            raise TypeError(f"Fleet needs a FleetModel, got {type(model).__name__}")
        if shards < 1:
            raise ValueError(f"shards must be at least 1, got {shards}")
        self.model = model
        if store_options and not isinstance(store, str):
            raise TypeError(f"store_options needs store=URL, not {type(store).__name__}; a "
                            "Store takes its options itself: Store(url, busy_timeout_s=...)")
        self.clock: Clock = clock if clock is not None else RealClock()
        # taken in this order (see the module's docstring)
        self._ingest_lock = threading.RLock()
        self._lock = threading.RLock()
        self._view_lock = threading.RLock()
        self._deliver_lock = threading.RLock()
        self._closed = False
        self._command_sink = command_sink
        self._resend_every_s = resend_every_s
        self._last_resend = self.clock.now()
        # scheduled changes: (effective, order, change, id in the store's schedule or None)
        self._pending: list[tuple[float, int, Change, int | None]] = []
        self._pending_seq = 0
        self._subs: dict[str, list[Subscription]] = {}
        self._recent: deque[Transition] = deque(maxlen=transitions_kept)
        self._counters: dict[str, int] = {f"samples_{name}": 0 for name in OUTCOMES}
        self._counters.update(batches=0, batch_bytes=0, transitions=0, callback_errors=0,
                              model_changes=0, scheduled_change_failures=0, snapshots=0,
                              replayed_batches=0, replayed_samples=0, batches_refused=0,
                              shard_downs=0, shard_recoveries=0)
        self._transition_counts: dict[str, int] = {}
        self._unsaved: list[Transition] = []          # transitions not yet handed to the store
        self._replaying = False
        self._persist: Persistence | None = None
        self._tree = RollupTree(self.clock.now)
        self._registry = registry_for(self.metrics)
        self._hosting = Hosting(system, shards, call_timeout_s, restart_policy=shard_restart,
                                seed=seed, admin_port=admin_port, nodes=nodes,
                                join_timeout_s=join_timeout_s,
                                heartbeat_timeout_s=heartbeat_timeout_s, bind=bind)
        self._shards: list[ShardClient] = self._hosting.shards
        self._down: dict[int, str] = {}                 # shard index → why it is down
        self._site_shard: dict[str, int] = {}
        self._direct: dict[str, tuple[str, ...]] = {}   # asset id → groups listing it directly
        try:
            policy = supervision or SupervisionPolicy()
            site_policy = site_supervision or SupervisionPolicy(max_restarts=3, within_s=600.0)
            self._configs = [ShardConfig(shard.index, model.defaults, model.kinds, policy,
                                         site_policy, seed) for shard in self._shards]
            for shard in self._shards:
                shard.configure(self._configs[shard.index])
            self._build()
            if store is not None:
                self._persist = Persistence(
                    store if isinstance(store, Store) else open_store(store, store_options),
                    snapshot_every_s, snapshot_every_batches)
                self._restore()
        except BaseException:
            if self._persist is not None:
                self._persist.close()
            self._hosting.shutdown()
            raise
        self._hosting.watch_shards(self._on_shard_states)
        self._stop = threading.Event()
        self._ticker = self._start_ticker(tick_interval_s)

    def _start_ticker(self, interval: float) -> threading.Thread | None:
        """The thread that fires timers on the real clock (none on a VirtualClock)."""
        if isinstance(self.clock, VirtualClock):
            return None
        ticker = threading.Thread(target=self._tick_loop, args=(interval,), name="twin-ticker",
                                  daemon=True)
        ticker.start()
        return ticker

    # -- building -------------------------------------------------------------------------

    def _build(self) -> None:
        model = self.model
        load = [0] * len(self._shards)
        # biggest sites first onto the least loaded shard: explicit, even placement
        for site in sorted(model.sites.values(), key=lambda s: (-len(s.assets), s.id)):
            index = min(range(len(load)), key=load.__getitem__)
            self._site_shard[site.id] = index
            load[index] += len(site.assets) or 1
        self._direct = self._direct_memberships()
        for shard in self._shards:
            self._populate(shard)
        with self._view_lock:
            self._tree.wire(model, self._partial_leaves())
        self._collect_all()

    def _populate(self, shard: ShardClient) -> None:
        """Create the actors of every asset placed on ``shard`` (fresh: state comes later)."""
        model = self.model
        site_ids = [s for s, i in self._site_shard.items() if i == shard.index]
        for site_id in site_ids:
            shard.call(AddSites((site_id,)))
        specs = [spec for site_id in site_ids for spec in model.sites[site_id].assets.values()]
        direct = {a: g for a, g in self._direct.items() if a in model.assets and
                  self._site_shard[model.assets[a].site] == shard.index}
        shard.call(AddAssets(tuple(specs), direct))

    def _direct_memberships(self) -> dict[str, tuple[str, ...]]:
        direct: dict[str, list[str]] = {}
        for name in self.model.groups:
            _, assets = self.model.group_coverage(name)
            for asset_id in assets:
                direct.setdefault(asset_id, []).append(name)
        return {a: tuple(sorted(g)) for a, g in direct.items()}

    def _partial_leaves(self) -> list[tuple[str, str]]:
        leaves = set()
        for asset_id, groups in self._direct.items():
            spec = self.model.assets.get(asset_id)
            if spec is not None:
                for name in groups:
                    leaves.add((partial_key(name, self._site_shard[spec.site]), name))
        return sorted(leaves)

    # -- ingestion ------------------------------------------------------------------------

    def ingest(self, samples: Iterable[Sample] | bytes, *, source: str = "") -> IngestReport:
        """Apply a batch: ``Sample`` objects, or msgpack bytes in the wire format
        (:mod:`twin.wire`). Returns per-outcome counts (see :class:`IngestReport`).

        A malformed sample is rejected with an error naming its index, field and value; it
        never takes its batch-mates down. A batch that cannot be read as a whole raises
        :class:`IngestError` and changes nothing. With a store, the batch is in the durable
        log before this returns; :class:`StoreBusy` or :class:`StoreUnavailable` mean it was
        not accepted (nothing of it applied) and may be sent again. While the store is down,
        reads, subscriptions and timers go on: only other batches wait for this one.
        """
        report = IngestReport()
        payload, batch, given_indices, source = self._decode(samples, source, report)
        size = len(batch) if given_indices is None else report.rejected + len(batch)
        clean, indices = (batch, None) if given_indices is not None else self._screen(
            batch, report)
        if given_indices is not None:
            indices = ([given_indices[i] for i in indices] if indices is not None
                       else given_indices)
        with self._ingest_lock:           # batches are applied in the order they are logged
            self._check_open()
            now = self.clock.now()
            offset = 0
            if self._persist is not None:
                assert payload is not None
                try:
                    # durable before anything is applied: a refused batch changes nothing
                    offset = self._persist.append(now, source, payload, size)
                except (StoreBusy, StoreUnavailable):
                    self._counters["batches_refused"] += 1
                    raise
            with self._lock:
                self._check_open()
                self._fire_scheduled(now)
                parts = self._run_batch(now, clean, indices, report)
                if self._persist is not None:
                    self._persist.derived(offset, now, parts, self._unsaved)
                    self._unsaved = []
                with self._view_lock:
                    self._counters["batches"] += 1
                    self._counters["batch_bytes"] += len(payload) if payload is not None else 0
                    for name, n in report.counts().items():
                        self._counters[f"samples_{name}"] += n
                snapshot = self._due_snapshot(now)
            if snapshot is not None:
                self._save_due_snapshot(snapshot)     # waits on the store: not under _lock
        self._deliver()
        return report

    def _decode(self, samples: Iterable[Sample] | bytes, source: str, report: IngestReport
                ) -> tuple[bytes | None, list[Any], list[int] | None, str]:
        """(payload to log, samples, their indices in the batch if decoded, source)."""
        if isinstance(samples, str | Mapping):
            raise IngestError(f"a batch is msgpack bytes or a list of Sample objects, got "
                              f"{type(samples).__name__}")
        if isinstance(samples, bytes | bytearray | memoryview):
            payload: bytes | None = bytes(samples)
        else:
            batch = samples if isinstance(samples, list) else list(samples)
            if self._persist is None:
                return None, batch, None, source
            # log exactly what will be applied: encode, then apply the decoded batch, so that
            # a replay after a restart sees the very same samples
            payload = pack_batch(batch, source, self.clock.now())
        assert payload is not None
        decoded = unpack_batch(payload)
        report.rejected = len(decoded.errors)
        report.errors.extend(decoded.errors)
        return payload, decoded.samples, decoded.indices, decoded.source or source

    def _run_batch(self, now: float, clean: list[Sample], indices: list[int] | None,
                   report: IngestReport) -> list[tuple[list[Sample], bytes]]:
        """Hand a screened batch to the shards; returns its samples with their outcome codes
        (shard by shard) when a store wants them."""
        storing = self._persist is not None
        parts: list[tuple[list[Sample], bytes]] = []
        if not self._hosting.embedded:
            return self._run_batch_parallel(now, clean, indices, report)
        if len(self._shards) == 1:
            out = self._shards[0].call(Ingest(now, clean, indices, storing))
            self._absorb(out, report)
            parts.append((clean, bytes(out.outcomes or b"")))
        else:
            for shard, (part, part_indices) in self._route(clean, indices, report).items():
                out = shard.call(Ingest(now, part, part_indices, storing))
                self._absorb(out, report)
                parts.append((part, bytes(out.outcomes or b"")))
        return parts

    def _run_batch_parallel(self, now: float, clean: list[Sample], indices: list[int] | None,
                            report: IngestReport) -> list[tuple[list[Sample], bytes]]:
        """:meth:`_run_batch` over shard processes: every shard gets its part (msgpack rows)
        at once and they work in parallel. The part of a shard that is down is held: with a
        store it is in the log and applied when the shard is back (``deferred``), without
        one it is rejected."""
        storing = self._persist is not None
        calls: list[tuple[int, ShardCall[ShardOutput]]] = []
        sent: list[tuple[int, list[Sample], list[int]]] = []
        for shard, (part, part_indices) in self._route(clean, indices, report).items():
            if shard.index in self._down:
                self._hold(shard.index, part, part_indices, report)
                continue
            calls.append((shard.index, IngestRows(now, pack_rows(part), part_indices, storing)))
            sent.append((shard.index, part, part_indices))
        parts: list[tuple[list[Sample], bytes]] = []
        for (index, part, part_indices), out in zip(
                sent, self._hosting.call_many(calls, return_errors=True), strict=True):
            if isinstance(out, ShardDown):
                self._mark_down(index, out.reason or out.status)
                self._hold(index, part, part_indices, report)
            elif isinstance(out, BaseException):
                raise out
            else:
                self._absorb(out, report)
                parts.append((part, bytes(out.outcomes or b"")))
        return parts

    def _screen(self, batch: list[Any], report: IngestReport
                ) -> tuple[list[Sample], list[int] | None]:
        """Sample objects meet the wire format's rules too (see :func:`twin.wire.sample_error`),
        so a fleet applies the same samples with a store or without one."""
        if all(type(s) is Sample and type(s.asset_id) is str and type(s.signals) is dict and
               (s.seq is None or type(s.seq) is int) for s in batch):
            return batch, None
        clean: list[Sample] = []
        indices: list[int] = []
        for i, s in enumerate(batch):
            error = sample_error(i, s)
            if error is None:
                clean.append(s)
                indices.append(i)
            else:
                report.rejected += 1
                report.errors.append(error)
        return clean, indices

    def _route(self, batch: list[Sample], indices: list[int] | None, report: IngestReport
               ) -> dict[ShardClient, tuple[list[Sample], list[int]]]:
        parts: dict[ShardClient, tuple[list[Sample], list[int]]] = {}
        assets = self.model.assets
        site_shard = self._site_shard
        for i, sample in enumerate(batch):
            index = indices[i] if indices else i
            spec = assets.get(sample.asset_id) if isinstance(sample.asset_id, str) else None
            if spec is None:
                report.rejected += 1
                report.errors.append(SampleError(index, sample.asset_id, "asset_id",
                                                 sample.asset_id,
                                                 "unknown asset: not in the fleet model"))
                continue
            shard = self._shards[site_shard[spec.site]]
            part = parts.get(shard)
            if part is None:
                part = parts[shard] = ([], [])
            part[0].append(sample)
            part[1].append(index)
        return parts

    def _absorb(self, output: ShardOutput, report: IngestReport | None = None) -> None:
        if report is not None and output.counts is not None:
            report.add_counts(output.counts)
            report.errors.extend(output.errors)
        if output.transitions and self._persist is not None:
            self._unsaved.extend(output.transitions)
        with self._view_lock:
            if output.transitions:
                self._recent.extend(output.transitions)
                self._counters["transitions"] += len(output.transitions)
                for transition in output.transitions:
                    self._transition_counts[transition.new] = (
                        self._transition_counts.get(transition.new, 0) + 1)
            self._tree.absorb(output.summaries)

    def _call_up(self, calls: Sequence[tuple[int, ShardCall[T]]]) -> list[tuple[int, T]]:
        """Run calls on shards (in parallel when they are processes); a shard found dead is
        marked down and left out of the answer, any other error is raised."""
        values = []
        for (index, _), value in zip(calls, self._hosting.call_many(calls, return_errors=True),
                                        strict=True):
            if isinstance(value, ShardDown):
                self._mark_down(index, value.reason or value.status)
            elif isinstance(value, BaseException):
                raise value
            else:
                values.append((index, value))
        return values

    def _collect_all(self, full: bool = False) -> None:
        for shard in self._shards:
            if shard.index not in self._down:
                self._absorb(shard.call(Collect(full)))

    # -- time -----------------------------------------------------------------------------

    def advance(self, seconds: float) -> float:
        """Move a ``VirtualClock`` forward and run every timer now due; returns the time."""
        with self._lock:
            self._check_open()
            if not isinstance(self.clock, VirtualClock):
                raise TypeError("advance() needs a VirtualClock; the real clock runs on its own")
            target = self.clock.now() + seconds
            if not seconds >= 0:
                raise ValueError(f"time only moves forward: advance({seconds!r})")
            # stop at every scheduled model change, so timers and changes keep their order
            while self._pending and self._pending[0][0] <= target:
                self.clock.jump_to(max(self._pending[0][0], self.clock.now()))
                self._tick(self.clock.now())
            self.clock.jump_to(target)
            self._tick(target)
        self._deliver()
        return target

    def tick(self) -> None:
        """Run every timer due at the clock's current time (the ticker thread calls this)."""
        with self._lock:
            self._check_open()
            self._tick(self.clock.now())
        self._deliver()

    def _tick(self, now: float) -> None:
        if not self._hosting.embedded and not self._replaying:
            self._watch_shards(now)
        self._fire_scheduled(now)
        full = now - self._last_resend >= self._resend_every_s
        if full:
            self._last_resend = now
        up = [shard.index for shard in self._shards if shard.index not in self._down]
        calls: list[tuple[int, ShardCall[ShardOutput]]] = [(i, Tick(now)) for i in up]
        if full:
            calls += [(i, Collect(True)) for i in up]
        for _, out in self._call_up(calls):
            self._absorb(out)
        if self._persist is not None and self._unsaved and not self._replaying:
            self._persist.derived(self._persist.last_offset, now, [], self._unsaved)
            self._unsaved = []

    def _tick_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.tick()
            except FleetClosed:
                return
            except Exception:
                log.exception("tick_failed")

    # -- queries --------------------------------------------------------------------------

    def rollup(self, path: str) -> Rollup:
        """The roll-up of an owner, region, site (``owner/region/site``) or extra group.
        Never waits for the store or a shard."""
        with self._view_lock:
            self._check_open()
            return self._tree.lookup(path).snapshot()

    def rollups(self, level: str | None = None) -> dict[str, Rollup]:
        """Every roll-up (of one ``level``: owner, region, site, group), by path. Never waits
        for the store or a shard."""
        with self._view_lock:
            self._check_open()
            return {p: self._tree.lookup(p).snapshot() for p in self._tree.paths(level)}

    def asset(self, asset_id: str) -> AssetView:
        """The asset's three views (expected, desired, reported), state and data quality;
        :class:`ShardDown` while the process holding it is down."""
        with self._lock:
            self._check_open()
            spec = self.model.asset(asset_id)
            view = self._shard_of(asset_id).call(AssetViewOf(asset_id))
            quality = {"accepted": view["accepted"], **view["quality"]}
            return AssetView(spec.id, spec.kind, self.model.sites[spec.site].path,
                             view["state"], spec.expected(), view["desired"], view["reported"],
                             view["last_seen"], view["last_sample_ts"], quality,
                             view["restarts"], self.clock.now())

    def transitions(self, limit: int | None = None) -> list[Transition]:
        """Recent state transitions, oldest first."""
        with self._view_lock:
            items = list(self._recent)
        return items if limit is None else items[-limit:]

    def model_at(self, when: float) -> FleetModel:
        """The model version that governed at ``when``."""
        with self._lock:
            return self.model.at(when)

    def metrics(self) -> dict[str, Any]:
        with self._lock:
            self._check_open()
            shards = [m for _, m in self._call_up([(s.index, Metrics()) for s in self._shards
                                                    if s.index not in self._down])]
            out: dict[str, Any] = {}
            with self._view_lock:
                out.update(self._counters)
                out["transitions_by_state"] = dict(self._transition_counts)
                by_state: dict[str, int] = {}
                # keyed by state name: a roll-up's `reporting` counts the assets `online`
                for rollup in self._tree.top_level():
                    for state, field in (("online", "reporting"), ("offline", "offline"),
                                         ("unknown", "unknown"), ("quarantined", "quarantined")):
                        by_state[state] = by_state.get(state, 0) + getattr(rollup, field)
                out["subscriptions"] = sum(len(v) for v in self._subs.values())
            for key in ("failures", "restarts", "quarantines", "escalations"):
                out[f"supervisor_{key}"] = sum(s[key] for s in shards)
            out["assets"] = sum(s["assets"] for s in shards)
            out["assets_by_state"] = by_state
            if self._persist is not None:
                writer = self._persist.store.writer
                out.update(store_queue_depth=writer.depth, store_rows_written=writer.written_rows,
                           store_write_retries=writer.retries, store_writes=writer.writes,
                           store_rows_failed=writer.failed_rows,
                           store_write_seconds=writer.write_seconds,
                           store_writer_restarts=writer.restarts,
                           store_log_offset=self._persist.last_offset)
            out["liveness_timer_arms"] = sum(s["wheel_arms"] for s in shards)
            out["shards"] = len(self._shards)
            out["shards_down"] = len(self._down)
            out["shard_restarts"] = sum(s.restarts for s in self._shard_states)
            out["pending_changes"] = len(self._pending)
            out["model_version"] = self.model.version
            return out

    def metrics_text(self) -> bytes:
        """The counters in Prometheus text format (``twin_samples_total{outcome="late"}``)."""
        return exposition(self._registry)

    # -- control --------------------------------------------------------------------------

    def command(self, asset_id: str, payload: Mapping[str, Any]) -> CommandReceipt:
        """Send a command to an asset; refused with :class:`AssetUnavailable` unless online,
        :class:`InvalidCommand` if its kind does not take it."""
        with self._lock:
            self._check_open()
            self.model.asset(asset_id)
            now = self.clock.now()
            output = self._shard_of(asset_id).call(Command(now, asset_id, payload))
            self._absorb(output)
            reply = output.reply
            if isinstance(reply, CommandAccepted):
                if self._persist is not None:
                    changed = {k: v for k, v in reply.desired.items() if k in payload}
                    self._persist.record_command(now, asset_id, changed)
                if self._command_sink is not None:      # in the order commands were accepted
                    self._command_sink(asset_id, reply.desired)
        self._deliver()
        if isinstance(reply, Unavailable):
            raise AssetUnavailable(reply.asset_id, reply.state, reply.last_seen)
        if isinstance(reply, InvalidCommand):
            raise reply
        if not isinstance(reply, CommandAccepted):
            raise TwinError(f"asset {asset_id!r} failed while handling the command "
                            f"({reply!r}); it is being restarted")
        return CommandReceipt(asset_id, reply.desired, now)

    def inject_fault(self, asset_id: str, reason: str = "injected fault") -> None:
        """Make the asset's actor raise inside its handler (chaos testing of supervision)."""
        with self._lock:
            self._check_open()
            self.model.asset(asset_id)
            self._absorb(self._shard_of(asset_id).call(
                InjectFault(self.clock.now(), asset_id, reason)))
        self._deliver()

    def release(self, asset_id: str) -> None:
        """Let a quarantined asset run again (it is ``unknown`` until it reports)."""
        with self._lock:
            self._check_open()
            self.model.asset(asset_id)
            self._absorb(self._shard_of(asset_id).call(Release(self.clock.now(), asset_id)))
        self._deliver()

    # -- model changes --------------------------------------------------------------------

    def apply(self, change: Change, effective: float | None = None
              ) -> ModelVersion | PendingChange:
        """Change the model, effective at unix time ``effective`` (default: now).

        A past or present effective time applies at once (roll-ups follow before this
        returns) and is recorded in the model's history at that time; a future one is
        scheduled and applied when the clock gets there.
        """
        with self._lock:
            self._check_open()
            now = self.clock.now()
            when = now if effective is None else float(effective)
            if when <= now:
                for index, reason in self._down.items():
                    # a shard that is down cannot follow the change; it waits for nobody
                    raise ShardDown(index, ShardStatus.DOWN, f"{reason}; model changes wait "
                                    "until every shard is up")
            if when > now:
                scheduled_id = (self._persist.schedule(when, change_to_dict(change))
                                if self._persist is not None else None)
                self._schedule(when, change, scheduled_id)
                return PendingChange(when, change)
            version = self._apply_now(change, when, now)
        self._deliver()
        return version

    def _schedule(self, when: float, change: Change, scheduled_id: int | None) -> None:
        bisect.insort(self._pending, (when, self._pending_seq, change, scheduled_id),
                      key=lambda item: (item[0], item[1]))
        self._pending_seq += 1

    def pending_changes(self) -> list[PendingChange]:
        with self._lock:
            return [PendingChange(when, change) for when, _, change, _ in self._pending]

    def _fire_scheduled(self, now: float) -> None:
        if self._down:
            return                     # applied once every shard is up again
        while self._pending and self._pending[0][0] <= now:
            when, _, change, scheduled_id = self._pending.pop(0)
            try:
                self._apply_now(change, when, now, scheduled_id)
            except (TwinError, ValueError) as error:
                if self._persist is not None and scheduled_id is not None:
                    self._persist.store.finish_scheduled(scheduled_id)
                self._counters["scheduled_change_failures"] += 1
                log.error("scheduled_change_failed", change=repr(change), effective=when,
                          reason=str(error))

    def _apply_now(self, change: Change, effective: float, now: float,
                   scheduled_id: int | None = None) -> ModelVersion:
        model = self.model
        before = (model.assets.get(change.asset)
                  if isinstance(change, DecommissionAsset | MoveAsset) else None)
        version = apply_change(model, change, effective, now)
        self._counters["model_changes"] += 1
        if self._persist is not None and not self._replaying:
            self._persist.record_change(version.version, effective, now, change_to_dict(change),
                                        scheduled_id)
        if isinstance(change, AddSite):
            index = min(range(len(self._shards)),
                        key=lambda i: (sum(1 for s in self._site_shard.values() if s == i), i))
            self._site_shard[change.site] = index
            self._shards[index].call(AddSites((change.site,)))
        direct = self._direct_memberships()
        placed: set[str] = set()       # assets placed with their final direct groups below
        if isinstance(change, AddAsset):
            spec = version.undo
            placed.add(spec.id)
            self._shard_of(spec.id).call(AddAssets((spec,), {spec.id: direct.get(spec.id, ())}))
        elif isinstance(change, DecommissionAsset):
            assert before is not None
            shard = self._shards[self._site_shard[before.site]]
            self._absorb(shard.call(Decommission(now, before.id)))
        elif isinstance(change, MoveAsset):
            assert before is not None
            spec = model.assets[change.asset]
            source = self._shards[self._site_shard[before.site]]
            target = self._shards[self._site_shard[spec.site]]
            groups = direct.get(spec.id, ())
            placed.add(spec.id)
            if source is target:
                self._absorb(source.call(MoveLocal(now, spec, groups)))
            else:
                out = source.call(ExportAsset(now, spec.id))
                self._absorb(out)
                self._absorb(target.call(ImportAsset(now, spec, out.reply, groups)))
        # direct group memberships may shift after any change (coverage is normalized)
        for asset_id in sorted((set(direct) | set(self._direct)) - placed):
            if asset_id in model.assets and direct.get(asset_id) != self._direct.get(asset_id):
                spec = model.assets[asset_id]
                self._absorb(self._shard_of(asset_id).call(
                    MoveLocal(now, spec, direct.get(asset_id, ()))))
        self._direct = direct
        leaves = self._partial_leaves()
        with self._view_lock:
            self._tree.wire(model, leaves)
        self._collect_all()
        log.info("model_changed", version=version.version, change=type(change).__name__,
                 effective=effective)
        return version

    # -- subscriptions --------------------------------------------------------------------

    def subscribe(self, path: str, callback: RollupCallback) -> Subscription:
        """Call ``callback(rollup)`` after every change of the roll-up at ``path``."""
        with self._view_lock:
            self._check_open()
            node = self._tree.lookup(path)
            sub = Subscription(self, node.key, path, callback)
            self._subs.setdefault(node.key, []).append(sub)
            return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._view_lock:
            subs = self._subs.get(sub.node_key, [])
            if sub in subs:
                subs.remove(sub)
            if not subs:
                self._subs.pop(sub.node_key, None)

    def _deliver(self) -> None:
        """Call the subscribers of every roll-up that changed since the last delivery.

        Called at the end of a public method, with no other lock of the fleet held (a callback
        may call the fleet); one delivery at a time, so a subscriber sees its roll-up's
        values in the order they were taken."""
        with self._deliver_lock:
            with self._view_lock:
                changed = self._tree.take_changed()
                if not self._subs:
                    return
                due: list[tuple[Subscription, Rollup]] = []
                for node in changed:
                    subs = self._subs.get(node.key)
                    if subs:
                        rollup = node.snapshot()
                        due.extend((sub, rollup) for sub in subs)
            for sub, rollup in due:
                if not sub.active:
                    continue
                try:
                    sub.callback(rollup)
                except Exception as error:
                    self._counters["callback_errors"] += 1
                    log.error("subscriber_failed", path=sub.path, reason=repr(error))

    # -- lifecycle ------------------------------------------------------------------------

    def _shard_of(self, asset_id: str) -> ShardClient:
        index = self._site_shard[self.model.asset(asset_id).site]
        if index in self._down:
            raise ShardDown(index, ShardStatus.DOWN, self._down[index])
        return self._shards[index]

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (read without the lock: a readiness probe)."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise FleetClosed("the fleet is closed")

    def close(self) -> None:
        """Stop the ticker, write what the store still has queued, stop the actor system.
        Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join()
        with self._ingest_lock:      # a batch still being appended is finished (or refused)
            pass
        if self._persist is not None:
            self._persist.close()
        self._hosting.shutdown()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._shards)} shard(s)"
        return f"<Fleet {self.model.summary()}, {state}>"
