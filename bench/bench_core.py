"""Core runtime benchmark: build time, memory per asset, ingest throughput, latency to the
owner roll-up, and the cost of offline detection, for fleets of 100k and 1M assets.

Each fleet size runs in its own subprocess so that its RSS is its own. Prints a table.
    python bench/bench_core.py            # 100k and 1M assets
    python bench/bench_core.py --quick    # 10k and 100k (a minute)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

KINDS = (("turbine", {"rated_kw": 3000.0}, (0.0, 3000.0)),
         ("battery", {"rated_kw": 5.0, "capacity_kwh": 13.5}, (-5.0, 5.0)),
         ("charger", {"rated_kw": 22.0}, (-22.0, 0.0)))
BATCH = 1000
START = 1767225600.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fleet_dict(assets: int, per_site: int = 50, sites_per_region: int = 20,
               regions_per_owner: int = 10) -> dict[str, Any]:
    sites = []
    for s in range(assets // per_site):
        sites.append({"id": f"s{s}", "assets": [
            {"id": f"a{i}", "kind": KINDS[i % 3][0], **KINDS[i % 3][1]}
            for i in range(s * per_site, (s + 1) * per_site)]})
    regions = [{"id": f"r{r}", "sites": sites[r * sites_per_region:(r + 1) * sites_per_region]}
               for r in range(-(-len(sites) // sites_per_region))]
    owners = [{"id": f"o{o}", "regions": regions[o * regions_per_owner:(o + 1) * regions_per_owner]}
              for o in range(-(-len(regions) // regions_per_owner))]
    return {"defaults": {"report_interval_s": 10, "offline_after_s": 30}, "owners": owners}


def run_one(assets: int, batches: int) -> dict[str, Any]:
    from twin import Fleet, FleetModel, Sample, VirtualClock

    gc.collect()
    base = rss_bytes()
    raw = fleet_dict(assets)
    t0 = time.perf_counter()
    model = FleetModel.from_dict(raw)
    del raw
    clock = VirtualClock(START)
    fleet = Fleet(model, clock=clock)
    build_s = time.perf_counter() - t0
    gc.collect()
    rss_fleet = rss_bytes() - base

    rng = random.Random(7)
    ids = list(model.assets)
    bounds = [KINDS[i % 3][2] for i in range(assets)]

    def make_batch(b: int, now: float) -> list[Any]:
        """Every asset in turn, values within its bounds, made just before ingest (as a
        wire decoder would hand them over), outside the timed region."""
        batch = []
        for j in range(BATCH):
            i = (b * BATCH + j) % assets
            lo, hi = bounds[i]
            batch.append(Sample(ids[i], now, {"power_kw": rng.uniform(lo, hi)}))
        return batch

    owner = sorted(fleet.rollups("owner"))[0]
    seen: list[float] = []
    fleet.subscribe(owner, lambda r: seen.append(time.perf_counter()))

    step = 10.0 / max(1, assets // BATCH)   # each asset reports every 10 s of fleet time
    latencies = []
    busy = 0.0
    for b in range(batches):
        batch = make_batch(b, clock.now() + step)
        seen.clear()
        t = time.perf_counter()
        fleet.advance(step)               # time passes: due liveness deadlines are checked
        t_ingest = time.perf_counter()
        fleet.ingest(batch)
        done = time.perf_counter()
        busy += done - t
        t = t_ingest
        latencies.append(((seen[-1] if seen else done) - t) * 1000.0)
    samples = batches * BATCH
    latencies.sort()
    arms = fleet.metrics()["liveness_timer_arms"]

    # offline detection: every asset's deadline passes in one advance
    silent_from = clock.now()
    t = time.perf_counter()
    fleet.advance(31.0)
    expire_s = time.perf_counter() - t
    offline = sum(r.offline for r in fleet.rollups("owner").values())
    del silent_from
    gc.collect()
    rss_after = rss_bytes() - base
    fleet.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10   # KiB on Linux
    return {"assets": assets, "build_s": build_s, "rss_mb": rss_fleet / 2**20,
            "process_rss_mb": (base + rss_after) / 2**20, "peak_rss_mb": peak,
            "bytes_per_asset": rss_fleet / assets, "rss_after_mb": rss_after / 2**20,
            "samples": samples, "samples_per_s": samples / busy,
            "us_per_sample": busy / samples * 1e6, "arms_per_sample": arms / samples,
            "p50_ms": statistics.median(latencies),
            "p99_ms": latencies[int(0.99 * len(latencies)) - 1],
            "expire_s": expire_s, "offline": offline,
            "expire_us_per_asset": expire_s / max(1, offline) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k assets only")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--batches", type=int, default=None, help="batches of 1,000 samples")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.batches or 300)))
        return
    sizes = args.sizes or ([10_000, 100_000] if args.quick else [100_000, 1_000_000])
    rows = []
    for size in sizes:
        batches = args.batches or max(300, 5 * size // BATCH)   # 50 s of fleet time
        out = subprocess.run([sys.executable, __file__, "--one", str(size), "--batches",
                              str(batches)], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    head = ("assets", "build s", "fleet RSS MB", "B/asset", "peak RSS MB", "samples/s", "µs/sample",
            "p50 ms→owner", "p99 ms→owner", "timer arms/smp", "expire µs/asset")
    print("core runtime, one process, embedded (simpleSystemBase), batches of 1,000")
    print(" | ".join(f"{h:>14}" for h in head))
    for r in rows:
        cells = (f"{r['assets']:,}", f"{r['build_s']:.1f}", f"{r['rss_mb']:.0f}",
                 f"{r['bytes_per_asset']:.0f}", f"{r['peak_rss_mb']:.0f}",
                 f"{r['samples_per_s']:,.0f}", f"{r['us_per_sample']:.2f}",
                 f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['arms_per_sample']:.3f}",
                 f"{r['expire_us_per_asset']:.2f}")
        print(" | ".join(f"{c:>14}" for c in cells))
    print("fleet RSS: growth of the process over its baseline once the fleet is built; peak "
          "RSS: the whole process at its highest, including the parsed model dict")
    print("targets: 1M assets < 1 GiB RSS; >= 300k samples/s; offline detection per sample "
          "independent of fleet size (each sample writes one deadline; 'timer arms/smp' is "
          "how often a sample also inserts into the deadline wheel, O(1) each)")


if __name__ == "__main__":
    main()
