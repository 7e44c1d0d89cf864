"""Every asset's current command, as columns: the lease book of a fleet.

One row (a *slot*) per controllable asset holds its current command: sequence number (which
is also the asset's desired version: one counter for the fleet, so versions only grow), state,
the followed field's desired value, when it was issued, delivered and expires, its resend
timer, and whether the asset follows it. Columns are numpy arrays, so a dispatch tick over
100,000 batteries issues, expires and checks convergence with a handful of vector operations
instead of 100,000 small objects. Commands that are done are kept as :class:`CommandRecord`
in a bounded history; the store keeps them all.

Nothing here knows about shards, locks or the store: :mod:`twin.fleet.control` feeds it
reported values and hands what it returns to the transport and the store.

One module, past the usual size: every method reads and writes the same columns, and
splitting them would put a column's invariants (one open command per slot, versions that
only grow) in two places.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from twin.control.retry import RetryBudget, RetryPolicy
from twin.control.states import FINAL, NO_COMMAND, OPEN, CommandState, Following
from twin.control.transport import Delivery, DeliveryBatch
from twin.core.kinds import AssetKind
from twin.core.model import AssetSpec

S = CommandState
EQUAL: Final = 0
AT_MOST: Final = 1
NO_RULE: Final = -1
FOLLOW_NONE, FOLLOW_CONVERGED, FOLLOW_CONVERGING, FOLLOW_NOT = 0, 1, 2, 3
FOLLOWING_NAMES: Final = (None, Following.CONVERGED, Following.CONVERGING, Following.NOT_FOLLOWING)
_OPEN_CODES = np.array(sorted(int(s) for s in OPEN), dtype=np.int8)
_OPEN_INTS = frozenset(int(s) for s in OPEN)
_SENT = int(S.SENT)


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """One command as the fleet knows it now (``fleet.commands()`` returns these)."""

    command_id: str
    asset_id: str
    desired: Mapping[str, Any]
    desired_version: int
    state: str
    issued_at: float
    expires_at: float | None
    delivered_at: float | None
    attempts: int
    reason: str | None
    dispatch_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "asset_id": self.asset_id,
                "desired": dict(self.desired), "desired_version": self.desired_version,
                "state": self.state, "issued_at": self.issued_at,
                "expires_at": self.expires_at, "delivered_at": self.delivered_at,
                "attempts": self.attempts, "reason": self.reason,
                "dispatch_id": self.dispatch_id}


@dataclass(frozen=True, slots=True)
class CommandEvent:
    """A command changed state (``fleet.subscribe_commands`` streams these)."""

    at: float
    command_id: str
    asset_id: str
    state: str
    reason: str | None = None


@dataclass(slots=True)
class DueWork:
    """What the clock made due: resends for the transport, leases that ended."""

    resend: list[Delivery]
    expired: list[int]          # slots whose lease ended (their default goes out next)


_FLOAT_COLUMNS = ("value", "default", "tol", "follow_s", "issued_at", "delivered_at",
                  "expires_at", "next_try", "out_since")
_INT_COLUMNS = {"seq": np.int64, "state": np.int8, "mode": np.int8, "attempts": np.int16,
                "origin": np.int32, "unacked": np.int16, "follow": np.int8, "rule": np.int16,
                "reached": np.bool_}
_FILL = {"value": math.nan, "default": math.nan, "tol": 0.0, "follow_s": 0.0,
         "issued_at": math.nan, "delivered_at": math.nan, "expires_at": math.inf,
         "next_try": math.inf, "out_since": math.nan}


class CommandTable:
    """See the module docstring. Not thread-safe: the facade holds its control lock."""

    def __init__(self, policy: RetryPolicy, rng: random.Random, now: float, *,
                 history_kept: int = 10_000,
                 dispatch_names: Callable[[int], str | None] = lambda origin: None) -> None:
        self.policy = policy
        self.rng = rng
        self.budget = RetryBudget(policy, now)
        self.ids: list[str] = []
        self.slots: dict[str, int] = {}
        self.rules: list[tuple[str, str]] = []           # (command field, reported signal)
        self._rule_index: dict[tuple[str, str], int] = {}
        self.next_seq = 1
        self.single: dict[int, int] = {}                 # seq → slot, commands sent one by one
        self.batches: deque[tuple[int, np.ndarray]] = deque(maxlen=16)
        self.desired_of_slot: dict[int, dict[str, Any]] = {}   # full desired of a single command
        self.reasons: dict[int, str] = {}
        self.history: deque[CommandRecord] = deque(maxlen=history_kept)
        self.counts: dict[str, int] = {s.label: 0 for s in S}
        self.events: list[CommandEvent] | None = None    # collected while someone listens
        self.logged: list[tuple[int, float, str, str | None]] = []   # for the store
        self.dispatch_names = dispatch_names
        self._cap = 0
        self.seq = np.zeros(0, np.int64)
        self.state = np.zeros(0, np.int8)
        self.mode = np.zeros(0, np.int8)
        self.attempts = np.zeros(0, np.int16)
        self.origin = np.zeros(0, np.int32)
        self.unacked = np.zeros(0, np.int16)
        self.reached = np.zeros(0, np.bool_)     # the transport has acknowledged to it
        self.follow = np.zeros(0, np.int8)
        self.rule = np.zeros(0, np.int16)
        self.value = self.default = self.tol = self.follow_s = np.zeros(0)
        self.issued_at = self.delivered_at = self.expires_at = np.zeros(0)
        self.next_try = self.out_since = np.zeros(0)

    # -- rows -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    def register(self, spec: AssetSpec, kind: AssetKind, follow_timeout_s: float | None
                 ) -> int | None:
        """Give a controllable asset its row (again, after a model change); ``None`` for a
        kind that takes no commands."""
        if not kind.commands:
            return None
        slot = self.slots.get(spec.id)
        if slot is None:
            slot = len(self.ids)
            self._grow(slot + 1)
            self.ids.append(spec.id)
            self.slots[spec.id] = slot
        field, follow = next(iter(kind.follows.items()), (next(iter(kind.commands)), None))
        defaults = kind.default_command(spec)
        self.default[slot] = _as_float(defaults.get(field))
        if follow is None:
            self.mode[slot] = NO_RULE
            self.rule[slot] = self._rule(field, "")
        else:
            self.mode[slot] = EQUAL if follow.mode == "equal" else AT_MOST
            self.tol[slot] = follow.tolerance(spec)
            self.rule[slot] = self._rule(field, follow.signal)
        self.follow_s[slot] = (kind.dead_time_s + kind.settle_s if follow_timeout_s is None
                               else follow_timeout_s)
        return slot

    def _rule(self, field: str, signal: str) -> int:
        key = (field, signal)
        index = self._rule_index.get(key)
        if index is None:
            index = self._rule_index[key] = len(self.rules)
            self.rules.append(key)
        return index

    def _grow(self, size: int) -> None:
        if size <= self._cap:
            return
        cap = max(size, self._cap * 2, 1024)
        for name in _FLOAT_COLUMNS:
            old = getattr(self, name)
            new = np.full(cap, _FILL[name])
            new[:len(old)] = old
            setattr(self, name, new)
        for name, dtype in _INT_COLUMNS.items():
            old = getattr(self, name)
            new = np.zeros(cap, dtype)
            new[:len(old)] = old
            setattr(self, name, new)
        self._cap = cap

    def field_of(self, slot: int) -> str:
        return self.rules[int(self.rule[slot])][0]

    def signal_of(self, slot: int) -> str:
        return self.rules[int(self.rule[slot])][1]

    # -- issuing --------------------------------------------------------------------------

    def issue(self, slot: int, desired: Mapping[str, Any], now: float,
              expires_at: float | None, origin: int = 0) -> Delivery:
        """A new command for one asset: supersedes its current one; returns the delivery."""
        if int(self.state[slot]) in _OPEN_INTS:
            self._supersede(np.array([slot]), now)
        seq = self._take_seqs(1)
        self.single[seq] = slot
        self.desired_of_slot[slot] = dict(desired)
        self.reasons.pop(slot, None)
        value = desired.get(self.field_of(slot))
        self._start(slot, seq, _as_float(value), now, expires_at, origin)
        self.counts["sent"] += 1
        self._event(now, slot, S.SENT)
        return Delivery(str(seq), self.ids[slot], dict(desired), seq, expires_at, 1)

    def issue_batch(self, slots: np.ndarray, values: np.ndarray, field: str, now: float,
                    expires_at: float | None, origin: int,
                    asset_ids: Sequence[str] | None = None) -> DeliveryBatch:
        """New commands of one field for many assets (a dispatch tick), as one batch;
        ``asset_ids`` are the slots' ids when the caller has them at hand."""
        self._supersede(slots, now)
        first = self._take_seqs(len(slots))
        self.batches.append((first, slots.copy()))
        if self.desired_of_slot or self.reasons:
            for slot in slots.tolist():
                self.desired_of_slot.pop(slot, None)
                self.reasons.pop(slot, None)
        self._start(slots, np.arange(first, first + len(slots)), values, now, expires_at, origin)
        if asset_ids is None:
            ids = self.ids
            asset_ids = [ids[s] for s in slots.tolist()]
        if self.events is not None:
            self.events.extend(CommandEvent(now, str(first + i), a, "sent")
                               for i, a in enumerate(asset_ids))
        self.counts["sent"] += len(slots)
        return DeliveryBatch(first, asset_ids, field, values, expires_at)

    def _take_seqs(self, count: int) -> int:
        first = self.next_seq
        self.next_seq += count
        return first

    def _start(self, slots: Any, seqs: Any, values: Any, now: float, expires_at: float | None,
               origin: int) -> None:
        self.seq[slots] = seqs
        self.state[slots] = S.SENT
        self.value[slots] = values
        self.issued_at[slots] = now
        self.delivered_at[slots] = math.nan
        self.expires_at[slots] = math.inf if expires_at is None else expires_at
        self.attempts[slots] = 1
        self.next_try[slots] = now + self.policy.ack_timeout_s
        self.origin[slots] = origin
        # the settle window starts with the command, unless the asset is already out of
        # tolerance (then its clock keeps running: see judge)
        self.out_since[slots] = np.where(np.isnan(self.out_since[slots]), now,
                                         self.out_since[slots])

    def _supersede(self, slots: np.ndarray, now: float) -> None:
        if len(slots) == 1:                    # one command at a time: no set operations
            slot = int(slots[0])
            code = int(self.state[slot])
            if code not in _OPEN_INTS:
                return
            if code == _SENT:
                self.unacked[slot] += 1
            if self.origin[slot] == 0:
                self.history.append(self.record(slot, S.SUPERSEDED))
                self.single.pop(int(self.seq[slot]), None)
            self._move(slot, S.SUPERSEDED, now)
            self.next_try[slot] = math.inf
            return
        live = slots[np.isin(self.state[slots], _OPEN_CODES)]
        if not len(live):
            return
        self.unacked[live[self.state[live] == S.SENT]] += 1   # replaced before any ack
        singles = live[self.origin[live] == 0].tolist()
        for slot in singles:
            self.history.append(self.record(slot, S.SUPERSEDED))
            self.single.pop(int(self.seq[slot]), None)
        self._move_many(live, S.SUPERSEDED, now)
        self.next_try[live] = math.inf

    def restore(self, slot: int, seq: int, desired: Mapping[str, Any], issued_at: float,
                expires_at: float | None, state: str, state_at: float, reason: str | None,
                now: float) -> int:
        """Put back a command the store logged (after a restart); returns 1 if it is still
        open. One still unacknowledged is sent again soon with the same id."""
        code = CommandState.parse(state)
        self.seq[slot] = seq
        self.state[slot] = code
        self.origin[slot] = 0
        self.desired_of_slot[slot] = dict(desired)
        self.value[slot] = _as_float(desired.get(self.field_of(slot)))
        self.issued_at[slot] = issued_at
        self.expires_at[slot] = math.inf if expires_at is None else expires_at
        self.delivered_at[slot] = math.nan if code == S.SENT else state_at
        self.attempts[slot] = 1
        self.next_try[slot] = now if code == S.SENT else math.inf
        if reason:
            self.reasons[slot] = reason
        self.next_seq = max(self.next_seq, seq + 1)
        if code in OPEN:
            self.single[seq] = slot
            return 1
        return 0

    # -- acknowledgements -----------------------------------------------------------------

    def slot_of_command(self, command_id: str, *, current: bool = True) -> int | None:
        """The slot whose *current* command this is (``None``: unknown or no longer current;
        ``current=False``: the slot of any recent command, current or not)."""
        try:
            seq = int(command_id)
        except (TypeError, ValueError):
            return None
        slot = self.single.get(seq)
        if slot is None:
            for first, slots in reversed(self.batches):
                if first <= seq < first + len(slots):
                    slot = int(slots[seq - first])
                    break
        if slot is None or (current and self.seq[slot] != seq):
            return None
        return slot

    def late_ack(self, command_id: str) -> bool:
        """An acknowledgement of a command already replaced: not its state, but proof that
        the transport reaches the asset (a device that acknowledges slower than a dispatch
        renews its lease is not "not acknowledging")."""
        slot = self.slot_of_command(command_id, current=False)
        if slot is None:
            return False
        self.unacked[slot] = 0
        self.reached[slot] = True
        return True

    def delivered(self, slot: int, now: float) -> bool:
        if self.state[slot] != S.SENT:
            return False
        self.state[slot] = S.DELIVERED
        self.delivered_at[slot] = now
        self.next_try[slot] = math.inf
        self.unacked[slot] = 0
        self.reached[slot] = True
        self.counts["delivered"] += 1
        self._event(now, slot, S.DELIVERED)
        return True

    def delivered_batch(self, batch: DeliveryBatch, now: float) -> int:
        """Acknowledge every command of ``batch`` that is still current and unacknowledged."""
        found = [slots for first, slots in self.batches if first == batch.first_seq]
        if not found:
            return 0
        first, slots = batch.first_seq, found[0]
        current = slots[(self.seq[slots] == np.arange(first, first + len(slots))) &
                        (self.state[slots] == S.SENT)]
        self.state[current] = S.DELIVERED
        self.delivered_at[current] = now
        self.next_try[current] = math.inf
        self.unacked[current] = 0
        self.reached[current] = True
        self.counts["delivered"] += len(current)
        if self.events is not None:
            self.events.extend(CommandEvent(now, str(int(self.seq[s])), self.ids[s], "delivered")
                               for s in current.tolist())
        return len(current)

    def rejected(self, slot: int, now: float, reason: str) -> bool:
        if self.state[slot] not in (S.SENT, S.DELIVERED):
            return False
        self.unacked[slot] = 0
        self._finish(slot, S.REJECTED, now, reason or "rejected by the device")
        return True

    # -- time -----------------------------------------------------------------------------

    def due(self, now: float) -> DueWork:
        """Leases that ended and deliveries to send again (or give up on)."""
        n = len(self.ids)
        state = self.state[:n]
        work = DueWork([], [])
        ended = np.flatnonzero(np.isin(state, _OPEN_CODES) & (self.expires_at[:n] <= now))
        for slot in ended.tolist():
            self._finish(slot, S.EXPIRED, now, "lease ended", keep=self.origin[slot] == 0)
            work.expired.append(slot)
        resend = np.flatnonzero((state == S.SENT) & (self.next_try[:n] <= now))
        policy = self.policy
        for slot in resend.tolist():
            attempts = int(self.attempts[slot])
            if attempts >= policy.max_attempts:
                self._finish(slot, S.UNACKNOWLEDGED, now,
                             f"no acknowledgement after {attempts} sends")
                continue
            if not self.budget.take(now):
                self._finish(slot, S.UNACKNOWLEDGED, now,
                             "the fleet's retry budget is spent (mass outage?); not resent")
                continue
            attempts += 1
            self.attempts[slot] = attempts
            self.next_try[slot] = now + policy.wait_after(attempts, self.rng)
            work.resend.append(self._delivery(slot, attempts))
        return work

    def judge(self, slots: np.ndarray, online: np.ndarray, reported: np.ndarray, now: float,
              last_seen: np.ndarray | None = None) -> tuple[list[int], list[int]]:
        """Compare what ``slots`` report with what they were asked; returns the slots that
        started not following and those that stopped (for the roll-ups).

        The clock of "not within tolerance" starts when an asset leaves its tolerance and keeps
        running across new setpoints, so a device that ignores a dispatch renewing its lease
        every tick is still found out after its dead time and settle time. It is found out
        only on evidence: a report that arrived (``last_seen``) after that clock started. A
        device whose report of following was lost is converging until it reports again, not
        "not following" on what it said before it was asked.
        """
        state = self.state[slots]
        mode = self.mode[slots]
        ruled = np.isin(state, _OPEN_CODES) & (mode != NO_RULE) & online
        value = self.value[slots]
        tol = self.tol[slots]
        with np.errstate(invalid="ignore"):
            within = np.where(mode == EQUAL, np.abs(reported - value) <= tol,
                              np.abs(reported) <= value + tol)
        within &= ruled
        out = ruled & ~within
        since = self.out_since[slots]
        since = np.where(out & np.isnan(since), now, since)
        since = np.where(out, since, math.nan)
        self.out_since[slots] = since
        # judged once delivered, or while the transport evidently reaches the device (a
        # device acknowledging slower than a dispatch renews its lease is never "delivered")
        reaching = self.reached[slots] & (self.unacked[slots] < self.policy.max_attempts)
        late = out & ((now - since) > self.follow_s[slots]) & ((state != S.SENT) | reaching)
        if last_seen is not None:
            with np.errstate(invalid="ignore"):
                late &= last_seen >= since
        old_follow = self.follow[slots]
        follow = np.where(~ruled, FOLLOW_NONE,
                          np.where(within, FOLLOW_CONVERGED,
                                   np.where(late, FOLLOW_NOT, FOLLOW_CONVERGING)))
        self.follow[slots] = follow
        # converged: applied (one still "sent" evidently reached the device)
        unacked_but_done = slots[within & (state == S.SENT)]
        self._move_many(unacked_but_done, S.DELIVERED, now)
        self.delivered_at[unacked_but_done] = now
        self.next_try[unacked_but_done] = math.inf
        self.unacked[unacked_but_done] = 0
        self._move_many(slots[within & (state != S.APPLIED)], S.APPLIED, now)
        lagging = slots[late & (state != S.NOT_FOLLOWED)]
        self._move_many(lagging, S.NOT_FOLLOWED, now, lambda slot: (
            f"not within {self.tol[slot]:g} of {self.value[slot]:g} for "
            f"{self.follow_s[slot]:g} s"))
        started = slots[(follow == FOLLOW_NOT) & (old_follow != FOLLOW_NOT)].tolist()
        stopped = slots[(follow != FOLLOW_NOT) & (old_follow == FOLLOW_NOT)].tolist()
        return started, stopped

    def _move_many(self, slots: np.ndarray, new: CommandState, now: float,
                   reason: Callable[[int], str] | None = None) -> None:
        """Move many slots at once; events and reasons only where someone reads them (commands
        sent one by one, or while a subscriber listens)."""
        if not len(slots):
            return
        self.state[slots] = new
        self.counts[new.label] += len(slots)
        singles = slots[self.origin[slots] == 0]
        for slot in (slots if self.events is not None else singles).tolist():
            text = reason(slot) if reason is not None else None
            if text is not None:
                self.reasons[slot] = text
            elif new == S.APPLIED:
                self.reasons.pop(slot, None)
            self._event(now, slot, new, text)

    def forget_following(self, slots: Iterable[int]) -> list[int]:
        """Slots whose command ended: they no longer follow or fail to (returns those that
        were not following)."""
        was = []
        for slot in slots:
            if self.follow[slot] == FOLLOW_NOT:
                was.append(slot)
            self.follow[slot] = FOLLOW_NONE
            self.out_since[slot] = math.nan
        return was

    # -- state changes --------------------------------------------------------------------

    def _move(self, slot: int, new: CommandState, now: float, reason: str | None = None) -> None:
        self.state[slot] = new
        self.counts[new.label] += 1
        if reason is not None:
            self.reasons[slot] = reason
        elif new == S.APPLIED:
            self.reasons.pop(slot, None)
        self._event(now, slot, new, reason)

    def _finish(self, slot: int, new: CommandState, now: float, reason: str | None, *,
                keep: bool | np.bool_ = True) -> None:
        """End the slot's current command; keep a record of it in the history."""
        if keep:
            self.history.append(self.record(slot, new, reason))
        self.single.pop(int(self.seq[slot]), None)
        self._move(slot, new, now, reason)
        self.next_try[slot] = math.inf

    def _event(self, now: float, slot: int, state: CommandState, reason: str | None = None
               ) -> None:
        seq = int(self.seq[slot])
        if self.origin[slot] == 0:           # commands sent one by one are logged in the store
            self.logged.append((seq, now, state.label, reason))
        if self.events is not None:
            self.events.append(CommandEvent(now, str(seq), self.ids[slot], state.label, reason))

    # -- reading --------------------------------------------------------------------------

    def desired(self, slot: int) -> dict[str, Any]:
        full = self.desired_of_slot.get(slot)
        if full is not None:
            return dict(full)
        value = float(self.value[slot])
        return {} if math.isnan(value) else {self.field_of(slot): value}

    def record(self, slot: int, state: CommandState | None = None, reason: str | None = None
               ) -> CommandRecord:
        code = CommandState(int(self.state[slot])) if state is None else state
        expires = float(self.expires_at[slot])
        delivered = float(self.delivered_at[slot])
        origin = int(self.origin[slot])
        return CommandRecord(
            str(int(self.seq[slot])), self.ids[slot], self.desired(slot), int(self.seq[slot]),
            code.label, float(self.issued_at[slot]), None if math.isinf(expires) else expires,
            None if math.isnan(delivered) else delivered, int(self.attempts[slot]),
            reason if reason is not None else self.reasons.get(slot),
            self.dispatch_names(origin) if origin else None)

    def current(self, slots: Sequence[int] | None = None) -> list[CommandRecord]:
        """The current command of each slot that has one."""
        n = len(self.ids)
        chosen = np.flatnonzero(self.seq[:n] > 0) if slots is None else np.array(slots, int)
        return [self.record(int(s)) for s in chosen.tolist() if self.seq[s] > 0]

    def following(self, slot: int) -> Following | None:
        """Whether the asset follows its current command (``None``: no command standing, or
        its kind has no follow rule). Not judged yet counts as converging."""
        name = FOLLOWING_NAMES[int(self.follow[slot])]
        if name is None and self.mode[slot] != NO_RULE and int(self.state[slot]) in OPEN:
            return Following.CONVERGING
        return name

    def open_slots(self) -> np.ndarray:
        n = len(self.ids)
        return np.flatnonzero(np.isin(self.state[:n], _OPEN_CODES))

    def _delivery(self, slot: int, attempt: int) -> Delivery:
        expires = float(self.expires_at[slot])
        seq = int(self.seq[slot])
        return Delivery(str(seq), self.ids[slot], self.desired(slot), seq,
                        None if math.isinf(expires) else expires, attempt)

    def state_of_command(self, asset_id: str, seq: int) -> str:
        """Where command ``seq`` of ``asset_id`` is now (a receipt's live ``state``)."""
        slot = self.slots.get(asset_id)
        if slot is not None and int(self.seq[slot]) == seq:
            return CommandState(int(self.state[slot])).label
        command_id = str(seq)
        for record in reversed(self.history):
            if record.command_id == command_id:
                return record.state
        return S.SUPERSEDED.label      # replaced, and older than the history kept

    def state_of(self, slot: int) -> CommandState | None:
        code = int(self.state[slot])
        return None if code == NO_COMMAND else CommandState(code)

    def is_open(self, slot: int) -> bool:
        return int(self.state[slot]) in _OPEN_INTS

    def is_final(self, slot: int) -> bool:
        return int(self.state[slot]) in FINAL


def _as_float(value: Any) -> float:
    if value is None:
        return math.nan
    return float(value)
