"""Waiting for other processes in tests (a helper module, not a test).

Virtual time drives the fleet everywhere it can; what is left here is the other side of a real
process boundary (a shard host dying, a database coming back, a writer process restarting),
whose clock no test owns. So the tests poll the real condition, briefly, until a deadline,
and never stand a fixed sleep in for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

_POLL_S = 0.005


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = ""
               ) -> float:
    """Return once ``condition()`` holds (the seconds it took); fail after ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s:g} s: {what or condition}")
        time.sleep(_POLL_S)
    return time.monotonic() - started
