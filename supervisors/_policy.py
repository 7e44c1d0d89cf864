"""Supervision policy: strategy, restart intensity and backoff, as pure functions."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

T = TypeVar("T")


class Strategy(StrEnum):
    """Which children restart when one fails (Erlang/OTP names)."""

    ONE_FOR_ONE = "one_for_one"     # only the failed child
    ONE_FOR_ALL = "one_for_all"     # every child of the supervisor
    REST_FOR_ONE = "rest_for_one"   # the failed child and those started after it


class OnExhausted(StrEnum):
    """What a supervisor does when a child fails more often than the intensity allows."""

    QUARANTINE = "quarantine"   # stop that child, count it as quarantined; siblings carry on
    ESCALATE = "escalate"       # fail the supervisor itself, handing the failure to its parent


@dataclass(frozen=True, slots=True)
class SupervisionPolicy:
    """How a supervisor treats failing children.

    At most ``max_restarts`` restarts within ``within_s`` seconds; past that, ``on_exhausted``.
    The n-th consecutive restart of a child waits ``backoff(n)``: exponential from
    ``backoff_base_s`` up to ``backoff_max_s``, with jitter so that siblings that fail together
    do not restart in lockstep. The first restart is immediate (``first_restart_immediate``).
    """

    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = 3
    within_s: float = 60.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    jitter: float = 0.5
    first_restart_immediate: bool = True
    on_exhausted: OnExhausted = OnExhausted.QUARANTINE

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.within_s <= 0:
            raise ValueError(f"restart intensity needs max_restarts >= 0 and within_s > 0, got "
                             f"{self.max_restarts} in {self.within_s}s")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter is a fraction in [0, 1], got {self.jitter}")
        if self.backoff_base_s < 0 or self.backoff_max_s < self.backoff_base_s:
            raise ValueError(f"backoff needs 0 <= base <= max, got {self.backoff_base_s}, "
                             f"{self.backoff_max_s}")


def record_restart(history: tuple[float, ...], now: float, max_restarts: int, within_s: float
                   ) -> tuple[tuple[float, ...], bool]:
    """Add a failure at ``now`` to the restart ``history`` (failure times, oldest first).

    Returns the history trimmed to the window and whether the intensity is exceeded, i.e.
    more than ``max_restarts`` failures fell within the last ``within_s`` seconds.
    """
    horizon = now - within_s
    recent = (*(t for t in history if t > horizon), now)
    return recent, len(recent) > max_restarts


def backoff_delay(attempt: int, policy: SupervisionPolicy, rng: random.Random) -> float:
    """Delay before restart number ``attempt`` (1-based, counted within the window)."""
    if attempt <= 1 and policy.first_restart_immediate:
        return 0.0
    exponent = attempt - 2 if policy.first_restart_immediate else attempt - 1
    # past 2**62 any base is beyond any sane cap; stop there so the power cannot overflow
    ceiling = min(policy.backoff_max_s, policy.backoff_base_s * (2.0 ** min(exponent, 62)))
    # "equal jitter": at least half the ceiling, the rest random, so delays never collapse to 0
    return ceiling * (1.0 - policy.jitter) + rng.uniform(0.0, ceiling * policy.jitter)


def affected_children(children: Sequence[T], failed: T, strategy: Strategy) -> list[T]:
    """The children to restart when ``failed`` fails, in start order."""
    if strategy is Strategy.ONE_FOR_ONE:
        return [failed]
    if strategy is Strategy.ONE_FOR_ALL:
        return list(children)
    index = next(i for i, child in enumerate(children) if child is failed)
    return list(children[index:])
