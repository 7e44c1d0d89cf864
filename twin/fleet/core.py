"""The state one fleet's collaborators share, and the steps they all take on it.

:class:`FleetCore` owns the model, the clock, the shard clients and their placement, the
roll-up tree, the counters, the store's persistence and which shards are down, with the locks
that guard them (see :mod:`twin.fleet.facade` for their order). The facade's collaborators
(:mod:`twin.fleet.ingest`, :mod:`~twin.fleet.changes`, :mod:`~twin.fleet.recovery`,
:mod:`~twin.fleet.failover`, :mod:`~twin.fleet.timers`, :mod:`~twin.fleet.subscriptions`) are
each handed this object: its fields are plain, public and typed, so who reads and writes what
is visible in one place.

Four locks, always taken in this order, keep what is slow away from what must answer at once:

* ``ingest_lock`` orders batches: a batch is appended to the durable log and then applied
  before the next one is (the append, which waits on the store, holds only this lock);
* ``lock`` (the fleet lock) guards the shards, the model, placement and the store's offsets:
  calls to shards (each with a deadline), timers, model changes, commands, refills;
* ``view_lock`` guards the roll-up tree, subscriptions, recent transitions and counters, held
  only for in-memory work: ``rollup``, ``rollups`` and ``subscribe`` take nothing else;
* ``deliver_lock`` orders subscription callbacks, run after the others are let go.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import TypeVar

import structlog

from actors.asset import capacity_w
from actors.groups import LeafSummary
from twin.core.clock import Clock
from twin.core.errors import FleetClosed, ShardDown
from twin.core.model import FleetModel
from twin.core.rollup import ROW_CAPACITY_W, ROW_UNKNOWN, ROW_WIDTH
from twin.core.samples import OUTCOMES, IngestReport, Sample, SampleError
from twin.core.states import ShardStatus, Transition
from twin.core.views import AssetView
from twin.hosting.host_actors import ShardState
from twin.hosting.system import Hosting, ShardClient
from twin.runtime.calls import AddAssets, AddSites, AssetViewOf, Collect, ShardCall, Tick
from twin.runtime.placement import Placement
from twin.runtime.shard import ShardConfig, ShardOutput, partial_key, site_key
from twin.runtime.tree import RollupTree
from twin.store.persistence import Persistence

log = structlog.get_logger("twin.fleet")

T = TypeVar("T")

COUNTERS = ("batches", "batch_bytes", "transitions", "callback_errors", "model_changes",
            "scheduled_change_failures", "snapshots", "replayed_batches", "replayed_samples",
            "batches_refused", "shard_downs", "shard_recoveries")


class FleetCore:
    """See the module docstring."""

    def __init__(self, model: FleetModel, clock: Clock, hosting: Hosting,
                 configs: list[ShardConfig], *, transitions_kept: int,
                 resend_every_s: float) -> None:
        self.model = model
        self.clock = clock
        self.hosting = hosting
        self.shards: list[ShardClient] = hosting.shards
        self.configs = configs
        self.placement = Placement(len(self.shards))
        self.direct: dict[str, tuple[str, ...]] = {}   # asset id → groups listing it directly
        self.tree = RollupTree(clock.now)
        self.persist: Persistence | None = None
        self.down: dict[int, str] = {}                 # shard index → why it is down
        self.shard_states: tuple[ShardState, ...] = ()
        self.counters: dict[str, int] = {f"samples_{name}": 0 for name in OUTCOMES}
        self.counters.update(dict.fromkeys(COUNTERS, 0))
        self.recent: deque[Transition] = deque(maxlen=transitions_kept)
        self.transition_counts: dict[str, int] = {}
        self.unsaved: list[Transition] = []            # transitions not yet handed to the store
        self.replaying = False
        self.closed = False
        self.resend_every_s = resend_every_s
        self.last_resend = clock.now()
        # taken in this order (see twin.fleet.facade)
        self.ingest_lock = threading.RLock()
        self.lock = threading.RLock()
        self.view_lock = threading.RLock()
        self.deliver_lock = threading.RLock()

    # -- building -------------------------------------------------------------------------

    def build(self) -> None:
        """Place every site, create every actor, wire the roll-up tree (a fresh fleet)."""
        self.placement.place_all(self.model)
        self.direct = self.direct_memberships()
        for shard in self.shards:
            self.populate(shard)
        leaves = self.partial_leaves()
        with self.view_lock:
            self.tree.wire(self.model, leaves)
        self.collect_all()

    def populate(self, shard: ShardClient) -> None:
        """Create the actors of every asset placed on ``shard`` (fresh: state comes later)."""
        model = self.model
        site_ids = self.placement.sites_on(shard.index)
        shard.call(AddSites(tuple(site_ids)))
        specs = [spec for site_id in site_ids for spec in model.sites[site_id].assets.values()]
        direct = {a: g for a, g in self.direct.items()
                  if self.placement.shard_of(model, a) == shard.index}
        shard.call(AddAssets(tuple(specs), direct))

    def direct_memberships(self) -> dict[str, tuple[str, ...]]:
        """Asset id → the extra groups that list it directly (coverage normalized)."""
        direct: dict[str, list[str]] = {}
        for name in self.model.groups:
            _, assets = self.model.group_coverage(name)
            for asset_id in assets:
                direct.setdefault(asset_id, []).append(name)
        return {a: tuple(sorted(g)) for a, g in direct.items()}

    def partial_leaves(self) -> list[tuple[str, str]]:
        """(leaf key, group) of every per-shard part of an extra group's direct members."""
        leaves = set()
        for asset_id, groups in self.direct.items():
            index = self.placement.shard_of(self.model, asset_id)
            if index is not None:
                for name in groups:
                    leaves.add((partial_key(name, index), name))
        return sorted(leaves)

    # -- shards ---------------------------------------------------------------------------

    def check_open(self) -> None:
        if self.closed:
            raise FleetClosed("the fleet is closed")

    def shard_of(self, asset_id: str) -> ShardClient:
        """The shard holding ``asset_id`` (UnknownAsset if the model has none, ShardDown)."""
        index = self.placement.shard_of_site(self.model.asset(asset_id).site)
        if index in self.down:
            raise ShardDown(index, ShardStatus.DOWN, self.down[index])
        return self.shards[index]

    def asset_view(self, asset_id: str) -> AssetView:
        """Under the fleet lock: the asset's views as its shard holds them."""
        spec = self.model.asset(asset_id)
        view = self.shard_of(asset_id).call(AssetViewOf(asset_id))
        quality = {"accepted": view["accepted"], **view["quality"]}
        return AssetView(spec.id, spec.kind, self.model.sites[spec.site].path, view["state"],
                         spec.expected(), view["desired"], view["reported"], view["last_seen"],
                         view["last_sample_ts"], quality, view["restarts"], self.clock.now())

    def up(self) -> list[int]:
        return [shard.index for shard in self.shards if shard.index not in self.down]

    def absorb(self, output: ShardOutput, report: IngestReport | None = None) -> None:
        """Take a shard's answer in: counts into ``report``, transitions, leaf summaries."""
        if report is not None and output.counts is not None:
            report.add_counts(output.counts)
            report.errors.extend(output.errors)
        if output.transitions and self.persist is not None:
            self.unsaved.extend(output.transitions)
        with self.view_lock:
            if output.transitions:
                self.recent.extend(output.transitions)
                self.counters["transitions"] += len(output.transitions)
                for transition in output.transitions:
                    self.transition_counts[transition.new] = (
                        self.transition_counts.get(transition.new, 0) + 1)
            self.tree.absorb(output.summaries)

    def call_up(self, calls: Sequence[tuple[int, ShardCall[T]]]) -> list[tuple[int, T]]:
        """Run calls on shards (in parallel when they are processes); a shard found dead is
        marked down and left out of the answer, any other error is raised."""
        values = []
        for (index, _), value in zip(calls, self.hosting.call_many(calls, return_errors=True),
                                     strict=True):
            if isinstance(value, ShardDown):
                self.mark_down(index, value.reason or value.status)
            elif isinstance(value, BaseException):
                raise value
            else:
                values.append((index, value))
        return values

    def collect_all(self, full: bool = False) -> None:
        for index in self.up():
            self.absorb(self.shards[index].call(Collect(full)))

    def tick_shards(self, now: float) -> None:
        """Let every live shard's timers run up to ``now``; every ``resend_every_s`` also
        re-send every leaf's whole summary, so any view converges (DESIGN decision 2)."""
        full = now - self.last_resend >= self.resend_every_s
        if full:
            self.last_resend = now
        up = self.up()
        calls: list[tuple[int, ShardCall[ShardOutput]]] = [(i, Tick(now)) for i in up]
        if full:
            calls += [(i, Collect(True)) for i in up]
        for _, out in self.call_up(calls):
            self.absorb(out)
        if self.persist is not None and self.unsaved and not self.replaying:
            self.persist.derived(self.persist.last_offset, now, [], self.unsaved)
            self.unsaved = []

    # -- shards that are down ---------------------------------------------------------------

    def mark_down(self, index: int, reason: str) -> None:
        """Count the shard's assets as unknown (and missing) until it is back."""
        if index in self.down:
            self.down[index] = reason or self.down[index]
            return
        self.down[index] = reason
        keys, summaries = self.unknown_leaves(index)
        with self.view_lock:
            self.counters["shard_downs"] += 1
            self.tree.forget_leaves(keys)
            self.tree.absorb(summaries)
        log.error("shard_down", shard=index, reason=reason,
                  assets=sum(len(self.model.sites[s].assets)
                             for s in self.placement.sites_on(index)))

    def unknown_leaves(self, index: int) -> tuple[list[str], list[LeafSummary]]:
        """The shard's leaf keys, and summaries counting all their assets as unknown."""
        model = self.model
        members: dict[str, list[str]] = {}
        for site_id in self.placement.sites_on(index):
            if site_id in model.sites:
                members[site_key(site_id)] = list(model.sites[site_id].assets)
        for leaf, name in self.partial_leaves():
            if leaf == partial_key(name, index):
                members[leaf] = [a for a, groups in self.direct.items() if name in groups and
                                 self.placement.shard_of(model, a) == index]
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

    def hold(self, index: int, part: list[Sample], indices: list[int],
             report: IngestReport) -> None:
        """Samples for a shard that is down: with a store they are in the log and will be
        applied when it is back; without one they cannot be, and are rejected."""
        if self.persist is not None:
            report.deferred += len(part)
            return
        report.rejected += len(part)
        reason = self.down.get(index, ShardStatus.DOWN)
        report.errors.extend(SampleError(i, s.asset_id, "asset_id", s.asset_id,
                                         f"the shard holding this asset is down ({reason}) "
                                         "and the fleet has no store to keep the sample for it")
                             for i, s in zip(indices, part, strict=True))
