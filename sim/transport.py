"""The simulator's command transport: the runtime's commands reach simulated batteries in
virtual time, and their acknowledgements come back through ``self.acks``.

A delivery arrives at the device at the fleet clock's time of sending; the device takes the
setpoint (:meth:`sim.physics.BatteryPhysics.receive`) and acknowledges at once, unless a
control fault says otherwise (:class:`ControlFaults`, from the faults plan):

- ``command_loss``: the delivery is lost on the way; nothing comes back (the runtime sends it
  again after its ack timeout, with the same command id).
- ``command_reject``: the device refuses, with the plan's reason; it never takes the setpoint.
- ``command_ignore``: the device acknowledges and reports the setpoint, but its power does not
  follow while its window lasts.
- ``ack_delay``: the acknowledgement comes back after a delay; it reaches the runtime before
  the first control tick at or after it is due (:meth:`SimTransport.release_acks`).

A device cut off from the runtime (an offline episode, never up) gets nothing. The transport
counts what it did, as the truth the report compares with the runtime's command states.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from sim.devices import Device
from sim.faults import FaultPlan
from sim.physics import BatteryPhysics
from twin.control.transport import CommandTransport, Delivery, DeliveryBatch
from twin.core.clock import Clock

TRANSPORT_COUNTS = ("deliveries", "resends", "acknowledged", "acks_delayed", "lost_in_transit",
                    "unreachable", "rejected", "to_ignoring")


class ControlFaults:
    """Which batteries reject, ignore, or acknowledge late: fractions of the batteries the
    dispatch schedule steers (of all batteries without one), as disjoint sets, so that each
    device's behaviour has one cause (a device that rejects never acknowledges; one that
    ignores and acknowledges late would be judged on its late acknowledgements instead of on
    its power). A battery no dispatch steers gets no command: its faults would never show."""

    def __init__(self, plan: FaultPlan, rng: random.Random, batteries: Sequence[Device],
                 start: float, steered: frozenset[str] = frozenset()) -> None:
        order = [dev.id for dev in batteries if not steered or dev.id in steered]
        rng.shuffle(order)
        sizes = [round(len(order) * plan.get(name, "fraction"))
                 for name in ("command_reject", "command_ignore", "ack_delay")]
        cut = [0, sizes[0], sizes[0] + sizes[1], sum(sizes)]
        reason = plan.get("command_reject", "reason")
        self.rejecting: dict[str, str] = {a: reason for a in sorted(order[cut[0]:cut[1]])}
        self.ignoring = frozenset(order[cut[1]:cut[2]])
        self.late = frozenset(order[cut[2]:cut[3]])
        self.loss = float(plan.get("command_loss", "probability"))
        lo, hi = plan.get("ack_delay", "delay_s")
        self.delay_s = (float(lo), float(hi))
        window = plan.get("command_ignore", "window_s")
        # the ignore window, in unix time (the whole run: from before it starts, never ending)
        self.window = ((-math.inf, math.inf) if window is None else
                       (start + window[0], start + window[1]))
        for dev in batteries:
            if dev.id in self.ignoring:   # its physics knows when it stops following
                assert isinstance(dev.physics, BatteryPhysics)
                dev.physics.ignore_from, dev.physics.ignore_until = self.window

    def ignores(self, asset_id: str, at: float) -> bool:
        return asset_id in self.ignoring and self.window[0] <= at < self.window[1]

    def to_dict(self, start: float) -> dict[str, Any]:
        lo, hi = self.window
        return {"rejecting": sorted(self.rejecting), "ignoring": sorted(self.ignoring),
                "acks_late": sorted(self.late),
                "ignore_window_s": None if math.isinf(lo) else [lo - start, hi - start]}


class SimTransport(CommandTransport):
    """See the module docstring."""

    def __init__(self, devices: Mapping[str, Device], faults: ControlFaults,
                 rng: random.Random, clock: Clock) -> None:
        self.devices = devices
        self.faults = faults
        self.rng = rng
        self.clock = clock
        self.counts = dict.fromkeys(TRANSPORT_COUNTS, 0)
        self.commanded: dict[str, float] = {}    # asset → setpoint of its latest delivery
        self._acks: list[tuple[float, int, str]] = []    # (due, order, command id): a heap
        self._order = 0

    def send(self, deliveries: Sequence[Delivery]) -> None:
        now = self.clock.now()
        if isinstance(deliveries, DeliveryBatch):       # a dispatch tick: read its columns
            values = deliveries.values.tolist()
            for command_id, asset_id, value in zip(deliveries.command_ids(),
                                                   deliveries.asset_ids, values, strict=True):
                self._deliver(now, command_id, asset_id, value, deliveries.expires_at, 1)
            return
        for d in deliveries:
            value = d.desired.get("setpoint_kw")
            self._deliver(now, d.command_id, d.asset_id,
                          float(value) if isinstance(value, int | float) else None,
                          d.expires_at, d.attempt)

    def _deliver(self, now: float, command_id: str, asset_id: str, value: float | None,
                 expires_at: float | None, attempt: int) -> None:
        counts, faults = self.counts, self.faults
        counts["deliveries"] += 1
        if attempt > 1:
            counts["resends"] += 1
        if value is not None:
            self.commanded[asset_id] = value
        dev = self.devices.get(asset_id)
        if dev is None or not dev.connected:
            counts["unreachable"] += 1
            return
        if faults.loss and self.rng.random() < faults.loss:
            counts["lost_in_transit"] += 1
            return
        acks = self.acks
        assert acks is not None, "the fleet attaches its transport before sending"
        physics = dev.physics
        reason = faults.rejecting.get(asset_id) if faults.rejecting else None
        if reason is None and (value is None or type(physics) is not BatteryPhysics):
            reason = f"a simulated {dev.kind} takes no such command"
        if reason is not None:
            counts["rejected"] += 1
            acks.rejected(command_id, reason)
            return
        assert type(physics) is BatteryPhysics and value is not None
        physics.receive(now, value, expires_at)
        if asset_id in faults.ignoring and faults.ignores(asset_id, now):
            counts["to_ignoring"] += 1
        if asset_id in faults.late:
            counts["acks_delayed"] += 1
            self._order += 1
            heapq.heappush(self._acks, (now + self.rng.uniform(*faults.delay_s), self._order,
                                        command_id))
            return
        counts["acknowledged"] += 1
        acks.delivered(command_id)

    @property
    def acks_pending(self) -> bool:
        return bool(self._acks)

    def release_acks(self, until: float) -> None:
        """Hand the runtime the delayed acknowledgements due by ``until`` (the next control
        tick), oldest first."""
        acks = self.acks
        while self._acks and self._acks[0][0] <= until:
            command_id = heapq.heappop(self._acks)[2]
            self.counts["acknowledged"] += 1
            if acks is not None:
                acks.delivered(command_id)


__all__ = ["TRANSPORT_COUNTS", "ControlFaults", "SimTransport"]
