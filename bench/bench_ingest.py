"""Ingestion benchmark: wire-format batches end to end, with the durable SQLite store on and
with no store, at 20k and 100k assets, with the main process's time per batch by stage; the
cost of opening a store; then RSS under sustained load with the store on. Prints tables.

    python bench/bench_ingest.py               # 1,000 batches a run, 5 minutes sustained
    python bench/bench_ingest.py --quick       # 300 batches a run, 30 s sustained
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import BATCH, KINDS, START, fleet_dict, rss_bytes

from twin import Fleet, FleetModel, Sample, Store, VirtualClock
from twin.wire import pack_batch

WARMUP = 100        # batches before timing: every asset of a 100k fleet has reported once


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


class Stages:
    """Wall time spent in some of the fleet's methods (instance attributes wrap them)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, owner: Any, name: str, label: str) -> None:
        inner: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] = (self.seconds.get(label, 0.0) +
                                       time.perf_counter() - started)

        setattr(owner, name, timed)


def throughput(assets: int, batches: int, store: str | None) -> dict[str, Any]:
    model = FleetModel.from_dict(fleet_dict(assets))
    clock = VirtualClock(START)
    devices = Devices(model)
    step = 10.0 / max(1, assets // BATCH)
    stages = Stages()
    with Fleet(model, clock=clock, store=store, snapshot_every_batches=10**9,
               snapshot_every_s=1e12) as fleet:
        for _ in range(WARMUP):                               # first reports: transitions
            fleet.advance(step)
            fleet.ingest(devices.batch(clock.now()))
        fleet.flush()
        before = fleet.metrics()
        persist = fleet._core.persist         # the stages of one batch, timed from outside
        if persist is not None:
            stages.wrap(persist.store.writer, "wait_for_room", "wait for room")
            stages.wrap(persist.store, "append", "log append (commit, fsync)")
            stages.wrap(persist, "derived", "send to the writer")
        stages.wrap(fleet._ingest, "_decode", "decode")
        stages.wrap(fleet._ingest, "run_batch", "shards (classify, apply)")
        stages.wrap(fleet, "advance", "advance (timers)")
        busy = 0.0
        for _ in range(batches):
            payload = devices.batch(clock.now() + step)       # the devices' work: not timed
            t = time.perf_counter()
            fleet.advance(step)
            fleet.ingest(payload)
            busy += time.perf_counter() - t
        t = time.perf_counter()
        fleet.flush()                                         # every derived row written
        flush_s = time.perf_counter() - t
        metrics = fleet.metrics()
    samples = batches * BATCH
    per_batch = {label: seconds / batches * 1e6 for label, seconds in stages.seconds.items()}
    per_batch["other (ingest's own work)"] = busy / batches * 1e6 - sum(per_batch.values())
    written = metrics.get("store_rows_written", 0) - before.get("store_rows_written", 0)
    write_s = metrics.get("store_write_seconds", 0.0) - before.get("store_write_seconds", 0.0)
    return {"assets": assets, "store": "none" if store is None else store.split(":")[0],
            "samples": samples, "acked_per_s": samples / busy,
            "end_to_end_per_s": samples / (busy + flush_s),
            "accepted": metrics["samples_accepted"] - before["samples_accepted"],
            "rows": written, "writer_us_per_batch": write_s / batches * 1e6,
            "stages_us_per_batch": per_batch}


def startup(url: str, stores: int = 20) -> tuple[float, float, float]:
    """Mean seconds to open a store, to its writer's first answer, and to close it."""
    opened = answered = closed = 0.0
    for _ in range(stores):
        t0 = time.perf_counter()
        store = Store(url)
        t1 = time.perf_counter()
        store.writer.put_rows(0, 0.0, [], b"", [])            # a first round trip
        store.writer.flush()
        t2 = time.perf_counter()
        store.close()
        t3 = time.perf_counter()
        opened += t1 - t0
        answered += t2 - t1
        closed += t3 - t2
    return opened / stores, answered / stores, closed / stores


def process_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def sustained(assets: int, seconds: float, store: str
              ) -> list[tuple[float, float, float, int]]:
    """Ingest as fast as possible for ``seconds`` (packing batches included); every tenth of
    the time: elapsed s, RSS of the fleet's process and of the writer process, samples."""
    model = FleetModel.from_dict(fleet_dict(assets))
    clock = VirtualClock(START)
    devices = Devices(model)
    step = 10.0 / max(1, assets // BATCH)
    readings: list[tuple[float, float, float, int]] = []
    with Fleet(model, clock=clock, store=store, snapshot_every_s=60.0) as fleet:
        assert fleet.store is not None
        writer = fleet.store.writer
        started = time.perf_counter()
        next_reading = started
        samples = 0
        while (now := time.perf_counter()) - started < seconds:
            if now >= next_reading:
                readings.append((now - started, rss_bytes() / 2**20,
                                 process_rss_mb(writer.pid), samples))
                next_reading += seconds / 10
            payload = devices.batch(clock.now() + step)
            fleet.advance(step)
            fleet.ingest(payload)
            samples += BATCH
        fleet.flush()
        readings.append((time.perf_counter() - started, rss_bytes() / 2**20,
                         process_rss_mb(writer.pid), samples))
    return readings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--assets", type=int, nargs="+", help="fleet sizes (20k and 100k)")
    parser.add_argument("--batches", type=int)
    parser.add_argument("--sustain", type=float, help="seconds of sustained load")
    args = parser.parse_args()
    sizes = args.assets or [20_000, 100_000]
    batches = args.batches or (300 if args.quick else 1000)
    seconds = args.sustain if args.sustain is not None else (30.0 if args.quick else 300.0)
    with tempfile.TemporaryDirectory(prefix="twin-bench-") as tmp:
        rows = []
        for assets in sizes:
            rows.append(throughput(assets, batches, None))
            rows.append(throughput(assets, batches, f"sqlite:///{tmp}/throughput-{assets}.db"))
        print(f"\ningestion, wire-format batches of {BATCH:,}, {batches:,} batches timed, "
              f"after {WARMUP} to warm up")
        head = ("assets", "store", "samples", "acked/s", "end-to-end/s", "rows written")
        print(" | ".join(f"{h:>14}" for h in head))
        for r in rows:
            cells = (f"{r['assets']:,}", r["store"], f"{r['samples']:,}",
                     f"{r['acked_per_s']:,.0f}", f"{r['end_to_end_per_s']:,.0f}",
                     f"{r['rows']:,}")
            print(" | ".join(f"{c:>14}" for c in cells))
        print("acked/s: ingest calls returned (each batch durable in the log first); "
              "end-to-end/s: until every derived row is written too")
        print("\nthe fleet process's time per batch, µs, by stage")
        labels = list(dict.fromkeys(label for r in rows for label in r["stages_us_per_batch"]))
        print(" | ".join(f"{h:>26}" if i == 0 else f"{h:>14}" for i, h in enumerate(
            ["stage", *(f"{r['assets'] // 1000}k {r['store']}" for r in rows)])))
        for label in labels:
            stage = [f"{r['stages_us_per_batch'].get(label, 0.0):,.0f}" for r in rows]
            print(" | ".join([f"{label:>26}", *(f"{c:>14}" for c in stage)]))
        sql = [f"{r['writer_us_per_batch']:,.0f}" if r["store"] != "none" else "-" for r in rows]
        print(" | ".join([f"{'writer process: SQL':>26}", *(f"{c:>14}" for c in sql)]))
        opened, answered, closed = startup(f"sqlite:///{tmp}/startup.db")
        print(f"\nopening an SQLite store: {opened * 1000:.1f} ms, its writer process's first "
              f"answer {answered * 1000:.1f} ms later, closing {closed * 1000:.1f} ms")
        readings = sustained(max(sizes), seconds, f"sqlite:///{tmp}/sustained.db")
        size = os.path.getsize(f"{tmp}/sustained.db")
    print(f"\nRSS under sustained load, SQLite store on, {max(sizes):,} assets, {seconds:g} s "
          f"(batches packed in the loop)")
    print(" | ".join(f"{h:>14}" for h in ("elapsed s", "fleet RSS MB", "writer RSS MB",
                                           "samples")))
    for elapsed, rss, writer_rss, samples in readings:
        print(" | ".join(f"{c:>14}" for c in (f"{elapsed:.0f}", f"{rss:.1f}", f"{writer_rss:.1f}",
                                              f"{samples:,}")))
    first, last = readings[1] if len(readings) > 2 else readings[0], readings[-1]
    print(f"RSS from the first reading under load to the last: fleet {first[1]:.1f} → "
          f"{last[1]:.1f} MB, writer {first[2]:.1f} → {last[2]:.1f} MB; "
          f"{last[3] / max(last[0], 1e-9):,.0f} samples/s sustained; database file "
          f"{size / 2**20:,.0f} MB")


if __name__ == "__main__":
    main()
