"""When an unacknowledged delivery is sent again, and how many resends the fleet allows.

Each resend waits exponentially longer with "equal jitter" (at least half the ceiling, the rest
random), so devices that lost their link together do not hear from us together. A fleet-wide
token bucket caps resends: when a mass outage has spent it, commands go ``unacknowledged``
at once instead of flooding the transport (gRPC's retry throttling makes the same trade).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    ack_timeout_s: float = 5.0        # a delivery not acknowledged within this is sent again
    max_attempts: int = 4             # sends in all (the first one included)
    backoff_max_s: float = 60.0
    jitter: float = 0.5               # the random part of each wait, as a fraction
    budget_per_s: float = 100.0       # resends the fleet may make per second, on average
    budget_burst: float = 1000.0      # and at most this many in a burst

    def __post_init__(self) -> None:
        for name in ("ack_timeout_s", "backoff_max_s", "budget_per_s", "budget_burst"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"RetryPolicy.{name} must be > 0, got {value!r}")
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts!r}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"RetryPolicy.jitter must be within [0, 1], got {self.jitter!r}")

    def wait_after(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait for an acknowledgement of send number ``attempt`` (1-based): the
        first send gets ``ack_timeout_s``, each resend twice as long as the one before, with
        jitter, up to ``backoff_max_s``."""
        if attempt <= 1:
            return self.ack_timeout_s
        ceiling = min(self.backoff_max_s, self.ack_timeout_s * 2.0 ** min(attempt - 1, 60))
        return ceiling * (1.0 - self.jitter) + rng.uniform(0.0, ceiling * self.jitter)


class RetryBudget:
    """A token bucket on the fleet's clock: one token per resend."""

    def __init__(self, policy: RetryPolicy, now: float) -> None:
        self.rate = policy.budget_per_s
        self.burst = policy.budget_burst
        self.tokens = policy.budget_burst
        self.at = now
        self.refused = 0

    def take(self, now: float) -> bool:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.refused += 1
        return False
