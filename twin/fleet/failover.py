"""Shard processes that die, and come back (DESIGN decisions 1 and 4).

On the multi-process bases the fleet supervisor (a Thespian actor) restarts a dead shard host;
the facade, which holds the model and the store, learns it from the shard watch (its own
channel to the supervisor, :mod:`twin.hosting.shard_watch`) and:

1. marks the shard *down* at once, from the watch's thread if the fleet lock is free: its
   sites' leaves are replaced by summaries that count every one of its assets ``unknown`` and
   missing, so roll-ups stay honest rather than shrinking;
2. on the next tick, once the supervisor has a new host, refills it (:meth:`Recovery.refill`)
   and lets the shard's real summaries replace the unknowns.

Past the supervisor's restart intensity the shard stays ``failed``: its assets stay unknown
and listed missing, and ``fleet.shards()``, the logs and the metrics say why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from twin.core.states import ShardStatus
from twin.fleet.core import FleetCore
from twin.fleet.recovery import Recovery
from twin.hosting.host_actors import ShardState
from twin.runtime.calls import Collect, Tick

log = structlog.get_logger("twin.fleet")


class Failover:
    """See the module docstring."""

    def __init__(self, core: FleetCore, recovery: Recovery) -> None:
        self.core = core
        self.recovery = recovery

    def shards(self) -> list[dict[str, Any]]:
        """Under the fleet lock: see :meth:`twin.Fleet.shards`."""
        core = self.core
        hosting = core.hosting
        states = hosting.status()
        core.shard_states = states
        out = []
        for state in states:
            i = state.index
            status = state.status
            if (status.dead and not hosting.embedded and
                    state.generation >= hosting.generations[i]):
                core.mark_down(i, state.reason)        # the supervisor says why
            if status == ShardStatus.RESTARTING or (
                    status == ShardStatus.RUNNING and i in core.down):
                status = ShardStatus.RECOVERING
            sites = core.placement.sites_on(i)
            out.append({"index": i, "node": state.node, "status": status,
                        "generation": state.generation,
                        "restarts": state.restarts, "pid": hosting.pids.get(i),
                        "sites": len(sites),
                        "assets": sum(len(core.model.sites[s].assets) for s in sites),
                        "reason": core.down.get(
                            i, state.reason if status != ShardStatus.RUNNING else "")})
        return out

    def wait(self, tick: Callable[[], None], shards: Callable[[], list[dict[str, Any]]],
             timeout_s: float) -> list[dict[str, Any]]:
        """Tick until no shard is down or recovering, or ``timeout_s`` passes (real time:
        shard hosts are processes); see :meth:`twin.Fleet.wait_for_shards`."""
        deadline = time.monotonic() + timeout_s
        settled = (ShardStatus.RUNNING, ShardStatus.FAILED)
        while True:
            tick()
            states = shards()
            if all(s["status"] in settled for s in states) or time.monotonic() >= deadline:
                return states
            time.sleep(0.02)

    def watch(self, now: float) -> None:
        """Act on what the shard watch last heard: mark dead shards down, refill new hosts."""
        core = self.core
        states = core.hosting.latest_status()
        core.shard_states = states
        for state in states:
            i = state.index
            ours = core.hosting.generations[i]
            if state.generation < ours:
                continue                  # heard before the host in use was adopted
            if state.status.dead:
                core.mark_down(i, state.reason)
            elif state.generation != ours or i in core.down:
                core.mark_down(i, state.reason or "shard host restarted")
                # a host still "running" that a call found dead waits for its supervisor
                if state.status == ShardStatus.RESTARTING:
                    self._recover(state, now)

    def on_shard_states(self, states: tuple[ShardState, ...]) -> bool:
        """From the shard watch's thread: count a dead shard's assets unknown at once.

        It never waits: when the fleet's lock is busy it returns False and is called again
        after the next poll; meanwhile whoever holds the lock learns the same from the watch
        (a call to a dead shard gives up on it by itself)."""
        core = self.core
        gens = core.hosting.generations
        dead = [s for s in states if s.index not in core.down and s.generation >= gens[s.index]
                and (s.status.dead or s.generation > gens[s.index])]
        if not dead:
            return True
        if not core.lock.acquire(blocking=False):
            return False
        try:
            if not core.closed:
                for state in dead:
                    if state.generation >= core.hosting.generations[state.index]:
                        core.mark_down(state.index, state.reason or "shard host restarted")
        finally:
            core.lock.release()
        return True

    def _recover(self, state: ShardState, now: float) -> None:
        core = self.core
        started = time.monotonic()
        index = state.index
        core.hosting.adopt(state)
        shard = core.shards[index]
        try:
            shard.configure(core.configs[index])
            core.populate(shard)
            if core.persist is not None:
                self.recovery.refill(shard, now)
            shard.call(Tick(now))
            full = shard.call(Collect(True))
        except Exception as error:    # the host died again, or the store is away: next tick
            log.error("shard_recovery_failed", shard=index, reason=str(error))
            return
        keys, _ = core.unknown_leaves(index)
        with core.view_lock:
            core.tree.forget_leaves(keys)
            core.absorb(full)
            core.counters["shard_recoveries"] += 1
        del core.down[index]
        core.hosting.recovered(index)
        self.recovery.last_recovery_s = time.monotonic() - started
        log.info("shard_recovered", shard=index, generation=state.generation,
                 seconds=round(self.recovery.last_recovery_s, 3))
