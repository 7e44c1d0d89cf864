"""Control benchmark: one dispatch tick (read the members, judge convergence, allocate, issue
or renew every lease, measure what was achieved) at 10k and 100k batteries, and command
throughput through a transport, both as dispatch batches and one ``fleet.command`` at a time.

Embedded fleet, virtual clock; the transport acknowledges everything it is handed (in bulk
where it can), so the figures are the runtime's own cost. Prints a table.
    python bench/bench_control.py            # 10k and 100k batteries
    python bench/bench_control.py --quick    # 10k and 100k, fewer ticks
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twin import Fleet, FleetModel, Sample, VirtualClock
from twin.control.transport import CommandTransport, Delivery, DeliveryBatch
from twin.wire import pack_batch

START = 1767225600.0
PER_SITE = 100


class AckingTransport(CommandTransport):
    """Acknowledges every delivery at once: the runtime's cost, not a network's."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, deliveries: Sequence[Delivery]) -> None:
        assert self.acks is not None
        self.sent += len(deliveries)
        if isinstance(deliveries, DeliveryBatch):
            self.acks.delivered_batch(deliveries)
        else:
            for delivery in deliveries:
                self.acks.delivered(delivery.command_id)


def battery_fleet(batteries: int) -> dict[str, Any]:
    sites = [{"id": f"s{s}", "assets": [
        {"id": f"b{i}", "kind": "battery", "rated_kw": 5.0, "capacity_kwh": 13.5}
        for i in range(s * PER_SITE, (s + 1) * PER_SITE)]} for s in range(batteries // PER_SITE)]
    regions = [{"id": f"r{r}", "sites": sites[r * 20:(r + 1) * 20]}
               for r in range(-(-len(sites) // 20))]
    return {"defaults": {"report_interval_s": 10, "offline_after_s": 30},
            "owners": [{"id": "o0", "regions": regions}]}


def report_all(fleet: Fleet, clock: VirtualClock, batteries: int, power: float) -> None:
    now = clock.now()
    for first in range(0, batteries, 5000):
        rows = [Sample(f"b{i}", now, {"power_kw": power, "soc_pct": 50.0})
                for i in range(first, min(batteries, first + 5000))]
        fleet.ingest(pack_batch(rows))


def run(batteries: int, ticks: int) -> dict[str, Any]:
    gc.collect()
    model = FleetModel.from_dict(battery_fleet(batteries))
    clock = VirtualClock(START)
    transport = AckingTransport()
    with Fleet(model, clock=clock, transport=transport) as fleet:
        report_all(fleet, clock, batteries, 0.0)
        fleet.advance(1.0)
        t0 = time.perf_counter()
        fleet.advance(1.0)                   # a tick with nothing to control: the baseline
        idle_s = time.perf_counter() - t0
        target = 0.6 * 5.0 * batteries
        dispatch = fleet.dispatch("o0", target, duration_s=3600.0)
        times = []
        for k in range(ticks):
            # the members follow (every other tick, so convergence work is real)
            if k % 2:
                report_all(fleet, clock, batteries, 3.0)
            sent_before = transport.sent
            t0 = time.perf_counter()
            fleet.advance(1.0)
            times.append(time.perf_counter() - t0)
            assert transport.sent - sent_before == batteries, str(dispatch.report())
        report = dispatch.report()
        assert report is not None and report.ok, report
        dispatch.cancel()
        # one command at a time through the public API
        singles = min(batteries, 5000)
        t0 = time.perf_counter()
        for i in range(singles):
            fleet.command(f"b{i}", {"setpoint_kw": 1.0}, ttl_s=60.0)
        single_s = time.perf_counter() - t0
    tick = statistics.median(times)
    return {"batteries": batteries, "tick_ms": tick * 1000, "tick_max_ms": max(times) * 1000,
            "idle_ms": idle_s * 1000, "dispatch_cmds_per_s": batteries / tick,
            "single_cmds_per_s": singles / single_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer ticks")
    args = parser.parse_args()
    ticks = 6 if args.quick else 20
    rows = [run(n, ticks) for n in (10_000, 100_000)]
    print()
    print("control: one dispatch tick (read, judge, allocate, issue leases, measure), embedded")
    print(f"{'batteries':>10} {'tick p50 ms':>12} {'tick max ms':>12} {'idle tick ms':>13} "
          f"{'dispatch cmds/s':>16} {'fleet.command/s':>16}")
    for r in rows:
        print(f"{r['batteries']:>10,} {r['tick_ms']:>12.1f} {r['tick_max_ms']:>12.1f} "
              f"{r['idle_ms']:>13.1f} {r['dispatch_cmds_per_s']:>16,.0f} "
              f"{r['single_cmds_per_s']:>16,.0f}")
    print("targets: tick <= 100 ms at 100k; >= 100k commands/s through a transport")


if __name__ == "__main__":
    main()
