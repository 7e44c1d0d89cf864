"""Supervision: strategies, restart intensity, backoff with jitter, quarantine, escalation."""

from supervisors._policy import (
    OnExhausted,
    Strategy,
    SupervisionPolicy,
    affected_children,
    backoff_delay,
    record_restart,
)
from supervisors._supervisor import Escalated, Supervised, SupervisionStats, Supervisor

__all__ = [
    "Escalated",
    "OnExhausted",
    "Strategy",
    "Supervised",
    "SupervisionPolicy",
    "SupervisionStats",
    "Supervisor",
    "affected_children",
    "backoff_delay",
    "record_restart",
]
