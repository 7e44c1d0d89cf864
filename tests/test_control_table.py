"""The lease book's invariants under any sequence of commands, acknowledgements, rejections,
dispatch batches and time (Hypothesis state machine on :class:`CommandTable`)."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from twin.control.retry import RetryPolicy
from twin.control.states import FINAL, OPEN, CommandState
from twin.control.table import CommandTable
from twin.core.kinds import default_kinds
from twin.core.model import AssetSpec

START = 1767225600.0
ASSETS = 4
OPEN_LABELS = {s.label for s in OPEN}
FINAL_LABELS = {s.label for s in FINAL}


class LeaseBook(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.table = CommandTable(RetryPolicy(ack_timeout_s=2.0, max_attempts=3,
                                              budget_per_s=1.0, budget_burst=2.0),
                                  random.Random(0), START)
        battery = default_kinds.get("battery")
        for i in range(ASSETS):
            spec = AssetSpec(f"b-{i}", "battery", 100.0, "site", 200.0)
            self.table.register(spec, battery, None)
        self.issued: list[tuple[str, int]] = []        # (asset id, seq) of every command
        self.newest: dict[str, int] = {}
        self.acked_stale = 0

    def _note(self, asset_id: str, seq: int) -> None:
        assert seq > self.newest.get(asset_id, 0), "desired versions only grow"
        self.newest[asset_id] = seq
        self.issued.append((asset_id, seq))

    @rule(asset=st.integers(0, ASSETS - 1), value=st.floats(-100, 100),
          ttl=st.none() | st.floats(0.5, 20))
    def command(self, asset: int, value: float, ttl: float | None) -> None:
        delivery = self.table.issue(asset, {"setpoint_kw": value}, self.now,
                                    None if ttl is None else self.now + ttl)
        self._note(delivery.asset_id, delivery.desired_version)

    @rule(members=st.sets(st.integers(0, ASSETS - 1), min_size=1),
          value=st.floats(-100, 100))
    def dispatch_batch(self, members: set[int], value: float) -> None:
        slots = np.array(sorted(members), np.int64)
        batch = self.table.issue_batch(slots, np.full(len(slots), value), "setpoint_kw",
                                       self.now, self.now + 3.0, 1)
        for delivery in batch:
            self._note(delivery.asset_id, delivery.desired_version)

    @precondition(lambda self: self.issued)
    @rule(pick=st.integers(0, 10_000), reject=st.booleans())
    def answer(self, pick: int, reject: bool) -> None:
        asset_id, seq = self.issued[pick % len(self.issued)]
        slot = self.table.slot_of_command(str(seq))
        if slot is None:
            assert seq != self.newest[asset_id] or (
                self.table.state_of_command(asset_id, seq) in FINAL_LABELS)
            return
        before = self.table.state_of_command(asset_id, seq)
        if reject:
            changed = self.table.rejected(slot, self.now, "no")
            assert changed == (before in ("sent", "delivered"))
        else:
            changed = self.table.delivered(slot, self.now)
            assert changed == (before == "sent")

    @rule(seconds=st.floats(0.1, 10), power=st.floats(-120, 120))
    def time_passes(self, seconds: float, power: float) -> None:
        self.now += seconds
        work = self.table.due(self.now)
        for slot in work.expired:                      # the facade sends the default
            delivery = self.table.issue(slot, {"setpoint_kw": 0.0}, self.now, None)
            self._note(delivery.asset_id, delivery.desired_version)
        slots = np.arange(ASSETS)
        self.table.judge(slots, np.ones(ASSETS, bool), np.full(ASSETS, power), self.now)

    @invariant()
    def one_open_command_per_asset_and_the_rest_final(self) -> None:
        for asset_id, seq in self.issued:
            state = self.table.state_of_command(asset_id, seq)
            if seq == self.newest[asset_id]:
                assert state in OPEN_LABELS | FINAL_LABELS
            else:
                assert state in FINAL_LABELS, (asset_id, seq, state)

    @invariant()
    def no_open_lease_outlives_its_end(self) -> None:
        table = self.table
        for slot in table.open_slots().tolist():
            assert table.expires_at[slot] > self.now, "due() ends every lease at its end"
            assert CommandState(int(table.state[slot])) in OPEN

    @invariant()
    def every_command_issued_is_counted_sent(self) -> None:
        assert self.table.counts["sent"] == len(self.issued)


LeaseBook.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                       deadline=None)
test_the_lease_book_keeps_its_invariants = LeaseBook.TestCase
