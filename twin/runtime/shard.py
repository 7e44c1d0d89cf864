"""A shard: the asset actors, site tallies and supervisors of a set of sites, in one thread.

Whole sites live on one shard (DESIGN decision 2), so asset → site roll-up never leaves it.
Every call takes the time (``now``) from the caller and returns a :class:`ShardOutput`: the
changed leaf summaries (whole and versioned), the state transitions, and the call's reply.
This class is plain Python; :mod:`twin.hosting.system` runs it inside a Thespian actor.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors import DEFERRED, REFUSED, RUNNING, SUSPENDED, DeadlineWheel, Kernel
from actors.asset import AssetActor, Command, InjectedFault, Unavailable
from actors.groups import LeafSummary, LeafTally
from supervisors import SupervisionPolicy, SupervisionStats, Supervisor
from twin.core.errors import UnknownAsset
from twin.core.kinds import KindRegistry, Rejection
from twin.core.model import AssetSpec, Defaults
from twin.core.samples import HELD_QUARANTINED, OUTCOMES, REJECTED, Sample, SampleError
from twin.core.states import STATE_NAMES, Transition
from twin.wire import unpack_rows

DEFERRED_CODE = OUTCOMES.index("deferred")


@dataclass(slots=True)
class ShardOutput:
    summaries: list[LeafSummary] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    counts: list[int] | None = None
    errors: list[SampleError] = field(default_factory=list)
    outcomes: bytearray | None = None     # per sample, when asked for (to store them)
    reply: Any = None


@dataclass(frozen=True, slots=True)
class ControlInputs:
    """Columns of :meth:`Shard.control_inputs`, index-aligned with the asked asset ids:
    state codes (255: not on this shard), arrival time of the last sample (NaN: never), power
    in watts, the followed signal's value (``None``: every followed signal is the power), and
    state of charge (NaN: unknown). The last two cover only the asked ``slow`` range."""

    states: bytes
    last_seen: list[float]
    power_w: list[int]
    values: list[Any] | None
    soc_pct: list[Any]


@dataclass(slots=True)
class _Watch:
    asset_ids: list[str]
    signals: list[str]
    generation: int
    actors: list[Any]
    power_only: bool           # every followed signal is the power: read power_w


class _Absent:
    """Stands in for an asset that is not on this shard (moved, decommissioned)."""

    state = 255
    last_seen = None
    power_w = 0
    reported = None


_ABSENT = _Absent()


@dataclass(frozen=True, slots=True)
class ShardConfig:
    index: int
    defaults: Defaults
    kinds: KindRegistry
    asset_policy: SupervisionPolicy      # site supervisors over their assets
    site_policy: SupervisionPolicy       # the shard supervisor over its sites
    seed: int = 0
    wheel_resolution_s: float = 1.0


def site_key(site_id: str) -> str:
    return f"site:{site_id}"


def partial_key(group: str, shard: int) -> str:
    return f"partial:{group}@{shard}"


class Shard:
    """Asset actors of some sites; see the module docstring."""

    def __init__(self, config: ShardConfig) -> None:
        self.config = config
        self.index = config.index
        self.kernel = Kernel()
        self.wheel = DeadlineWheel(_expire, config.wheel_resolution_s)
        self.allowed_skew_s = config.defaults.allowed_skew_s
        self.retention_s = config.defaults.retention_s
        self._set_now(0.0)
        self.kinds = config.kinds
        self.stats = SupervisionStats()
        self._rng = random.Random(config.seed * 1_000_003 + config.index)
        self.supervisor = Supervisor(f"shard-{config.index}", config.site_policy,
                                     kernel=self.kernel, clock=self._clock, rng=self._rng,
                                     stats=self.stats)
        self.actors: dict[str, AssetActor] = {}
        self.sites: dict[str, tuple[LeafTally, Supervisor]] = {}
        self.partials: dict[str, LeafTally] = {}
        self._dirty: list[LeafTally] = []
        self._transitions: list[Transition] = []
        self.generation = 0                 # bumped whenever the set of actors changes
        self.watches: dict[str, _Watch] = {}

    def _clock(self) -> float:
        return self.now

    def _set_now(self, now: float) -> None:
        self.now = now
        self.future_after = now + self.allowed_skew_s
        self.stale_before = now - self.retention_s

    # -- the AssetHost protocol -----------------------------------------------------------

    def transition(self, asset: AssetActor, old: int, new: int, reason: str) -> None:
        self._transitions.append(
            Transition(self.now, asset.spec.id, STATE_NAMES[old], STATE_NAMES[new], reason))

    # -- building -------------------------------------------------------------------------

    def add_site(self, site_id: str) -> None:
        if site_id in self.sites:
            return
        tally = LeafTally(site_key(site_id), self._dirty)
        tally.mark()                      # an empty site is still worth a first summary
        supervisor = Supervisor(site_key(site_id), self.config.asset_policy,
                                kernel=self.kernel, clock=self._clock, rng=self._rng,
                                stats=self.stats, parent=self.supervisor)
        self.supervisor.adopt(supervisor)
        self.sites[site_id] = (tally, supervisor)

    def add_assets(self, specs: Iterable[AssetSpec],
                   direct_groups: Mapping[str, Sequence[str]] | None = None) -> None:
        """Create actors for ``specs`` (their sites must be added); ``direct_groups`` maps an
        asset id to the extra groups that list it directly."""
        groups = direct_groups or {}
        kinds = self.kinds
        for spec in specs:
            tally, supervisor = self.sites[spec.site]
            tallies = (tally, *self._partials(groups.get(spec.id, ())))
            actor = AssetActor(spec, kinds.get(spec.kind), self, tallies)
            supervisor.adopt(actor)
            self.actors[spec.id] = actor
        self.generation += 1

    def _partials(self, group_names: Iterable[str]) -> list[LeafTally]:
        out = []
        for name in group_names:
            tally = self.partials.get(name)
            if tally is None:
                tally = self.partials[name] = LeafTally(partial_key(name, self.index), self._dirty)
            out.append(tally)
        return out

    # -- calls (each returns a ShardOutput) -----------------------------------------------

    def ingest(self, now: float, samples: Sequence[Sample],
               indices: Sequence[int] | None = None, want_outcomes: bool = False
               ) -> ShardOutput:
        """Hand each sample to its asset actor; count outcomes. ``indices`` are the samples'
        positions in the caller's batch (for error messages), when it was split;
        ``want_outcomes`` returns each sample's outcome code too."""
        self._set_now(now)
        outcomes = bytearray(len(samples)) if want_outcomes else None
        counts = [0] * len(OUTCOMES)
        errors: list[SampleError] = []
        actors = self.actors
        deliver = self.kernel.deliver
        on_sample = AssetActor.on_sample
        for i, sample in enumerate(samples):
            try:
                actor = actors.get(sample.asset_id)
            except TypeError:                 # an unhashable id: rejected below
                actor = None
            if actor is None:
                result: Any = REJECTED
                counts[REJECTED] += 1
                errors.append(SampleError.unknown_asset(indices[i] if indices else i,
                                                        sample.asset_id))
            else:
                result = deliver(actor, sample, on_sample)
                if type(result) is int:
                    counts[result] += 1
                elif result is DEFERRED:
                    result = DEFERRED_CODE
                    counts[DEFERRED_CODE] += 1
                elif result is REFUSED:
                    result = HELD_QUARANTINED
                    counts[HELD_QUARANTINED] += 1
                else:
                    counts[REJECTED] += 1
                    errors.append(_error(indices[i] if indices else i, sample, result))
                    result = REJECTED
            if outcomes is not None:
                outcomes[i] = result
        self.kernel.run()
        out = self.collect()
        out.counts = counts
        out.errors = errors
        out.outcomes = outcomes
        return out

    def ingest_rows(self, now: float, rows: bytes, indices: Sequence[int] | None = None,
                    want_outcomes: bool = False) -> ShardOutput:
        """:meth:`ingest` for samples packed by :func:`twin.wire.pack_rows` (how a batch
        crosses into a shard host's process)."""
        return self.ingest(now, unpack_rows(rows), indices, want_outcomes)

    def replay(self, batches: Sequence[tuple[float, bytes]]) -> ShardOutput:
        """Re-apply logged batches after a restart: for each ``(received_at, packed rows)``,
        let time pass to its arrival, then ingest it. The reply is each batch's outcome codes
        (the facade re-derives the store's rows from them); the summaries are every leaf
        that changed on the way (a leaf's newest summary last)."""
        transitions: list[Transition] = []
        summaries: list[LeafSummary] = []
        outcomes: list[bytes] = []
        for received_at, rows in batches:
            ticked = self.tick(received_at)
            out = self.ingest_rows(received_at, rows, None, True)
            transitions.extend(ticked.transitions + out.transitions)
            summaries.extend(ticked.summaries + out.summaries)
            outcomes.append(bytes(out.outcomes or b""))
        out = self.collect()
        out.transitions = transitions + out.transitions
        out.summaries = summaries + out.summaries
        out.reply = outcomes
        return out

    def tick(self, now: float) -> ShardOutput:
        """Let time pass: fire due liveness deadlines and restart timers."""
        self._set_now(now)
        self.wheel.advance(now)
        self.kernel.advance(now)
        return self.collect()

    def command(self, now: float, asset_id: str, payload: Mapping[str, Any]) -> ShardOutput:
        self._set_now(now)
        actor = self._actor(asset_id)
        if actor.status == RUNNING:
            reply = self.kernel.deliver(actor, Command(dict(payload)))
            self.kernel.run()
        else:
            # quarantined, or waiting to restart: refused now rather than queued for later
            state = "restarting" if actor.status == SUSPENDED else STATE_NAMES[actor.state]
            reply = Unavailable(asset_id, state, actor.last_seen)
        out = self.collect()
        out.reply = reply
        return out

    def control_inputs(self, key: str, asset_ids: Sequence[str] | None,
                       signals: Sequence[str] | None, slow: tuple[int, int] | None = None
                       ) -> ControlInputs | None:
        """What control needs of a set of assets, as columns (see :class:`ControlInputs`).

        A dispatch asks every tick for the same members: the first call (``asset_ids`` given)
        keeps their actors under ``key``; later calls pass ``None`` and read the kept list.
        ``None`` back means the key is unknown here (a restarted shard): ask with the ids.
        State and power are read for all; the slowly changing columns (state of charge, last
        report time) only for the members in ``slow`` (a range; ``None``: all)."""
        watch = self.watches.get(key)
        if asset_ids is not None:
            followed = list(signals or ())
            watch = self.watches[key] = _Watch(list(asset_ids), followed, -1, [],
                                               all(s == "power_kw" for s in followed))
        elif watch is None:
            return None
        if watch.generation != self.generation:
            actors = self.actors
            watch.actors = [actors.get(a, _ABSENT) for a in watch.asset_ids]
            watch.generation = self.generation
        picked = watch.actors
        nan = math.nan
        empty: dict[str, Any] = {}
        values = None
        if not watch.power_only:
            values = [(a.reported or empty).get(sig, nan)
                      for a, sig in zip(picked, watch.signals, strict=True)]
        some = picked if slow is None else picked[slow[0]:slow[1]]
        return ControlInputs(
            bytes([a.state for a in picked]),
            [a.last_seen or nan for a in some],
            [a.power_w for a in picked],
            values,
            [(a.reported or empty).get("soc_pct", nan) for a in some])

    def forget_watch(self, key: str) -> None:
        self.watches.pop(key, None)

    def restore_desired(self, asset_id: str, desired: Mapping[str, Any]) -> None:
        """Put back what an accepted command set (a restart replays commands)."""
        actor = self._actor(asset_id)
        actor.desired = {**(actor.desired or {}), **desired}

    def inject_fault(self, now: float, asset_id: str, reason: str) -> ShardOutput:
        self._set_now(now)
        self.kernel.deliver(self._actor(asset_id), InjectedFault(reason))
        self.kernel.run()
        return self.collect()

    def release(self, now: float, asset_id: str) -> ShardOutput:
        self._set_now(now)
        self._actor(asset_id).release()
        return self.collect()

    def asset_view(self, asset_id: str) -> dict[str, Any]:
        actor = self._actor(asset_id)
        return {"state": STATE_NAMES[actor.state], "reported": dict(actor.reported or {}),
                "desired": dict(actor.desired or {}), "last_seen": actor.last_seen,
                "last_sample_ts": actor.last_ts, "accepted": actor.n_accepted,
                "quality": dict(actor.quality or {}), "restarts": actor.restarts,
                "pending": actor.pending}

    # -- model changes ------------------------------------------------------------------------

    def decommission(self, now: float, asset_id: str) -> ShardOutput:
        self._set_now(now)
        actor = self._actor(asset_id)
        actor.retire()
        self.sites[actor.spec.site][1].release(actor)
        del self.actors[asset_id]
        self.generation += 1
        return self.collect()

    def move_local(self, now: float, spec: AssetSpec, direct_groups: Sequence[str]) -> ShardOutput:
        """Move an asset to another site of this shard (or change its direct groups)."""
        self._set_now(now)
        actor = self._actor(spec.id)
        actor.leave_tallies()
        self.sites[actor.spec.site][1].release(actor)
        actor.spec = spec
        tally, supervisor = self.sites[spec.site]
        supervisor.adopt(actor)
        actor.join_tallies((tally, *self._partials(direct_groups)))
        return self.collect()

    def export_asset(self, now: float, asset_id: str) -> ShardOutput:
        """Remove an asset that moves to another shard; the reply is its state."""
        self._set_now(now)
        actor = self._actor(asset_id)
        saved = actor.export_row()
        actor.leave_tallies()
        self.wheel.disarm(actor)
        self.kernel.stop(actor)
        self.sites[actor.spec.site][1].release(actor)
        del self.actors[asset_id]
        self.generation += 1
        out = self.collect()
        out.reply = saved
        return out

    def import_asset(self, now: float, spec: AssetSpec, saved: Sequence[Any],
                     direct_groups: Sequence[str]) -> ShardOutput:
        self._set_now(now)
        tally, supervisor = self.sites[spec.site]
        actor = AssetActor(spec, self.kinds.get(spec.kind), self, ())
        actor.import_row(saved)            # not in any tally yet: joins with its real state
        supervisor.adopt(actor)
        actor.join_tallies((tally, *self._partials(direct_groups)))
        self.actors[spec.id] = actor
        self.generation += 1
        self.kernel.run()                 # messages that waited in its old mailbox
        return self.collect()

    # -- snapshots ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every actor's state (msgpack-ready), keyed by asset id."""
        return {asset_id: actor.export_row() for asset_id, actor in self.actors.items()}

    def restore(self, now: float, rows: Mapping[str, Any]) -> ShardOutput:
        """Take over snapshot rows for the actors this shard holds (others are ignored: the
        model may have moved them since)."""
        self._set_now(now)
        for asset_id, row in rows.items():
            actor = self.actors.get(asset_id)
            if actor is None:
                continue
            tallies = actor.tallies
            actor.leave_tallies()
            actor.import_row(row)
            actor.join_tallies(tallies)
        self.kernel.run()
        out = self.collect()
        out.transitions = []              # restored, not happening now
        return out

    # -- output ---------------------------------------------------------------------------

    def collect(self, full: bool = False) -> ShardOutput:
        """Summaries of every leaf changed since the last call (of every leaf if ``full``).

        Runs the kernel first: a call that resumed an actor (a move, a release) leaves no
        message waiting in a running actor's mailbox."""
        self.kernel.run()
        if full:
            leaves: list[LeafTally] = [t for t, _ in self.sites.values()]
            leaves.extend(self.partials.values())
        else:
            leaves = self._dirty[:]
        self._dirty.clear()
        out = ShardOutput(summaries=[leaf.summary(full) for leaf in leaves],
                          transitions=self._transitions)
        self._transitions = []
        return out

    def metrics(self) -> dict[str, Any]:
        return {"assets": len(self.actors), "sites": len(self.sites),
                "failures": self.stats.failures, "restarts": self.stats.restarts,
                "quarantines": self.stats.quarantines, "escalations": self.stats.escalations,
                "wheel_buckets": self.wheel.buckets, "wheel_arms": self.wheel.arms,
                "wheel_fired": self.wheel.fired}

    def _actor(self, asset_id: str) -> AssetActor:
        actor = self.actors.get(asset_id)
        if actor is None:
            raise UnknownAsset(asset_id, f" (not on shard {self.index})")
        return actor


def _expire(actor: AssetActor, now: float) -> None:
    actor.deadline_passed()


def _error(index: int, sample: Sample, result: Any) -> SampleError:
    if isinstance(result, Rejection):
        return SampleError(index, sample.asset_id, result.field, result.value, result.reason)
    # the actor's handler raised: it is being restarted by its supervisor
    return SampleError(index, sample.asset_id, "handler", type(result).__name__,
                       f"the asset's actor failed on this sample ({result}); it restarts "
                       "from its last good state")
