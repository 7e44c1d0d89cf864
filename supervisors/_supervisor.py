"""Supervisors: a tree over kernel actors that restarts, quarantines or escalates failures.

A child is anything with the :class:`Supervised` methods: an asset actor, or another
supervisor (whose methods act on its whole subtree). Every failure is logged exactly once, by
the supervisor that handles it, with fixed keys: ``supervisor``, ``reason``, ``offender``,
``action`` (and ``restarts``, ``delay_s``).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from actors import Kernel, Timers
from supervisors._policy import (
    OnExhausted,
    SupervisionPolicy,
    affected_children,
    backoff_delay,
    record_restart,
)

_log = structlog.get_logger("twin.supervision")


def _report(level: str, **fields: object) -> None:
    """Log a failure; a broken log sink must not turn one actor's failure into a failed
    batch, so errors from logging itself are swallowed (as the stdlib's handlers do)."""
    with contextlib.suppress(Exception):
        getattr(_log, level)("actor_failed", **fields)


class Supervised(Protocol):
    @property
    def name(self) -> str: ...
    def suspend_tree(self) -> None: ...
    def restart_tree(self, now: float) -> None: ...
    def quarantine(self, now: float, reason: str) -> None: ...


@dataclass
class SupervisionStats:
    """Counters shared by the supervisors of one shard (exported as metrics)."""

    failures: int = 0
    restarts: int = 0
    quarantines: int = 0
    escalations: int = 0


class Escalated(Exception):
    """A supervisor gave up on a child and hands the failure to its own supervisor."""

    def __init__(self, supervisor: str, offender: str, reason: str) -> None:
        self.supervisor = supervisor
        self.offender = offender
        self.reason = reason
        super().__init__(f"{supervisor} gave up after {offender} failed: {reason}")


class Supervisor:
    """Supervises an ordered list of children with one :class:`SupervisionPolicy`."""

    def __init__(self, name: str, policy: SupervisionPolicy, *, kernel: Kernel,
                 clock: Callable[[], float], rng: random.Random, stats: SupervisionStats,
                 parent: Supervisor | None = None) -> None:
        self._name = name
        self.policy = policy
        self.kernel = kernel
        self.clock = clock
        self.rng = rng
        self.stats = stats
        self.parent = parent
        self.children: list[Any] = []
        self._history: dict[int, tuple[float, ...]] = {}    # id(child) → recent failure times
        self._pending: dict[int, int] = {}    # id(child) → timer of its pending restart

    @property
    def name(self) -> str:
        return self._name

    @property
    def timers(self) -> Timers:
        return self.kernel.timers

    # -- tree membership ------------------------------------------------------------------

    def adopt(self, child: Any) -> None:
        child.supervisor = self
        self.children.append(child)

    def release(self, child: Any) -> None:
        """Stop supervising ``child`` (it moves to another site, or is decommissioned).

        A child waiting out a restart backoff is restarted now: it leaves with a clean slate,
        and nobody would resume it otherwise. The shared timer stays for its siblings.
        """
        self.children.remove(child)
        self._history.pop(id(child), None)
        if self._pending.pop(id(child), None) is not None:
            child.restart_tree(self.clock())

    # -- failure handling -----------------------------------------------------------------

    def child_failed(self, child: Any, message: Any, error: BaseException) -> None:
        now = self.clock()
        self.stats.failures += 1
        reason = error.reason if isinstance(error, Escalated) else _describe(error)
        history, exhausted = record_restart(self._history.get(id(child), ()), now,
                                            self.policy.max_restarts, self.policy.within_s)
        if exhausted:
            self._history.pop(id(child), None)
            self._give_up(child, reason, len(history) - 1, now)
            return
        self._history[id(child)] = history
        delay = backoff_delay(len(history), self.policy, self.rng)
        affected = affected_children(self.children, child, self.policy.strategy)
        self.stats.restarts += len(affected)
        _report("warning", supervisor=self._name, reason=reason, offender=child.name,
                    action="restart", restarts=len(history), delay_s=round(delay, 3),
                    strategy=self.policy.strategy.value, affected=len(affected),
                    message=type(message).__name__)
        for sibling in affected:
            sibling.suspend_tree()
        if delay == 0.0:
            self._restart(affected, now)
        else:
            handle = self.timers.call_at(now + delay, lambda t: self._restart(affected, t))
            for sibling in affected:
                self._pending[id(sibling)] = handle

    def _restart(self, children: list[Any], now: float) -> None:
        for child in children:
            self._pending.pop(id(child), None)
            if child in self.children:        # it may have been removed while waiting
                child.restart_tree(now)

    def _give_up(self, child: Any, reason: str, restarts: int, now: float) -> None:
        if self.policy.on_exhausted is OnExhausted.QUARANTINE or self.parent is None:
            self.stats.quarantines += 1
            _report("error", supervisor=self._name, reason=reason, offender=child.name,
                      action="quarantine", restarts=restarts,
                      intensity=f"{self.policy.max_restarts} in {self.policy.within_s:g}s")
            child.quarantine(now, f"crash loop: {reason}")
            return
        self.stats.escalations += 1
        _report("error", supervisor=self._name, reason=reason, offender=child.name,
                  action="escalate", restarts=restarts, to=self.parent.name,
                  intensity=f"{self.policy.max_restarts} in {self.policy.within_s:g}s")
        self.suspend_tree()
        self.parent.child_failed(self, None, Escalated(self._name, child.name, reason))

    # -- the Supervised protocol, for supervisors of supervisors --------------------------

    def suspend_tree(self) -> None:
        for child in self.children:
            child.suspend_tree()

    def restart_tree(self, now: float) -> None:
        self._history.clear()
        for handle in set(self._pending.values()):
            self.timers.cancel(handle)
        self._pending.clear()
        for child in self.children:
            child.restart_tree(now)

    def quarantine(self, now: float, reason: str) -> None:
        for child in list(self.children):
            child.quarantine(now, reason)

    def __repr__(self) -> str:
        return (f"<Supervisor {self._name} {self.policy.strategy.value} "
                f"children={len(self.children)}>")


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
