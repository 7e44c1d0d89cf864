"""The ``Fleet`` facade: what a control application embeds. It owns its collaborators and
hands each the shared :class:`~twin.fleet.core.FleetCore`; every method here delegates.

A fleet may be shared between threads; :mod:`twin.fleet.core` says which of its four locks
each call takes, so reads and timers never wait on the store or on a shard. Subscription
callbacks run on the thread that caused the change, before its call returns (keep them short;
asyncio code: see :mod:`twin.aio`).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar

import structlog

from supervisors import SupervisionPolicy
from twin.control.states import CommandState
from twin.control.table import CommandEvent, CommandRecord
from twin.control.transport import CommandSink, CommandTransport
from twin.core.changes import Change, ModelVersion
from twin.core.clock import Clock, RealClock
from twin.core.model import FleetModel
from twin.core.rollup import Rollup
from twin.core.samples import IngestReport, Sample
from twin.core.states import Transition
from twin.core.views import AssetView, CommandReceipt
from twin.fleet.changes import ModelChanges, PendingChange
from twin.fleet.chaos import Chaos
from twin.fleet.control import Control, ControlOptions, make_transport
from twin.fleet.core import FleetCore
from twin.fleet.dispatching import Dispatch, Dispatching, ReportCallback
from twin.fleet.failover import Failover
from twin.fleet.ingest import IngestPath
from twin.fleet.metrics import exposition, fleet_metrics, registry_for
from twin.fleet.recovery import Recovery, Snapshots
from twin.fleet.subscriptions import (
    RollupCallback,
    StreamSubscription,
    Subscription,
    Subscriptions,
)
from twin.fleet.timers import Timers
from twin.hosting.system import EMBEDDED_BASE, Hosting
from twin.runtime.shard import ShardConfig
from twin.store.control_log import ControlLog
from twin.store.persistence import Persistence
from twin.store.store import Store, open_store

log = structlog.get_logger("twin.fleet")

T = TypeVar("T")


class Fleet:
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
    ``transport`` takes every command to its device and reports acknowledgements back
    (:class:`~twin.control.transport.CommandTransport`); ``command_sink``, a plain callable
    ``(asset_id, desired)``, is the simple form of one. ``control`` tunes leases, resends,
    convergence and dispatch (:class:`ControlOptions`; docs/control.md). ``store`` is a URL
    (SQLite file or PostgreSQL) or a :class:`Store`; ``store_options`` are the keyword
    options of :class:`Store` for a URL (``busy_timeout_s``, ``statement_timeout_s``,
    ``queue_batches``, ...).
    """

    def __init__(self, model: FleetModel, *, clock: Clock | None = None,
                 system: str = EMBEDDED_BASE, shards: int = 1,
                 supervision: SupervisionPolicy | None = None,
                 site_supervision: SupervisionPolicy | None = None,
                 command_sink: CommandSink | None = None,
                 transport: CommandTransport | None = None,
                 control: ControlOptions | None = None,
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
        if store_options and not isinstance(store, str):
            raise TypeError(f"store_options needs store=URL, not {type(store).__name__}; a "
                            "Store takes its options itself: Store(url, busy_timeout_s=...)")
        self.model = model
        self.clock: Clock = clock if clock is not None else RealClock()
        hosting = Hosting(system, shards, call_timeout_s, restart_policy=shard_restart,
                          seed=seed, admin_port=admin_port, nodes=nodes,
                          join_timeout_s=join_timeout_s,
                          heartbeat_timeout_s=heartbeat_timeout_s, bind=bind)
        policy = supervision or SupervisionPolicy()
        site_policy = site_supervision or SupervisionPolicy(max_restarts=3, within_s=600.0)
        configs = [ShardConfig(i, model.defaults, model.kinds, policy, site_policy, seed)
                   for i in range(shards)]
        core = self._core = FleetCore(model, self.clock, hosting, configs,
                                      transitions_kept=transitions_kept,
                                      resend_every_s=resend_every_s)
        self._changes = ModelChanges(core)
        self._snapshots = Snapshots(core)
        self._ingest = IngestPath(core, self._changes, self._snapshots)
        self._recovery = Recovery(core, self._changes.reapply, self._changes.schedule)
        self._failover = Failover(core, self._recovery)
        self._control = Control(core, make_transport(transport, command_sink),
                                control or ControlOptions(), random.Random(seed * 7919 + 17))
        self._dispatching = Dispatching(core, self._control)
        self._timers = Timers(core, self._changes, self._failover, self._control.tick)
        self._subscriptions = Subscriptions(core)
        self._chaos = Chaos(core)
        self._registry = registry_for(self.metrics)
        try:
            for shard in core.shards:
                shard.configure(configs[shard.index])
            core.build()
            if store is not None:
                core.persist = Persistence(
                    store if isinstance(store, Store) else open_store(store, store_options),
                    snapshot_every_s, snapshot_every_batches)
                self._recovery.restore()
                self._restore_control(core.persist.store)
                self._timers.tick_at(self.clock.now())      # let time catch up to now
        except BaseException:
            if core.persist is not None:
                core.persist.close()
            hosting.shutdown()
            raise
        hosting.watch_shards(self._failover.on_shard_states)
        self._timers.start(tick_interval_s, self.tick)

    def _restore_control(self, store: Store) -> None:
        control_log = ControlLog(store)
        self._control.attach_store(control_log)
        now = self.clock.now()
        reopened = self._control.restore(now)
        resumed = self._dispatching.restore(control_log.active_dispatches(), now)
        self._control.write()
        if reopened or resumed:
            log.info("control_restored", open_commands=reopened, dispatches=resumed)

    # -- ingestion and time -----------------------------------------------------------------

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
        report = self._ingest.ingest(samples, source)
        self._subscriptions.deliver()
        return report

    def advance(self, seconds: float) -> float:
        """Move a ``VirtualClock`` forward and run every timer now due; returns the time."""
        return self._locked(lambda: self._timers.advance(seconds))

    def tick(self) -> None:
        """Run every timer due at the clock's current time (the ticker thread calls this)."""
        self._locked(lambda: self._timers.tick_at(self.clock.now()))

    # -- queries ----------------------------------------------------------------------------

    def rollup(self, path: str) -> Rollup:
        """The roll-up of an owner, region, site (``owner/region/site``) or extra group.
        Never waits for the store or a shard."""
        with self._core.view_lock:
            self._core.check_open()
            return self._core.tree.lookup(path).snapshot()

    def rollups(self, level: str | None = None) -> dict[str, Rollup]:
        """Every roll-up (of one ``level``: owner, region, site, group), by path. Never waits
        for the store or a shard."""
        tree = self._core.tree
        with self._core.view_lock:
            self._core.check_open()
            return {p: tree.lookup(p).snapshot() for p in tree.paths(level)}

    def asset(self, asset_id: str) -> AssetView:
        """The asset's three views (expected, desired, reported), state and data quality,
        its desired version and whether it follows its setpoint; :class:`ShardDown` while
        the process holding it is down."""
        view = self._locked(lambda: self._core.asset_view(asset_id))
        desired, version, following = self._control.desired_of(asset_id)
        if not version:
            return view
        return dataclasses.replace(view, desired={**view.desired, **desired},
                                   desired_version=version, following=following)

    def transitions(self, limit: int | None = None) -> list[Transition]:
        """Recent state transitions, oldest first."""
        with self._core.view_lock:
            items = list(self._core.recent)
        return items if limit is None else items[-limit:]

    def model_at(self, when: float) -> FleetModel:
        """The model version that governed at ``when``."""
        with self._core.lock:
            return self.model.at(when)

    @property
    def placement(self) -> Mapping[str, int]:
        """Site id → index of the shard that holds it (read-only)."""
        return MappingProxyType(self._core.placement.site_shard)

    def metrics(self) -> dict[str, Any]:
        return self._locked(lambda: fleet_metrics(
            self._core, len(self._changes.pending), len(self._subscriptions),
            self._control.metrics(self._dispatching.figures())))

    def metrics_text(self) -> bytes:
        """The counters in Prometheus text format (``twin_samples_total{outcome="late"}``)."""
        return exposition(self._registry)

    # -- shards -----------------------------------------------------------------------------

    def shards(self) -> list[dict[str, Any]]:
        """Every shard host: ``status`` (running, down, recovering, failed), its process id,
        generation (restarts so far), sites and assets, and why it is down if it is."""
        return self._locked(self._failover.shards)

    def wait_for_shards(self, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Block until no shard is down or recovering (each is running, or failed for good),
        or ``timeout_s`` passes; returns :meth:`shards`. Real time: shard hosts are processes.
        """
        return self._failover.wait(self.tick, self.shards, timeout_s)

    # -- control ----------------------------------------------------------------------------

    def command(self, asset_id: str, payload: Mapping[str, Any], *, ttl_s: float | None = None,
                if_version: int | None = None) -> CommandReceipt:
        """Send a command to an asset; refused with :class:`AssetUnavailable` unless online,
        :class:`InvalidCommand` if its kind does not take it, :class:`VersionConflict` if
        ``if_version`` is not the asset's desired version (nothing changes then).

        With ``ttl_s`` the command is a lease: when it ends, the asset's desired view reverts
        to its kind's default, which is sent to the device too; re-issue to renew. The
        receipt's ``state`` follows the command (sent, delivered, applied, ...)."""
        return self._locked(lambda: self._control.command(asset_id, payload, ttl_s,
                                                          if_version))()

    def commands(self, asset_id: str | None = None, state: str | None = None
                 ) -> list[CommandRecord]:
        """Every asset's current command and the finished ones kept in memory (oldest
        first), optionally of one asset or in one state (``"not_followed"``, ...)."""
        if state is not None:
            CommandState.parse(state)         # a typo is an error, not an empty answer
        with self._core.lock:
            self._core.check_open()
            return self._control.commands(asset_id, state)

    def subscribe_commands(self, callback: Callable[[CommandEvent], None]) -> StreamSubscription:
        """Call ``callback(event)`` for every change of a command's state (a
        :class:`~twin.control.table.CommandEvent`)."""
        return StreamSubscription(self._control.subscribe(callback))

    def dispatch(self, path: str, target_kw: float, *, kinds: Sequence[str] = ("battery",),
                 duration_s: float, ramp_kw_per_s: float | None = None,
                 strategy: str = "headroom", lease_s: float = 3.0,
                 flip_threshold_kw: float | None = None,
                 stale_after_s: float | None = None) -> Dispatch:
        """Run the assets of ``kinds`` under ``path`` as one plant at ``target_kw`` (positive:
        deliver to the grid) for ``duration_s``: every control tick the target is allocated
        over the members that may take part (``strategy`` "headroom" or "soc") and issued as
        leases of ``lease_s``. A member whose last report is older than ``stale_after_s``
        (default 1.5 report intervals) sits out. See
        :class:`~twin.fleet.dispatching.Dispatch` and docs/control.md."""
        dispatch_id = self._locked(lambda: self._dispatching.start(
            path, target_kw, kinds=kinds, duration_s=duration_s, ramp_kw_per_s=ramp_kw_per_s,
            strategy=strategy, lease_s=lease_s, flip_threshold_kw=flip_threshold_kw,
            stale_after_s=stale_after_s))
        return Dispatch(dispatch_id, self._dispatching, self._locked)

    def dispatches(self, *, active_only: bool = False) -> list[Dispatch]:
        """The dispatches of this run (active first)."""
        plans = self._locked(self._dispatching.plans)
        return [Dispatch(p.spec.dispatch_id, self._dispatching, self._locked) for p in plans
                if not active_only or p.status == "active"]

    def get_dispatch(self, dispatch_id: str) -> Dispatch:
        """A dispatch by id; :class:`UnknownCommand` if there is none."""
        self._locked(lambda: self._dispatching.plan_of(dispatch_id))
        return Dispatch(dispatch_id, self._dispatching, self._locked)

    def subscribe_dispatches(self, callback: ReportCallback) -> StreamSubscription:
        """Call ``callback(report)`` after every tick of every dispatch."""
        return StreamSubscription(self._locked(lambda: self._dispatching.subscribe(callback)))

    def inject_fault(self, asset_id: str, reason: str = "injected fault") -> None:
        """Make the asset's actor raise inside its handler (chaos testing of supervision)."""
        self._locked(lambda: self._chaos.inject_fault(asset_id, reason))

    def release(self, asset_id: str) -> None:
        """Let a quarantined asset run again (it is ``unknown`` until it reports)."""
        self._locked(lambda: self._chaos.release(asset_id))

    # -- model changes ----------------------------------------------------------------------

    def apply(self, change: Change, effective: float | None = None
              ) -> ModelVersion | PendingChange:
        """Change the model, effective at unix time ``effective`` (default: now).

        A past or present effective time applies at once (roll-ups follow before this
        returns) and is recorded in the model's history at that time; a future one is
        scheduled and applied when the clock gets there.
        """
        return self._locked(lambda: self._changes.apply(change, effective))

    def pending_changes(self) -> list[PendingChange]:
        with self._core.lock:
            return self._changes.pending_changes()

    def subscribe(self, path: str, callback: RollupCallback) -> Subscription:
        """Call ``callback(rollup)`` after every change of the roll-up at ``path``."""
        return self._subscriptions.add(path, callback)

    # -- the store --------------------------------------------------------------------------

    @property
    def store(self) -> Store | None:
        return None if self._core.persist is None else self._core.persist.store

    def flush(self) -> None:
        """Wait until every derived row queued so far is in the store (the raw log always is:
        ``ingest`` returns once its batch is)."""
        if self._core.persist is not None:
            self._core.persist.store.writer.flush()

    def snapshot(self) -> int:
        """Snapshot every actor's state now; returns the log offset it reflects.
        :class:`StoreBusy` or :class:`StoreUnavailable` if the store could not take it."""
        return self._snapshots.take()

    # -- lifecycle --------------------------------------------------------------------------

    def _locked(self, work: Callable[[], T]) -> T:
        """Run ``work`` under the fleet lock, then deliver the roll-ups it changed (callbacks
        run with no lock of the fleet held: a callback may call the fleet)."""
        with self._core.lock:
            self._core.check_open()
            result = work()
        self._subscriptions.deliver()
        self._control.emit()
        self._dispatching.emit()
        return result

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (read without the lock: a readiness probe)."""
        return self._core.closed

    def close(self) -> None:
        """Stop the ticker, write what the store still has queued, stop the actor system.
        Safe to call twice."""
        core = self._core
        core.hosting.closing.set()    # a call in flight (the ticker's) ends now, not at its
        with core.lock:               # deadline: it may be waiting on a process gone too
            if core.closed:
                return
            core.closed = True
        self._timers.stop()
        with core.ingest_lock:       # a batch still being appended is finished (or refused)
            pass
        if core.persist is not None:
            core.persist.close()
        core.hosting.shutdown()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._core.shards)} shard(s)"
        return f"<Fleet {self.model.summary()}, {state}>"
