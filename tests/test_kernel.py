"""The actor kernel: mailboxes, delivery, failure hand-off, timers and the deadline wheel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import (
    DEFERRED,
    REFUSED,
    RUNNING,
    STOPPED,
    SUSPENDED,
    Actor,
    DeadlineWheel,
    Kernel,
    Timers,
)


class Recorder(Actor):
    """Logs every message it handles; raises on ``"boom"``; on ``("echo", x)`` tells itself x."""

    def __init__(self, kernel: Kernel, supervisor: Any = None) -> None:
        super().__init__()
        self.kernel, self.supervisor = kernel, supervisor
        self.handled: list[Any] = []

    def receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        if isinstance(message, tuple) and message[0] == "echo":
            self.kernel.tell(self, message[1])
            self.handled.append(f"{message[1]}-sent")
            return None
        self.handled.append(message)
        return f"reply:{message}"


class FakeSupervisor:
    """Records each failure; with ``resume_at_once`` it restarts the child inside the call."""

    def __init__(self, kernel: Kernel, resume_at_once: bool = False) -> None:
        self.kernel, self.resume_at_once = kernel, resume_at_once
        self.calls: list[tuple[Actor, Any, BaseException]] = []

    def child_failed(self, child: Any, message: Any, error: BaseException) -> None:
        self.calls.append((child, message, error))
        if self.resume_at_once:
            self.kernel.resume(child)


@pytest.fixture
def kernel() -> Kernel:
    return Kernel()


@pytest.fixture
def supervisor(kernel: Kernel) -> FakeSupervisor:
    return FakeSupervisor(kernel)


def test_messages_are_handled_in_fifo_order_per_actor(kernel: Kernel) -> None:
    a, b = Recorder(kernel), Recorder(kernel)
    for i in range(5):
        kernel.tell(a, f"a{i}")
        kernel.tell(b, f"b{i}")
    assert kernel.run() == 10
    assert (a.handled, b.handled) == ([f"a{i}" for i in range(5)], [f"b{i}" for i in range(5)])
    assert a.pending == b.pending == 0


def test_a_message_sent_by_a_handler_runs_only_after_that_handler_returns(kernel: Kernel) -> None:
    actor = Recorder(kernel)
    kernel.tell(actor, ("echo", "pong"))
    kernel.tell(actor, "later")
    kernel.run()
    assert actor.handled == ["pong-sent", "later", "pong"]


def test_deliver_runs_an_idle_actors_handler_at_once_and_returns_its_reply(kernel: Kernel) -> None:
    actor = Recorder(kernel)
    assert kernel.deliver(actor, "x") == "reply:x"
    assert (actor.handled, actor.pending) == (["x"], 0)
    reply = kernel.deliver(actor, "y", lambda target, message: (target is actor, message))
    assert reply == (True, "y")                 # the given handler instead of receive
    assert actor.handled == ["x"]


def test_deliver_queues_behind_waiting_messages_so_order_is_kept(kernel: Kernel) -> None:
    actor = Recorder(kernel)
    kernel.tell(actor, "first")
    assert kernel.deliver(actor, "second") is DEFERRED
    assert actor.handled == []
    kernel.run()
    assert actor.handled == ["first", "second"]


def test_deliver_to_a_suspended_actor_is_deferred_until_it_resumes(kernel: Kernel) -> None:
    actor = Recorder(kernel)
    kernel.suspend(actor)
    assert kernel.deliver(actor, "m1") is DEFERRED
    assert kernel.deliver(actor, "m2") is DEFERRED
    kernel.run()
    assert (actor.handled, actor.pending) == ([], 2)
    kernel.resume(actor)
    assert (actor.status, kernel.run()) == (RUNNING, 2)
    assert actor.handled == ["m1", "m2"]


def test_deliver_and_tell_to_a_stopped_actor_are_refused(kernel: Kernel) -> None:
    actor = Recorder(kernel)
    kernel.suspend(actor)
    kernel.tell(actor, "waiting")
    assert (kernel.stop(actor), actor.status) == (1, STOPPED)
    assert kernel.deliver(actor, "late") is REFUSED
    assert kernel.tell(actor, "late") is False
    kernel.resume(actor)                 # resume does not bring a stopped actor back
    kernel.run()
    assert actor.handled == []
    kernel.restart_running(actor)
    assert kernel.deliver(actor, "again") == "reply:again"


def test_a_handler_exception_suspends_the_actor_and_tells_its_supervisor_once(
        kernel: Kernel, supervisor: FakeSupervisor) -> None:
    actor = Recorder(kernel, supervisor)
    reply = kernel.deliver(actor, "boom")
    assert isinstance(reply, ValueError)
    assert (actor.status, kernel.failures) == (SUSPENDED, 1)
    assert supervisor.calls == [(actor, "boom", reply)]
    assert kernel.deliver(actor, "after") is DEFERRED
    kernel.run()
    assert supervisor.calls == [(actor, "boom", reply)]


def test_a_failing_actor_does_not_stop_the_kernel_running_other_actors(
        kernel: Kernel, supervisor: FakeSupervisor) -> None:
    bad, good = Recorder(kernel, supervisor), Recorder(kernel, supervisor)
    for target, message in ((bad, "boom"), (good, "g1"), (bad, "b1"), (good, "g2"), (bad, "b2")):
        kernel.tell(target, message)
    kernel.run()
    assert good.handled == ["g1", "g2"]
    assert (bad.handled, bad.status, bad.pending) == ([], SUSPENDED, 2)
    assert [call[0] for call in supervisor.calls] == [bad]


def test_resume_runs_the_messages_that_waited_in_order(
        kernel: Kernel, supervisor: FakeSupervisor) -> None:
    actor = Recorder(kernel, supervisor)
    for message in ("boom", "m1", "m2"):
        kernel.tell(actor, message)
    kernel.run()
    kernel.tell(actor, "m3")
    kernel.resume(actor)
    kernel.run()
    assert (actor.handled, actor.pending) == (["m1", "m2", "m3"], 0)


def test_a_restart_inside_child_failed_handles_each_waiting_message_once(kernel: Kernel) -> None:
    supervisor = FakeSupervisor(kernel, resume_at_once=True)
    actor = Recorder(kernel, supervisor)
    for message in ("m1", "boom", "m2", "boom", "m3"):
        kernel.tell(actor, message)
    kernel.run()
    kernel.tell(actor, "m4")
    kernel.run()
    assert actor.handled == ["m1", "m2", "m3", "m4"]
    assert (len(supervisor.calls), actor.status) == (2, RUNNING)


# -- timers -------------------------------------------------------------------------------

def test_timers_fire_in_time_order_and_ties_in_call_order() -> None:
    timers = Timers()
    fired: list[tuple[str, float]] = []
    for label, when in (("c", 3.0), ("a1", 1.0), ("b", 2.0), ("a2", 1.0)):
        timers.call_at(when, lambda now, label=label: fired.append((label, now)))
    assert timers.next_due() == 1.0
    assert timers.fire_due(0.5) == 0
    assert timers.fire_due(2.0) == 3
    assert fired == [("a1", 2.0), ("a2", 2.0), ("b", 2.0)]
    assert len(timers) == 1
    assert timers.fire_due(10.0) == 1
    assert [label for label, _ in fired] == ["a1", "a2", "b", "c"]
    assert timers.next_due() is None


def test_a_cancelled_timer_never_fires() -> None:
    timers = Timers()
    fired: list[str] = []
    timers.cancel(timers.call_at(0.5, lambda now: fired.append("drop")))
    timers.call_at(1.0, lambda now: fired.append("keep"))
    assert (len(timers), timers.next_due()) == (1, 1.0)
    assert timers.fire_due(5.0) == 1
    assert (fired, len(timers)) == (["keep"], 0)


def test_cancelling_a_timer_that_already_fired_changes_nothing() -> None:
    timers = Timers()
    done = timers.call_at(1.0, lambda now: None)
    timers.fire_due(1.0)
    timers.call_at(2.0, lambda now: None)
    timers.cancel(done)
    assert len(timers) == 1
    assert (timers.fire_due(2.0), len(timers)) == (1, 0)


def test_kernel_advance_fires_due_timers_and_runs_what_they_queued(
        kernel: Kernel, supervisor: FakeSupervisor) -> None:
    actor = Recorder(kernel, supervisor)
    kernel.suspend(actor)
    kernel.deliver(actor, "waited")
    kernel.timers.call_at(10.0, lambda now: kernel.resume(actor))
    assert kernel.advance(9.9) == 0
    assert actor.handled == []
    assert kernel.advance(10.0) == 1
    assert actor.handled == ["waited"]


# -- the deadline wheel -----------------------------------------------------------------------

@dataclass(eq=False)
class Entry:
    deadline: float
    armed: bool = False


class Wheel:
    def __init__(self, resolution: float = 1.0) -> None:
        self.expired: list[tuple[Entry, float]] = []     # (entry, now) per expiry
        self.wheel = DeadlineWheel(lambda e, now: self.expired.append((e, now)), resolution)

    def arm(self, deadline: float) -> Entry:
        entry = Entry(deadline)
        self.wheel.arm(entry)
        return entry


@pytest.mark.parametrize("resolution", [1.0, 5.0, 0.25])
@pytest.mark.parametrize("deadline", [10.0, 10.3, 10.999, 12.75])
def test_an_entry_fires_exactly_when_now_reaches_its_deadline(
        resolution: float, deadline: float) -> None:
    w = Wheel(resolution)
    entry = w.arm(deadline)
    assert (w.wheel.advance(deadline - 0.001), entry.armed) == (0, True)
    assert (w.wheel.advance(deadline), entry.armed) == (1, False)
    assert w.expired == [(entry, deadline)]


@pytest.mark.parametrize(("later", "quiet"), [
    (14.6, [10.3, 12.0, 14.0, 14.5]),      # re-armed into a later bucket
    (10.8, [10.3, 10.5, 10.7]),            # re-armed into the bucket now due
], ids=["later-bucket", "same-bucket"])
def test_moving_the_deadline_later_rearms_instead_of_firing(later: float, quiet: list[float]
                                                            ) -> None:
    w = Wheel()
    entry = w.arm(10.3)
    entry.deadline = later
    for now in quiet:
        assert (w.wheel.advance(now), entry.armed) == (0, True), now
    assert w.wheel.advance(later) == 1
    assert w.expired == [(entry, later)]


def test_a_disarmed_entry_never_fires() -> None:
    w = Wheel()
    gone, kept = w.arm(5.0), w.arm(5.0)
    w.wheel.disarm(gone)
    assert w.wheel.advance(100.0) == 1
    assert (w.expired, w.wheel.buckets) == ([(kept, 100.0)], 0)


def test_many_entries_in_one_bucket_fire_each_at_its_own_deadline() -> None:
    w = Wheel()
    entries = [w.arm(20.0 + i / 100) for i in range(100)]
    assert w.wheel.buckets == 1
    for step in range(100):
        now = 20.0 + step / 100
        assert w.wheel.advance(now) == 1, now
        assert w.expired[-1] == (entries[step], now)
    assert (w.wheel.advance(30.0), len(w.expired)) == (0, 100)


Op = tuple[str, int, float]
ops = st.lists(st.one_of(
    st.tuples(st.just("arm"), st.integers(0, 7), st.floats(0.0, 40.0)),
    st.tuples(st.just("later"), st.integers(0, 7), st.floats(0.0, 15.0)),
    st.tuples(st.just("disarm"), st.integers(0, 7), st.just(0.0)),
    st.tuples(st.just("advance"), st.just(0), st.floats(0.0, 6.0)),
), max_size=60)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(ops=ops, resolution=st.sampled_from([0.1, 0.5, 1.0, 2.5, 7.0]))
def test_the_wheel_fires_exactly_what_a_brute_force_check_says(
        ops: list[Op], resolution: float) -> None:
    w = Wheel(resolution)
    entries = [Entry(0.0) for _ in range(8)]
    armed = [False] * 8                       # the model: armed since its last arm, not fired
    now = 0.0
    for op, i, value in [*ops, ("advance", 0, 1e6)]:
        entry = entries[i]
        if op == "arm" and not armed[i]:      # as an asset does: arm only when unarmed
            entry.deadline = value
            w.wheel.arm(entry)
            armed[i] = True
        elif op == "later" and armed[i]:      # a sample moves the deadline later
            entry.deadline += value
        elif op == "disarm":
            w.wheel.disarm(entry)
            armed[i] = False
        elif op == "advance":
            now += value
            due = {j for j in range(8) if armed[j] and entries[j].deadline <= now}
            w.expired.clear()
            assert w.wheel.advance(now) == len(due)
            assert sorted(id(e) for e, _ in w.expired) == sorted(id(entries[j]) for j in due)
            for j in due:
                armed[j] = False
            assert [e.armed for e in entries] == armed
    assert not any(armed)
