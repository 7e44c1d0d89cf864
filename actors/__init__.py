"""Actors: the lightweight kernel, asset actors and roll-up (group) actors."""

from actors._kernel import (
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

__all__ = [
    "DEFERRED",
    "REFUSED",
    "RUNNING",
    "STOPPED",
    "SUSPENDED",
    "Actor",
    "DeadlineWheel",
    "Kernel",
    "Timers",
]
