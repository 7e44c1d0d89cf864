"""Clocks. Every component takes one, so time is an input (DESIGN decision 3)."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Anything that tells unix time in seconds."""

    def now(self) -> float: ...


class RealClock:
    """Wall-clock time (``time.time``)."""

    def now(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "RealClock()"


class VirtualClock:
    """A clock that moves only when told to: tests and simulations run in virtual time.

    >>> clock = VirtualClock(start=1767225600.0)
    >>> clock.advance(30)
    1767225630.0
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (never backwards) and return the new time."""
        if not seconds >= 0:  # also refuses NaN
            raise ValueError(f"a clock only moves forward: advance({seconds!r})")
        self._now += seconds
        return self._now

    def jump_to(self, when: float) -> float:
        """Move forward to the absolute time ``when``."""
        return self.advance(when - self._now)

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now!r})"
