"""The states of a command and of an asset that has a desired value.

A command's life (docs/control.md)::

    sent ──ack──▶ delivered ──reported converges──▶ applied
      │               │  └──no convergence within follow_timeout_s──▶ not_followed ─┐
      │               └──device refuses──▶ rejected                     (converges later: applied)
      └──no ack after max_attempts (or the retry budget is spent)──▶ unacknowledged
    any open state ──a newer command for the asset──▶ superseded
                   ──its lease ends──▶ expired (the kind's default is sent instead)

Codes are small integers so that a column of states is one numpy array.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Final


class CommandState(IntEnum):
    SENT = 1
    DELIVERED = 2
    APPLIED = 3
    NOT_FOLLOWED = 4
    REJECTED = 5
    UNACKNOWLEDGED = 6
    SUPERSEDED = 7
    EXPIRED = 8

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> CommandState:
        try:
            return cls[name.upper()]
        except KeyError:
            valid = ", ".join(s.label for s in cls)
            raise ValueError(f"unknown command state {name!r} (valid: {valid})") from None


NO_COMMAND: Final = 0
OPEN: Final = frozenset({CommandState.SENT, CommandState.DELIVERED, CommandState.APPLIED,
                         CommandState.NOT_FOLLOWED})
"""States in which a command's desired value stands (its lease, if any, runs)."""
FINAL: Final = frozenset(CommandState) - OPEN


class Following(StrEnum):
    """Whether an asset with a desired value does what it was asked."""

    CONVERGED = "converged"           # reported within the kind's tolerance of desired
    CONVERGING = "converging"         # not yet, but inside its dead time + settle time
    NOT_FOLLOWING = "not_following"   # not within tolerance for longer than that
