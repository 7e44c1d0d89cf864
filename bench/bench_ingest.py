"""Ingestion benchmark: wire-format batches end to end, with the durable SQLite store on and
with no store; then RSS under sustained load with the store on. Prints tables.

    python bench/bench_ingest.py               # 100k assets, 5 minutes of sustained load
    python bench/bench_ingest.py --quick       # 20k assets, 30 s
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import BATCH, KINDS, START, fleet_dict, rss_bytes

from twin import Fleet, FleetModel, Sample, VirtualClock
from twin.wire import pack_batch


class Devices:
    """Every asset in turn, values within bounds, packed as gateways would send them."""

    def __init__(self, model: FleetModel, seed: int = 7) -> None:
        self.ids = list(model.assets)
        self.bounds = [KINDS[i % 3][2] for i in range(len(self.ids))]
        self.rng = random.Random(seed)
        self.next = 0

    def batch(self, now: float) -> bytes:
        samples = []
        for _ in range(BATCH):
            i = self.next % len(self.ids)
            self.next += 1
            lo, hi = self.bounds[i]
            samples.append(Sample(self.ids[i], now, {"power_kw": self.rng.uniform(lo, hi)},
                                  self.next))
        return pack_batch(samples, "bench-gateway", now)


def throughput(assets: int, batches: int, store: str | None) -> dict[str, Any]:
    model = FleetModel.from_dict(fleet_dict(assets))
    clock = VirtualClock(START)
    devices = Devices(model)
    step = 10.0 / max(1, assets // BATCH)
    with Fleet(model, clock=clock, store=store, snapshot_every_batches=10**9,
               snapshot_every_s=1e12) as fleet:
        busy = 0.0
        started = time.perf_counter()
        for _ in range(batches):
            payload = devices.batch(clock.now() + step)       # the devices' work: not timed
            t = time.perf_counter()
            fleet.advance(step)
            fleet.ingest(payload)
            busy += time.perf_counter() - t
        t = time.perf_counter()
        fleet.flush()                                         # every derived row written
        flush_s = time.perf_counter() - t
        wall = time.perf_counter() - started
        metrics = fleet.metrics()
    samples = batches * BATCH
    return {"store": "none" if store is None else store.split(":")[0], "samples": samples,
            "acked_per_s": samples / busy, "end_to_end_per_s": samples / (busy + flush_s),
            "wall_s": wall, "accepted": metrics["samples_accepted"],
            "rows": metrics.get("store_rows_written", 0)}


def sustained(assets: int, seconds: float, store: str) -> list[tuple[float, float, int]]:
    """Ingest as fast as possible for ``seconds``; RSS every tenth of the time."""
    model = FleetModel.from_dict(fleet_dict(assets))
    clock = VirtualClock(START)
    devices = Devices(model)
    step = 10.0 / max(1, assets // BATCH)
    readings: list[tuple[float, float, int]] = []
    with Fleet(model, clock=clock, store=store, snapshot_every_s=60.0) as fleet:
        started = time.perf_counter()
        next_reading = started
        samples = 0
        while (now := time.perf_counter()) - started < seconds:
            if now >= next_reading:
                readings.append((now - started, rss_bytes() / 2**20, samples))
                next_reading += seconds / 10
            payload = devices.batch(clock.now() + step)
            fleet.advance(step)
            fleet.ingest(payload)
            samples += BATCH
        fleet.flush()
        readings.append((time.perf_counter() - started, rss_bytes() / 2**20, samples))
    return readings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--assets", type=int)
    parser.add_argument("--batches", type=int)
    parser.add_argument("--sustain", type=float, help="seconds of sustained load")
    args = parser.parse_args()
    assets = args.assets or (20_000 if args.quick else 100_000)
    batches = args.batches or (200 if args.quick else 1000)
    seconds = args.sustain if args.sustain is not None else (30.0 if args.quick else 300.0)
    with tempfile.TemporaryDirectory(prefix="twin-bench-") as tmp:
        rows = [throughput(assets, batches, None),
                throughput(assets, batches, f"sqlite:///{tmp}/throughput.db")]
        print(f"\ningestion, wire-format batches of {BATCH:,}, {assets:,} assets, one process")
        head = ("store", "samples", "acked/s", "end-to-end/s", "rows written")
        print(" | ".join(f"{h:>14}" for h in head))
        for r in rows:
            cells = (r["store"], f"{r['samples']:,}", f"{r['acked_per_s']:,.0f}",
                     f"{r['end_to_end_per_s']:,.0f}", f"{r['rows']:,}")
            print(" | ".join(f"{c:>14}" for c in cells))
        print("acked/s: ingest calls returned (each batch durable in the log first); "
              "end-to-end/s: until every derived row is written too")
        readings = sustained(assets, seconds, f"sqlite:///{tmp}/sustained.db")
        size = os.path.getsize(f"{tmp}/sustained.db")
    print(f"\nRSS under sustained load, SQLite store on, {seconds:g} s")
    print(" | ".join(f"{h:>14}" for h in ("elapsed s", "RSS MB", "samples")))
    for elapsed, rss, samples in readings:
        print(" | ".join(f"{c:>14}" for c in (f"{elapsed:.0f}", f"{rss:.1f}", f"{samples:,}")))
    first, last = readings[1] if len(readings) > 2 else readings[0], readings[-1]
    print(f"RSS from the first reading under load to the last: {first[1]:.1f} → {last[1]:.1f} "
          f"MB; {last[2] / max(last[0], 1e-9):,.0f} samples/s sustained; database file "
          f"{size / 2**20:,.0f} MB")


if __name__ == "__main__":
    main()
