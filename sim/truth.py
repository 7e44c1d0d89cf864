"""Ground truth: what the simulator did, and what the runtime must therefore make of it.

Each asset has an :class:`Expectation`: the newest device time the runtime has accepted from
it and whether its actor is running. The simulator decides every sample's data-quality class
*before* it sends it, by the documented precedence (``docs/wire-format.md``, "Outcome
classes"): rejected > future > stale > duplicate > anomalous > late > accepted, after the
actor-status outcomes (deferred while its actor waits to restart, quarantined). The runtime
never tells the simulator; the report then compares the two counts.
"""

from __future__ import annotations

from typing import Final

from twin import OUTCOMES, Sample

ACCEPTED: Final = OUTCOMES.index("accepted")
DUPLICATE: Final = OUTCOMES.index("duplicate")
LATE: Final = OUTCOMES.index("late")
FUTURE: Final = OUTCOMES.index("future")
STALE: Final = OUTCOMES.index("stale")
ANOMALOUS: Final = OUTCOMES.index("anomalous")
REJECTED: Final = OUTCOMES.index("rejected")
DEFERRED: Final = OUTCOMES.index("deferred")
QUARANTINED: Final = OUTCOMES.index("quarantined")

# what a sample is meant to be, as the simulator built it
CLEAN: Final = 0            # well-formed, every value within bounds
BAD_VALUE: Final = 1        # well-formed, a value out of bounds or NaN
MALFORMED_WIRE: Final = 2   # rejected before any actor sees it (wire format, unknown asset)
MALFORMED_ACTOR: Final = 3  # rejected by its asset's actor (bad ts, unknown signal, bad type)

# the asset's actor, as the simulator's own fault schedule makes it
RUNNING: Final = 0
RESTARTING: Final = 1       # waiting out a restart backoff: samples wait in its mailbox
STOPPED: Final = 2          # quarantined: samples are refused


class Expectation:
    """What the runtime knows of one asset, as far as the simulator can tell."""

    __slots__ = ("accepted_at", "last_accepted", "last_ts", "status")

    def __init__(self) -> None:
        self.last_ts: float | None = None        # device time of the newest accepted sample
        self.last_accepted: Sample | None = None
        # runtime time when it arrived; None until the actor (re)started has one, since a
        # released actor is "unknown" until it accepts a sample
        self.accepted_at: float | None = None
        self.status = RUNNING


class Thresholds:
    """The classification limits at one arrival time, as the runtime computes them."""

    __slots__ = ("future_after", "now", "stale_before")

    def __init__(self, now: float, allowed_skew_s: float, retention_s: float) -> None:
        self.now = now
        self.future_after = now + allowed_skew_s
        self.stale_before = now - retention_s


def expect(exp: Expectation | None, sample: Sample, intent: int, limits: Thresholds) -> int:
    """The outcome the runtime will give ``sample`` (of the asset whose expectation is
    ``exp``; ``None`` for an id the model does not know). Updates ``exp`` when it is
    accepted, exactly as the asset's actor will."""
    if intent == MALFORMED_WIRE or exp is None:
        return REJECTED
    if exp.status == STOPPED:
        return QUARANTINED
    if exp.status == RESTARTING:
        return DEFERRED
    if intent == MALFORMED_ACTOR:
        return REJECTED
    ts = sample.ts
    if ts > limits.future_after:
        return FUTURE
    if ts < limits.stale_before:
        return STALE
    newest = exp.last_ts
    if newest is not None and ts <= newest:
        if ts == newest:
            return DUPLICATE
        return ANOMALOUS if intent == BAD_VALUE else LATE
    if intent == BAD_VALUE:
        return ANOMALOUS
    exp.last_ts = ts
    exp.last_accepted = sample
    exp.accepted_at = limits.now
    return ACCEPTED


class Episode:
    """A stretch of time a device was cut off from the runtime (``end`` None: still is)."""

    __slots__ = ("asset_id", "end", "start")

    def __init__(self, asset_id: str, start: float) -> None:
        self.asset_id = asset_id
        self.start = start
        self.end: float | None = None

    def length(self, until: float) -> float:
        return (self.end if self.end is not None else until) - self.start
