"""Control in the facade: commands as leases, their acknowledgements, convergence, and the
control tick, wired to the shards, the store, the clock and the transport.

Locks: command and dispatch calls run under the fleet lock (they call shards) and take the
control lock inside it; a transport's acknowledgements take only the control lock, so they
never wait on a shard or the store. Roll-up flags ("not following") are set under the view
lock, after both. See docs/control.md for the states and the loop.

Past the usual size: reading members through shard watches (``watch``/``read``) and writing
the control log belong in collaborators of their own, and will move there when the device
adapters (which add a second user of both) arrive.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import structlog

from actors.asset import CommandAccepted, Unavailable
from twin.control.retry import RetryPolicy
from twin.control.states import OPEN
from twin.control.table import FOLLOW_NOT, CommandEvent, CommandRecord, CommandTable
from twin.control.transport import (
    CommandSink,
    CommandTransport,
    Delivery,
    DeliveryBatch,
    SinkTransport,
)
from twin.core.errors import (
    AssetUnavailable,
    InvalidCommand,
    TwinError,
    VersionConflict,
)
from twin.core.states import ONLINE
from twin.core.views import CommandReceipt
from twin.fleet.core import FleetCore
from twin.runtime.calls import Command, ControlInputsOf, ForgetWatch
from twin.store.control_log import ControlLog, ControlRows, command_row, event_rows
from twin.store.store import StoreUnavailable

log = structlog.get_logger("twin.control")

SEQ_BLOCK: Final = 10_000_000       # command numbers reserved in the store per write
PENDING_ROWS_KEPT: Final = 100_000  # rows held while the store is away, then the oldest go
SLOW_SHARE: Final = 0.125           # of a watch's state of charge and report times per tick
SLOW_MIN: Final = 4096              # (at least this many: small fleets are read whole)

CommandCallback = Callable[[CommandEvent], None]
OPEN_CODES: Final = np.array(sorted(int(s) for s in OPEN), np.int8)


@dataclass(frozen=True, slots=True)
class ControlOptions:
    """How the fleet steers (``Fleet(control=ControlOptions(...))``).

    ``tick_s``: how often leases, resends, convergence and dispatches are looked at (fleet
    clock). ``follow_timeout_s``: how long an asset may stay out of tolerance before it is
    "not following" (default: its kind's ``dead_time_s + settle_s``). ``cooldown_s``: how
    long a dispatch leaves out an asset that was not following. ``history_kept``: finished
    commands remembered in memory (the store keeps them all).
    """

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    tick_s: float = 1.0
    follow_timeout_s: float | None = None
    cooldown_s: float = 300.0
    history_kept: int = 10_000

    def __post_init__(self) -> None:
        if not self.tick_s > 0:
            raise ValueError(f"ControlOptions.tick_s must be > 0, got {self.tick_s!r}")
        if self.follow_timeout_s is not None and not self.follow_timeout_s >= 0:
            raise ValueError(f"ControlOptions.follow_timeout_s must be >= 0, got "
                             f"{self.follow_timeout_s!r}")
        if not self.cooldown_s >= 0:
            raise ValueError(f"ControlOptions.cooldown_s must be >= 0, got {self.cooldown_s!r}")


@dataclass(slots=True)
class Watch:
    """Assets read together: per shard, their positions, ids and followed signals; the shards
    that keep the list under ``key`` (``""``: a one-off read, sent in full)."""

    key: str
    size: int
    parts: list[tuple[int, np.ndarray, list[str], list[str]]]
    synced: tuple[int, int] | None
    held: set[int] = field(default_factory=set)
    # state of charge and last report time change slowly: a rotating share is read each tick
    soc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    last_seen: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cursor: int = 0            # ticks since the first full read
    fresh: bool = False        # every member's slow columns read at least once


@dataclass(slots=True)
class Inputs:
    """Control inputs of some assets, as numpy columns."""

    states: np.ndarray
    last_seen: np.ndarray
    values: np.ndarray
    soc_pct: np.ndarray


class Control:
    """See the module docstring. Dispatch plans live in :mod:`twin.fleet.dispatching`, which
    this object runs each tick through ``on_tick``."""

    def __init__(self, core: FleetCore, transport: CommandTransport | None,
                 options: ControlOptions, rng: random.Random) -> None:
        self.core = core
        self.options = options
        self.lock = threading.RLock()
        self.table = CommandTable(options.retry, rng, core.clock.now(),
                                  history_kept=options.history_kept,
                                  dispatch_names=self.origin_name)
        self.transport = transport
        if transport is not None:
            transport.attach(self)
        self.origins: dict[int, str] = {}             # origin code → dispatch id
        self.cooldown_until = np.zeros(0)         # slot → end of a not-following cool-down
        self.reject_until = np.zeros(0)           # slot → end of a rejecting cool-down
        self.subscribers: list[CommandCallback] = []
        self._paths: dict[str, tuple[str, ...]] = {}
        self.shard_of_asset: dict[str, int] = {}
        self.synced: tuple[int, int] | None = None
        self.next_tick = -math.inf
        self.store: ControlLog | None = None
        self.reserved = 0
        self.pending = ControlRows([], [], [], [])
        self.unsent_reverts: list[int] = []    # leases that ended while no number was free
        # set by twin.fleet.dispatching: dispatches judge and steer their own members
        self.on_tick: Callable[[float], None] = lambda now: None
        self.dispatched_slots: Callable[[], np.ndarray] = lambda: np.zeros(0, np.int64)
        self.counters = {"acks_stale": 0, "control_ticks": 0, "control_rows_dropped": 0,
                         "control_write_failures": 0}

    # -- the model ------------------------------------------------------------------------

    def sync(self) -> None:
        """Give every controllable asset its row after a model change (cheap when none)."""
        core = self.core
        key = (core.model.version, len(core.model.assets))
        if key == self.synced:
            return
        self.synced = key
        kinds = core.model.kinds
        follow_timeout = self.options.follow_timeout_s
        placement = core.placement
        with self.lock:
            for spec in core.model.assets.values():
                self.table.register(spec, kinds.get(spec.kind), follow_timeout)
            self.shard_of_asset = {a: placement.site_shard[s.site]
                                   for a, s in core.model.assets.items()}
            if len(self.cooldown_until) < len(self.table):
                size = max(len(self.table), 2 * len(self.cooldown_until))
                self.cooldown_until = _grown(self.cooldown_until, size)
                self.reject_until = _grown(self.reject_until, size)
            self._paths = {}

    def paths_of(self, asset_id: str) -> tuple[str, ...]:
        """The roll-up nodes an asset counts in: its site, region, owner and extra groups."""
        paths = self._paths.get(asset_id)
        if paths is None:
            model = self.core.model
            spec = model.assets.get(asset_id)
            if spec is None:
                return ()
            site = model.sites[spec.site]
            own = (site.owner, site.region_path, site.path)
            groups = []
            for name in model.groups:
                covered, direct = model.group_coverage(name)
                if asset_id in direct or any(p in covered for p in own):
                    groups.append(name)
            paths = self._paths[asset_id] = (*own, *groups)
        return paths

    def origin_name(self, origin: int) -> str | None:
        return self.origins.get(origin)

    # -- commands -------------------------------------------------------------------------

    def command(self, asset_id: str, payload: Mapping[str, Any], ttl_s: float | None,
                if_version: int | None) -> Callable[[], CommandReceipt]:
        """Under the fleet lock: see :meth:`twin.Fleet.command`."""
        core = self.core
        core.model.asset(asset_id)
        if ttl_s is not None and not (isinstance(ttl_s, int | float) and 0 < ttl_s < math.inf):
            raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
        self.sync()
        table = self.table
        slot = table.slots.get(asset_id)
        current = 0 if slot is None else int(table.seq[slot])
        if if_version is not None and if_version != current:
            raise VersionConflict(asset_id, if_version, current)
        self.reserve(1)                    # before anything changes: may raise StoreUnavailable
        now = core.clock.now()
        output = core.shard_of(asset_id).call(Command(now, asset_id, payload))
        core.absorb(output)
        reply = output.reply
        if not isinstance(reply, CommandAccepted):
            return lambda: _refusal(asset_id, reply)
        if slot is None:
            raise InvalidCommand(f"asset {asset_id!r} of kind {core.model.asset(asset_id).kind!r}"
                                 f" takes no commands")
        changed = {k: v for k, v in reply.desired.items() if k in payload}
        if core.persist is not None:          # the desired view survives a restart
            core.persist.record_command(now, asset_id, changed)
        expires = None if ttl_s is None else now + ttl_s
        with self.lock:
            delivery = table.issue(slot, changed, now, expires)
            self.cooldown_until[slot] = 0.0
            self.pending.commands.append(command_row(delivery.desired_version, now, asset_id,
                                                     changed, expires, None))
            self._send([delivery])
            seq = delivery.desired_version
        self.write()
        receipt = CommandReceipt(asset_id, reply.desired, now, str(seq), seq, expires,
                                 self._live_state)
        return lambda: receipt

    def _live_state(self, asset_id: str, seq: int) -> str:
        with self.lock:
            return self.table.state_of_command(asset_id, seq)

    def reserve(self, count: int) -> None:
        """Make sure ``count`` more command numbers are reserved in the store
        (:class:`StoreUnavailable` if they are not). Reserves the next block while half of
        the current one is left, so a store outage rarely stops commands."""
        table = self.table
        if self.store is None:
            return
        left = self.reserved - table.next_seq + 1
        if left >= count and left >= SEQ_BLOCK // 2:
            return
        upto = table.next_seq + count + SEQ_BLOCK
        try:
            self.store.reserve(upto)
        except StoreUnavailable:
            if left < count:
                raise
            log.warning("command_numbers_not_reserved_ahead", left=left)
            return
        self.reserved = upto

    def _send(self, deliveries: Sequence[Delivery]) -> None:
        if self.transport is None or not deliveries:
            return
        try:
            self.transport.send(deliveries)
        except Exception:       # a transport's own failure: the resend timer tries again
            log.exception("transport_send_failed", deliveries=len(deliveries))

    def send_batch(self, batch: DeliveryBatch) -> None:
        self._send(batch)

    # -- acknowledgements (the Acknowledgements protocol; any thread) ---------------------

    def delivered(self, command_id: str) -> None:
        with self.lock:
            slot = self.table.slot_of_command(command_id)
            if slot is None:
                self.table.late_ack(command_id)
                self.counters["acks_stale"] += 1
            elif not self.table.delivered(slot, self.core.clock.now()):
                self.counters["acks_stale"] += 1
        self.emit()

    def rejected(self, command_id: str, reason: str) -> None:
        with self.lock:
            slot = self.table.slot_of_command(command_id)
            if slot is None or not self.table.rejected(slot, self.core.clock.now(),
                                                       str(reason)[:500]):
                self.counters["acks_stale"] += 1
        self.emit()

    def delivered_many(self, command_ids: Sequence[str]) -> None:
        """Many acknowledgements at once (one lock, one hand-off to subscribers)."""
        with self.lock:
            now = self.core.clock.now()
            table = self.table
            for command_id in command_ids:
                slot = table.slot_of_command(command_id)
                if slot is None:
                    table.late_ack(command_id)
                    self.counters["acks_stale"] += 1
                elif not table.delivered(slot, now):
                    self.counters["acks_stale"] += 1
        self.emit()

    def delivered_batch(self, batch: DeliveryBatch) -> None:
        with self.lock:
            self.table.delivered_batch(batch, self.core.clock.now())
        self.emit()

    # -- time -----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Under the fleet lock, from the fleet's timers: leases, resends, convergence,
        dispatches, every ``tick_s``."""
        if now < self.next_tick:
            return
        self.next_tick = now + self.options.tick_s
        self.sync()
        table = self.table
        if not len(table):
            return
        self.counters["control_ticks"] += 1
        with self.lock:
            work = table.due(now)
            deliveries = list(work.resend)
            reverts = self.unsent_reverts + work.expired
            try:
                self.reserve(len(reverts))
            except StoreUnavailable:          # the devices revert at the lease's end anyway
                self.unsent_reverts = reverts
            else:
                self.unsent_reverts = []
                deliveries.extend(self._revert(slot, now) for slot in reverts
                                  if not table.is_open(slot))
            self._send(deliveries)
        self.on_tick(now)             # dispatches judge and steer their own members
        with self.lock:
            others = np.setdiff1d(table.open_slots(), self.dispatched_slots(),
                                  assume_unique=True)
            if len(others):
                self.judge(others, now)
            self._clear_finished()
        self.write()
        self.emit()

    def judge(self, slots: np.ndarray, now: float, inputs: Inputs | None = None) -> Inputs:
        """Under the control lock: convergence of ``slots``; flags roll-ups."""
        table = self.table
        if inputs is None:
            ids = [table.ids[s] for s in slots.tolist()]
            inputs = self.read(self.watch("", ids, [table.signal_of(s) or "power_kw"
                                                    for s in slots.tolist()]))
        started, stopped = table.judge(slots, inputs.states == ONLINE, inputs.values, now,
                                       inputs.last_seen)
        flagged = slots[table.follow[slots] == FOLLOW_NOT]
        self.cooldown_until[flagged] = now + self.options.cooldown_s
        self._flag(started, True)
        self._flag(stopped, False)
        return inputs

    def _clear_finished(self) -> None:
        table = self.table
        n = len(table)
        stale = np.flatnonzero((table.follow[:n] == FOLLOW_NOT) &
                               ~np.isin(table.state[:n], OPEN_CODES))
        self._flag(table.forget_following(stale.tolist()), False)

    def _flag(self, slots: Sequence[int], on: bool) -> None:
        if not slots:
            return
        ids = self.table.ids
        tree = self.core.tree
        with self.core.view_lock:
            for slot in slots:
                asset_id = ids[slot]
                tree.set_not_following(asset_id, self.paths_of(asset_id), on)

    def _revert(self, slot: int, now: float) -> Delivery:
        """A lease ended: the kind's default goes out as a command of its own."""
        table = self.table
        asset_id = table.ids[slot]
        spec = self.core.model.assets.get(asset_id)
        default = ({} if spec is None else
                   self.core.model.kinds.get(spec.kind).default_command(spec))
        delivery = table.issue(slot, default, now, None)
        self.pending.commands.append(command_row(delivery.desired_version, now, asset_id,
                                                 default, None, "lease"))
        return delivery

    def watch(self, key: str, asset_ids: Sequence[str], signals: Sequence[str]) -> Watch:
        """A set of assets read together every tick (a dispatch's members), split by shard."""
        by_shard: dict[int, list[int]] = {}
        shard_of = self.shard_of_asset
        for i, asset_id in enumerate(asset_ids):
            by_shard.setdefault(shard_of.get(asset_id, -1), []).append(i)
        parts = [(index, np.array(rows, np.int64), [asset_ids[i] for i in rows],
                  [signals[i] for i in rows]) for index, rows in by_shard.items()]
        n = len(asset_ids)
        return Watch(key, n, parts, self.synced, soc=np.full(n, math.nan),
                     last_seen=np.full(n, math.nan))

    def read(self, watch: Watch) -> Inputs:
        """What the watched assets report now (state 255: shard down, or asset gone)."""
        n = watch.size
        states = np.full(n, 255, np.uint8)
        values = np.full(n, math.nan)
        core = self.core
        share = SLOW_SHARE if watch.fresh else 1.0
        for index, picked, ids, signals in watch.parts:
            if index < 0 or index in core.down:
                continue
            shard = core.shards[index]
            size = len(ids)
            count = min(size, max(SLOW_MIN, math.ceil(size * share)))
            lo = (watch.cursor * count) % size if watch.fresh else 0
            slow = (lo, min(size, lo + count))
            known = index in watch.held and watch.key != ""
            answer = shard.call(ControlInputsOf(watch.key, None if known else ids, signals,
                                                slow))
            if answer is None:                     # a restarted shard: tell it the members
                answer = shard.call(ControlInputsOf(watch.key, ids, signals, slow))
            if answer is None:
                continue
            watch.held.add(index)
            states[picked] = np.frombuffer(answer.states, np.uint8)
            values[picked] = (np.array(answer.power_w, float) / 1000.0 if answer.values is None
                              else _floats(answer.values))
            rows = picked[slow[0]:slow[1]]
            watch.soc[rows] = _floats(answer.soc_pct)
            watch.last_seen[rows] = answer.last_seen
        watch.cursor = watch.cursor + 1 if watch.fresh else 0
        watch.fresh = True
        return Inputs(states, watch.last_seen.copy(), values, watch.soc.copy())

    def forget(self, watch: Watch) -> None:
        core = self.core
        for index in watch.held:
            if index not in core.down:
                core.shards[index].call(ForgetWatch(watch.key))
        watch.held.clear()

    # -- reading --------------------------------------------------------------------------

    def commands(self, asset_id: str | None, state: str | None) -> list[CommandRecord]:
        with self.lock:
            table = self.table
            if asset_id is not None:
                if asset_id not in table.slots:
                    self.core.model.asset(asset_id)      # unknown: UnknownAsset, with a hint
                slot = table.slots.get(asset_id)
                current = [] if slot is None else table.current([slot])
                done = [r for r in table.history if r.asset_id == asset_id]
            else:
                current = table.current()
                done = list(table.history)
        seen = {r.command_id for r in current}
        records = [r for r in done if r.command_id not in seen] + current
        records.sort(key=lambda r: r.desired_version)
        return [r for r in records if state is None or r.state == state]

    def desired_of(self, asset_id: str) -> tuple[dict[str, Any], int, str | None]:
        """The desired values control holds for an asset, its version and whether it
        follows them."""
        with self.lock:
            slot = self.table.slots.get(asset_id)
            if slot is None or self.table.seq[slot] == 0:
                return {}, 0, None
            following = self.table.following(slot)
            return (self.table.desired(slot), int(self.table.seq[slot]),
                    None if following is None else following.value)

    def metrics(self, dispatches: dict[str, dict[str, float]]) -> dict[str, Any]:
        with self.lock:
            table = self.table
            n = len(table)
            return {"commands_by_state": dict(table.counts),
                    "assets_not_following": int(np.count_nonzero(table.follow[:n] == FOLLOW_NOT)),
                    "command_resends_refused": table.budget.refused,
                    "command_acks_stale": self.counters["acks_stale"],
                    "control_rows_dropped": self.counters["control_rows_dropped"],
                    "control_write_failures": self.counters["control_write_failures"],
                    "dispatches": dispatches}

    # -- subscribers and the store ----------------------------------------------------------

    def subscribe(self, callback: CommandCallback) -> Callable[[], None]:
        with self.lock:
            self.subscribers.append(callback)
            if self.table.events is None:
                self.table.events = []

        def cancel() -> None:
            with self.lock:
                if callback in self.subscribers:
                    self.subscribers.remove(callback)
                if not self.subscribers:
                    self.table.events = None
        return cancel

    def emit(self) -> None:
        """Hand collected events to subscribers (no lock held while they run)."""
        with self.lock:
            events = self.table.events
            if not events:
                return
            self.table.events = []
            subscribers = list(self.subscribers)
        for event in events:
            for callback in subscribers:
                try:
                    callback(event)
                except Exception:
                    self.core.counters["callback_errors"] += 1
                    log.exception("command_callback_failed", command_id=event.command_id)

    def write(self) -> None:
        """Write what control has to record, in one transaction; keep it while the store is
        away (the oldest rows go past a bound, counted)."""
        with self.lock:
            if self.table.logged:
                self.pending.events.extend(event_rows(self.table.logged))
                self.table.logged = []
            if self.store is None:
                self.pending = ControlRows([], [], [], [])
                return
            rows = self.pending
            if not rows:
                return
            try:
                self.store.write(rows)
            except StoreUnavailable as error:
                self.counters["control_write_failures"] += 1
                log.warning("control_write_failed", reason=str(error))
                for part in (rows.commands, rows.events, rows.reports):
                    if len(part) > PENDING_ROWS_KEPT:
                        self.counters["control_rows_dropped"] += len(part) - PENDING_ROWS_KEPT
                        del part[:len(part) - PENDING_ROWS_KEPT]
                return
            self.pending = ControlRows([], [], [], [])

    def attach_store(self, store: ControlLog) -> None:
        self.store = store
        self.reserved = store.reserved()
        self.table.next_seq = max(self.table.next_seq, self.reserved + 1)

    def restore(self, now: float) -> int:
        """After a restart: each asset's newest command sent one by one, in the state the
        store recorded (open ones resume their timers; resends keep their ids). Returns how
        many are open again."""
        assert self.store is not None
        self.sync()
        table = self.table
        reopened = 0
        with self.lock:
            for logged in self.store.latest_commands():
                slot = table.slots.get(logged.asset_id)
                if slot is None:
                    continue
                reopened += table.restore(slot, logged.seq, logged.desired, logged.at,
                                          logged.expires_at, logged.state, logged.state_at,
                                          logged.reason, now)
            table.logged = []
        return reopened


def _grown(column: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size)
    out[:len(column)] = column
    return out


def _floats(values: Sequence[Any]) -> np.ndarray:
    try:
        return np.array(values, float)
    except (TypeError, ValueError):     # a boolean or text signal: not comparable
        return np.array([v if isinstance(v, int | float) else math.nan for v in values], float)


def _refusal(asset_id: str, reply: Any) -> CommandReceipt:
    if isinstance(reply, Unavailable):
        raise AssetUnavailable(reply.asset_id, reply.state, reply.last_seen)
    if isinstance(reply, InvalidCommand):
        raise reply
    raise TwinError(f"asset {asset_id!r} failed while handling the command ({reply!r}); it is "
                    f"being restarted")


def make_transport(transport: CommandTransport | None, sink: CommandSink | None
                   ) -> CommandTransport | None:
    if transport is not None and sink is not None:
        raise TypeError("pass either transport= or command_sink=, not both")
    if sink is not None:
        return SinkTransport(sink)
    return transport
