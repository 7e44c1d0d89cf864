"""Scale-out benchmark: shard hosts in processes of their own (Thespian multiprocTCPBase).

For 1, 2 and 4 shard processes (and the embedded base for reference): samples/s through
``fleet.ingest`` (wire batches of 1,000 samples) and the latency from a batch's arrival to
the owner roll-up that reflects it. Then the recovery: a shard process is killed (SIGKILL) at
100k assets, and the time until every roll-up is right again is measured.

Each configuration runs in its own subprocess. Prints a table.
    python bench/bench_multiproc.py            # 100k assets
    python bench/bench_multiproc.py --quick    # 20k assets, fewer batches
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import BATCH, KINDS, START, fleet_dict

EMBEDDED = "simpleSystemBase"
# Timers fire every TICK_EVERY batches (a real-clock fleet ticks every 0.5 s, about 20-50
# batches at these rates); between ticks the clock only moves, so device times stay current.
TICK_EVERY = 20
PROCS = "multiprocTCPBase"


def make_batches(ids: list[str], count: int, step: float, seed: int = 7) -> list[bytes]:
    """Wire batches, every asset in turn, values within bounds, made before timing."""
    from twin import Sample
    from twin.wire import pack_batch

    rng = random.Random(seed)
    out = []
    for b in range(count):
        now = START + (b + 1) * step
        batch = []
        for j in range(BATCH):
            i = (b * BATCH + j) % len(ids)
            lo, hi = KINDS[i % 3][2]
            batch.append(Sample(ids[i], now, {"power_kw": rng.uniform(lo, hi)}))
        out.append(pack_batch(batch, "bench", now))
    return out


def throughput(system: str, shards: int, assets: int, batches: int) -> dict[str, Any]:
    from twin import Fleet, FleetModel, VirtualClock

    model = FleetModel.from_dict(fleet_dict(assets))
    clock = VirtualClock(START)
    t0 = time.perf_counter()
    fleet = Fleet(model, clock=clock, system=system, shards=shards)
    build_s = time.perf_counter() - t0
    step = 10.0 / max(1, assets // BATCH)
    payloads = make_batches(list(model.assets), batches, step)
    owner = sorted(fleet.rollups("owner"))[0]
    seen: list[float] = []
    fleet.subscribe(owner, lambda r: seen.append(time.perf_counter()))
    latencies = []
    busy = 0.0
    for n, payload in enumerate(payloads):
        seen.clear()
        t = time.perf_counter()
        arrival = START + (n + 1) * step        # the batch's device time
        if n % TICK_EVERY == 0:
            fleet.advance(arrival - clock.now())  # due timers fire, as the ticker would
        else:
            clock.jump_to(arrival)
        t_ingest = time.perf_counter()
        fleet.ingest(payload)
        done = time.perf_counter()
        busy += done - t
        latencies.append(((seen[-1] if seen else done) - t_ingest) * 1000.0)
    fleet.close()
    latencies.sort()
    return {"system": system, "shards": shards, "assets": assets, "build_s": build_s,
            "samples_per_s": batches * BATCH / busy,
            "p50_ms": statistics.median(latencies),
            "p99_ms": latencies[int(0.99 * len(latencies)) - 1]}


def recovery(assets: int, batches: int) -> dict[str, Any]:
    """Kill one of two shard processes after a snapshot and more batches; time until the
    fleet has restarted it, refilled it and every owner roll-up is whole again."""
    from twin import Fleet, FleetModel, VirtualClock

    model = FleetModel.from_dict(fleet_dict(assets))
    clock = VirtualClock(START)
    step = 10.0 / max(1, assets // BATCH)
    payloads = make_batches(list(model.assets), batches, step)
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(model, clock=clock, system=PROCS, shards=2,
                      store=f"sqlite:///{tmp}/bench.db", snapshot_every_batches=10**9)
        half = len(payloads) // 2
        for payload in payloads[:half]:
            fleet.advance(step)
            fleet.ingest(payload)
        fleet.snapshot()
        for payload in payloads[half:]:
            fleet.advance(step)
            fleet.ingest(payload)
        expected = len(model.assets)
        assert sum(r.reporting for r in fleet.rollups("owner").values()) == expected
        pid = fleet.shards()[0]["pid"]
        killed = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        noticed = None
        while True:
            fleet.tick()                      # what the real clock's ticker does every 0.5 s
            owners = fleet.rollups("owner").values()
            if noticed is None and fleet.metrics()["shards_down"]:
                noticed = time.perf_counter() - killed
            if (not fleet.metrics()["shards_down"] and
                    sum(r.reporting for r in owners) == expected):
                break
            time.sleep(0.005)
        whole_s = time.perf_counter() - killed
        refill_s = fleet._recovery.last_recovery_s
        replayed = fleet.metrics()["replayed_batches"]
        fleet.close()
    return {"assets": assets, "noticed_s": noticed, "whole_s": whole_s, "refill_s": refill_s,
            "replayed_batches": replayed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20k assets, fewer batches")
    parser.add_argument("--assets", type=int, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    assets = args.assets or (20_000 if args.quick else 100_000)
    batches = 150 if args.quick else 400
    if args.one:
        kind, system, shards = args.one.split(":")
        result = (recovery(assets, batches) if kind == "recovery"
                  else throughput(system, int(shards), assets, batches))
        print(json.dumps(result))
        return

    def one(spec: str) -> dict[str, Any]:
        out = subprocess.run([sys.executable, __file__, "--one", spec, "--assets", str(assets)]
                             + (["--quick"] if args.quick else []),
                             check=True, capture_output=True, text=True)
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))

    rows = [one(f"throughput:{EMBEDDED}:1")] + [one(f"throughput:{PROCS}:{n}") for n in (1, 2, 4)]
    print(f"scale-out: {assets:,} assets, wire batches of {BATCH:,} samples, "
          f"{os.cpu_count()} cores")
    head = ("hosting", "shard procs", "build s", "samples/s", "p50 ms→owner", "p99 ms→owner")
    print(" | ".join(f"{h:>14}" for h in head))
    for r in rows:
        cells = ("embedded" if r["system"] == EMBEDDED else "processes",
                 "-" if r["system"] == EMBEDDED else str(r["shards"]), f"{r['build_s']:.1f}",
                 f"{r['samples_per_s']:,.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}")
        print(" | ".join(f"{c:>14}" for c in cells))
    rec = one("recovery:-:2")
    print()
    print(f"recovery: kill -9 one of 2 shard processes at {rec['assets']:,} assets (SQLite "
          f"store, snapshot then {batches - batches // 2} batches in the log)")
    print(f"  noticed after {rec['noticed_s']:.3f} s; restarted host refilled in "
          f"{rec['refill_s']:.3f} s ({rec['replayed_batches']} logged batches replayed); "
          f"every roll-up whole again after {rec['whole_s']:.3f} s")
    print("  (a real-clock fleet ticks every 0.5 s, which adds up to that much to 'noticed')")
    print("targets: 2 processes beat 1 on throughput; recovery <= 2 s plus one report interval")


if __name__ == "__main__":
    main()
