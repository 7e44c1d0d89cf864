"""Dispatch allocation benchmark: one ``allocate`` call (a dispatch tick's split of a target over
the fleet) at 10k and 100k batteries, both strategies, discharging, charging and beyond
capacity. Prints milliseconds per call (median and 95th percentile of N calls) and the page
faults per call, which on a VM cost about as much as the arithmetic.

    python bench/bench_allocation.py            # 200 calls per row
    python bench/bench_allocation.py --quick    # 30 calls per row (a few seconds)
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from typing import Any

import numpy as np

from twin.control.allocation import AllocationInput, Strategy, allocate

RATED_KW = 5.0
WARMUP = 5


def fleet(assets: int, seed: int = 7) -> dict[str, Any]:
    """Home batteries as the dispatch loop would see them: nearly empty ones can discharge
    less and nearly full ones charge less; 3 % with an unknown state of charge, 4 % excluded."""
    rng = np.random.default_rng(seed)
    soc = rng.uniform(0.0, 100.0, assets)
    discharge = RATED_KW * np.clip(soc / 10.0, 0.0, 1.0)
    charge = RATED_KW * np.clip((100.0 - soc) / 10.0, 0.0, 1.0)
    soc[rng.random(assets) < 0.03] = np.nan
    eligible = rng.random(assets) >= 0.04
    return {"max_discharge_kw": discharge, "max_charge_kw": charge, "soc_pct": soc,
            "eligible": eligible}


def run_row(arrays: dict[str, Any], strategy: Strategy, target_kw: float,
            calls: int) -> dict[str, float]:
    inp = AllocationInput(target_kw=target_kw, strategy=strategy, **arrays)
    for _ in range(WARMUP):
        out = allocate(inp)
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        t = time.perf_counter()
        out = allocate(inp)
        times.append(time.perf_counter() - t)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    times.sort()
    drift = abs(float(out.setpoints_kw.sum()) - out.feasible_kw)
    return {"median_ms": statistics.median(times) * 1e3,
            "p95_ms": times[max(0, int(0.95 * calls) - 1)] * 1e3,
            "faults": faults / calls, "feasible_kw": out.feasible_kw,
            "saturated": out.saturated, "drift_kw": drift}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 calls per row")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=[10_000, 100_000])
    parser.add_argument("--calls", type=int, default=None, help="timed calls per row")
    args = parser.parse_args()
    calls = args.calls or (30 if args.quick else 200)
    head = ("assets", "strategy", "target", "median ms", "p95 ms", "faults/call", "feasible kW",
            "saturated", "|sum-feasible| kW")
    print(f"dispatch allocation, one call = one tick's split ({calls} calls per row)")
    print(" | ".join(f"{h:>15}" for h in head))
    for size in args.sizes:
        arrays = fleet(size)
        up = float(arrays["max_discharge_kw"][arrays["eligible"]].sum())
        down = float(arrays["max_charge_kw"][arrays["eligible"]].sum())
        for strategy in ("headroom", "soc"):
            for label, target in (("discharge 60 %", 0.6 * up), ("charge 60 %", -0.6 * down),
                                  ("beyond cap.", 1.5 * up)):
                r = run_row(arrays, strategy, target, calls)
                cells = (f"{size:,}", strategy, label, f"{r['median_ms']:.2f}",
                         f"{r['p95_ms']:.2f}", f"{r['faults']:.0f}", f"{r['feasible_kw']:,.0f}",
                         f"{r['saturated']:,}", f"{r['drift_kw']:.1e}")
                print(" | ".join(f"{c:>15}" for c in cells))
    print("target: well under 20 ms per call at 100k assets (the dispatch tick is 1 s; the "
          "whole tick's budget is 100 ms). soc sorts the assets (O(n log n)); headroom is a "
          "proportional split (O(n)); beyond capacity every eligible asset is at its limit.")


if __name__ == "__main__":
    main()
