"""The asset actor: one per asset, running the online/offline state machine (DESIGN.md).

Protocol (messages an asset actor accepts, and its replies)
---------------------------------------------------------
``Sample``        → outcome code (``twin.core.samples``) or a ``Rejection``
``Command``       → ``CommandAccepted`` | ``Unavailable`` | ``InvalidCommand`` (reply values)
``InjectedFault`` → raises inside the handler (chaos testing: exercises supervision)

Everything a handler decides is computed before it commits, so an exception (from a kind's
hook, or an injected fault) leaves the actor at its last good state; the supervisor then
restarts it from there. Offline detection is a deadline in the shard's :class:`DeadlineWheel`:
a sample costs one attribute write, never a timer operation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from actors._kernel import Actor, DeadlineWheel, Kernel
from twin.core.errors import InvalidCommand
from twin.core.kinds import INT_MAX, INT_MIN, AssetKind, Rejection
from twin.core.samples import ACCEPTED, ANOMALOUS, DUPLICATE, FUTURE, LATE, OUTCOMES, STALE, Sample
from twin.core.states import (
    CRASH_LOOP,
    DECOMMISSION,
    ONLINE,
    QUARANTINED,
    RELEASE,
    SAMPLE,
    SILENCE,
    STATE_NAMES,
    UNKNOWN,
    next_state,
)

if TYPE_CHECKING:
    from actors.groups import LeafTally
    from twin.core.model import AssetSpec


@dataclass(frozen=True, slots=True)
class Command:
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CommandAccepted:
    asset_id: str
    desired: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Unavailable:
    asset_id: str
    state: str
    last_seen: float | None


@dataclass(frozen=True, slots=True)
class InjectedFault:
    reason: str = "injected fault"


class AssetHost(Protocol):
    """What an asset actor needs from the shard that holds it."""

    now: float
    future_after: float      # now + allowed skew: device times beyond are "future"
    stale_before: float      # now - retention: device times before are "stale"
    kernel: Kernel
    wheel: DeadlineWheel

    def transition(self, asset: AssetActor, old: int, new: int, reason: str) -> None: ...


class AssetActor(Actor):
    """One asset's twin: its expected (spec), desired and reported views, and its state."""

    __slots__ = ("armed", "deadline", "desired", "host", "kind", "last_seen", "last_ts",
                 "n_accepted", "power_w", "quality", "reported", "restarts", "spec", "state",
                 "tallies")

    def __init__(self, spec: AssetSpec, kind: AssetKind, host: AssetHost,
                 tallies: tuple[LeafTally, ...]) -> None:
        super().__init__()
        self.spec = spec
        self.kind = kind
        self.host = host
        self.state = UNKNOWN
        self.reported: dict[str, Any] | None = None
        self.desired: dict[str, Any] | None = None
        self.last_ts: float | None = None      # device time of the newest accepted sample
        self.last_seen: float | None = None    # our time when it arrived
        self.deadline = 0.0                    # offline once our clock passes this
        self.armed = False
        self.power_w = 0                       # last reported power, integer watts
        self.n_accepted = 0
        self.quality: dict[str, int] | None = None   # counts of non-accepted outcomes
        self.restarts = 0
        self.tallies = tallies
        for tally in tallies:
            tally.add(spec.kind, spec.id, UNKNOWN, 0, capacity_w(spec))

    @property
    def name(self) -> str:
        return f"asset:{self.spec.id}"

    # -- messages ---------------------------------------------------------------------------

    def receive(self, message: Any) -> Any:
        if type(message) is Sample:
            return self.on_sample(message)
        if type(message) is Command:
            return self.on_command(message)
        if type(message) is InjectedFault:
            raise RuntimeError(message.reason)
        return super().receive(message)

    def on_sample(self, sample: Sample) -> int | Rejection:
        host = self.host
        now = host.now
        ts: Any = sample.ts          # anything may arrive; checked just below
        kind_of_ts = type(ts)
        if ((kind_of_ts is not float and (kind_of_ts is not int or not INT_MIN <= ts <= INT_MAX))
                or ts - ts != 0):
            return self._note(Rejection("ts", ts, "expected device time as finite unix seconds"))
        spec = self.spec
        kind = self.kind
        signals = sample.signals
        verdict = kind.classify(spec, signals)
        if verdict is not False and verdict is not True:
            return self._note(verdict)
        if ts > host.future_after:
            return self._note(FUTURE)
        if ts < host.stale_before:
            return self._note(STALE)
        newest = self.last_ts
        if newest is not None and ts <= newest:
            if ts == newest:
                return self._note(DUPLICATE)
            return self._note(ANOMALOUS if verdict else LATE)
        if verdict:
            return self._note(ANOMALOUS)
        derived = kind.derive(spec, self.reported or {}, signals) if kind.derives else None
        # -- commit: nothing below raises ---------------------------------------------------
        reported = self.reported
        if reported is None:
            self.reported = reported = dict(signals)
        else:
            reported.update(signals)
        if derived:
            reported.update(derived)
        self.last_ts = ts
        self.last_seen = now
        self.deadline = now + spec.offline_after_s
        self.n_accepted += 1
        power = signals.get(kind.power_signal)
        if self.state == ONLINE:
            if power is not None:
                watts = round(power * 1000.0)
                delta = watts - self.power_w
                if delta:
                    self.power_w = watts
                    for tally in self.tallies:
                        tally.rows[spec.kind][4] += delta      # ROW_POWER_W
                        if not tally.dirty:
                            tally.mark()
        else:
            if power is not None:
                self.power_w = round(power * 1000.0)
            self._transition(next_state(self.state, SAMPLE), "sample")
        if not self.armed:
            host.wheel.arm(self)
        return ACCEPTED

    def on_command(self, command: Command) -> CommandAccepted | Unavailable | InvalidCommand:
        if self.state != ONLINE:
            return Unavailable(self.spec.id, STATE_NAMES[self.state], self.last_seen)
        try:
            desired = self.kind.check_command(self.spec, command.payload)
        except InvalidCommand as error:
            return error
        if self.desired is None:
            self.desired = {}
        self.desired.update(desired)
        return CommandAccepted(self.spec.id, dict(self.desired))

    def _note(self, outcome: int | Rejection) -> int | Rejection:
        quality = self.quality
        if quality is None:
            quality = self.quality = {}
        name = OUTCOMES[outcome] if type(outcome) is int else "rejected"
        quality[name] = quality.get(name, 0) + 1
        return outcome

    # -- timers, called by the shard -------------------------------------------------------

    def deadline_passed(self) -> None:
        if self.state == ONLINE:
            self._transition(next_state(ONLINE, SILENCE), "silence")

    # -- supervision (the Supervised protocol) -----------------------------------------------

    def suspend_tree(self) -> None:
        self.host.kernel.suspend(self)

    def restart_tree(self, now: float) -> None:
        """Restart from the last good state: committed state is kept (handlers commit only
        after they succeed); the failed message is gone; waiting messages run."""
        if self.state == QUARANTINED:
            return
        self.restarts += 1
        self.host.kernel.resume(self)

    def quarantine(self, now: float, reason: str) -> None:
        if self.state == QUARANTINED:
            return
        self.host.kernel.stop(self)
        self.host.wheel.disarm(self)
        self._transition(next_state(self.state, CRASH_LOOP), reason)

    def release(self) -> None:
        """An operator lets a quarantined asset run again; it is ``unknown`` until it reports."""
        self._transition(next_state(self.state, RELEASE), "released")
        self.host.kernel.restart_running(self)

    def retire(self) -> None:
        """Decommission: leave every tally, stop for good."""
        next_state(self.state, DECOMMISSION)          # validates the transition
        self.host.kernel.stop(self)
        self.host.wheel.disarm(self)
        self.leave_tallies()
        old, self.state = self.state, next_state(self.state, DECOMMISSION)
        self.host.transition(self, old, self.state, "decommissioned")

    def leave_tallies(self) -> None:
        for tally in self.tallies:
            tally.remove(self.spec.kind, self.spec.id, self.state, self.power_w,
                         capacity_w(self.spec))
        self.tallies = ()

    def join_tallies(self, tallies: tuple[LeafTally, ...]) -> None:
        for tally in tallies:
            tally.add(self.spec.kind, self.spec.id, self.state, self.power_w,
                      capacity_w(self.spec))
        self.tallies = tallies

    def _transition(self, new: int, reason: str) -> None:
        old = self.state
        if old == new:
            return
        self.state = new
        for tally in self.tallies:
            tally.transition(self.spec.kind, self.spec.id, old, new, self.power_w)
        self.host.transition(self, old, new, reason)

    # -- state transfer (moves between shards, snapshots) ---------------------------------------

    def export_row(self) -> list[Any]:
        """Everything needed to continue elsewhere (another shard, or after a restart), as
        plain data for msgpack; waiting samples as wire arrays [asset_id, ts, seq, signals]."""
        mailbox = [[m.asset_id, m.ts, m.seq, m.signals] for m in (self._mailbox or ())
                   if type(m) is Sample]
        return [self.state, self.reported, self.desired, self.last_ts, self.last_seen,
                self.power_w, self.n_accepted, self.quality, self.restarts, mailbox]

    def import_row(self, row: Sequence[Any]) -> None:
        """Take over an exported row (the actor must not be in any tally yet)."""
        (self.state, self.reported, self.desired, self.last_ts, self.last_seen, self.power_w,
         self.n_accepted, self.quality, self.restarts, mailbox) = row
        if self.state == ONLINE and self.last_seen is not None:
            self.deadline = self.last_seen + self.spec.offline_after_s
            self.host.wheel.arm(self)
        elif self.state == QUARANTINED:
            self.host.kernel.stop(self)
        for asset_id, ts, seq, signals in mailbox:
            self.host.kernel.tell(self, Sample(asset_id, ts, signals, seq))


def capacity_w(spec: AssetSpec) -> int:
    return round(spec.rated_kw * 1000.0)
