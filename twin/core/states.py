"""The asset state machine (DESIGN.md), as a transition table.

    unknown ──sample──▶ online ──silence──▶ offline ──sample──▶ online
    any live state ──crash loop──▶ quarantined ──release──▶ unknown
    any state ──decommission──▶ decommissioned
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, NamedTuple

from twin.core.errors import TwinError

UNKNOWN: Final = 0
ONLINE: Final = 1
OFFLINE: Final = 2
QUARANTINED: Final = 3
DECOMMISSIONED: Final = 4

STATE_NAMES: Final = ("unknown", "online", "offline", "quarantined", "decommissioned")

# events
SAMPLE: Final = "sample"
SILENCE: Final = "silence"
CRASH_LOOP: Final = "crash_loop"
RELEASE: Final = "release"
DECOMMISSION: Final = "decommission"

_LIVE = (UNKNOWN, ONLINE, OFFLINE)
TRANSITIONS: Final[dict[tuple[int, str], int]] = {
    (UNKNOWN, SAMPLE): ONLINE,
    (OFFLINE, SAMPLE): ONLINE,
    (ONLINE, SAMPLE): ONLINE,
    (ONLINE, SILENCE): OFFLINE,
    **{(state, CRASH_LOOP): QUARANTINED for state in _LIVE},
    (QUARANTINED, RELEASE): UNKNOWN,
    **{(state, DECOMMISSION): DECOMMISSIONED for state in (*_LIVE, QUARANTINED)},
}


class IllegalTransition(TwinError, RuntimeError):
    """The state machine has no such transition (e.g. releasing an asset not quarantined)."""

    def __init__(self, state: int, event: str) -> None:
        super().__init__(f"no transition from {STATE_NAMES[state]!r} on {event!r}")


def next_state(state: int, event: str) -> int:
    """The state after ``event``; raises :class:`IllegalTransition` where the table has none."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


class Transition(NamedTuple):
    """An asset changed state: when (our clock), which, from, to, and why."""

    at: float
    asset_id: str
    old: str
    new: str
    reason: str


class ShardStatus(StrEnum):
    """A shard host's status: as its supervisor sees it (``running``, ``down``: dead with a
    restart pending, ``restarting``: a new host waits to be filled, ``failed``: past the
    restart intensity, no more restarts), and ``recovering`` as the facade reports a restarted
    host it is still refilling."""

    RUNNING = "running"
    DOWN = "down"
    RESTARTING = "restarting"
    FAILED = "failed"
    RECOVERING = "recovering"

    @property
    def alive(self) -> bool:
        """Whether a host in this status answers calls (a restarting one is being refilled)."""
        return self in (ShardStatus.RUNNING, ShardStatus.RESTARTING)

    @property
    def dead(self) -> bool:
        return self in (ShardStatus.DOWN, ShardStatus.FAILED)
