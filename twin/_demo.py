"""``twin demo``: a small embedded fleet, some assets silent, printed as a roll-up tree."""

from __future__ import annotations

import math
import random
from typing import Any, TextIO

from twin.core.clock import VirtualClock
from twin.core.model import FleetModel
from twin.core.rollup import Rollup
from twin.core.samples import Sample
from twin.fleet.facade import Fleet
from twin.fleetgen import KINDS, generate_fleet

START = 1767225600.0   # 2026-01-01T00:00:00Z
MIX = {"turbine": 0.45, "battery": 0.35, "charger": 0.20}


def demo_model(assets: int, seed: int) -> dict[str, Any]:
    """Two owners over four regions, sites of about 14 assets of one kind, every asset
    reporting each 10 s (offline after 30 s); deterministic for ``seed``."""
    return generate_fleet(assets, owners=2, regions=4, sites=max(1, assets // 14), mix=MIX,
                          seed=seed, report_every=dict.fromkeys(KINDS, 10.0))


def run_demo(out: TextIO, assets: int = 300, silent: float = 0.08, minutes: float = 3.0,
             seed: int = 7, store: str | None = None) -> Fleet:
    """Run the demo fleet in virtual time and print its tree to ``out``; returns the fleet
    (closed)."""
    rng = random.Random(seed)
    model = FleetModel.from_dict(demo_model(assets, seed))
    clock = VirtualClock(start=START)
    ids = sorted(model.assets)
    never = set(rng.sample(ids, int(len(ids) * silent)))            # never come up
    drop_at = {a: rng.uniform(30, minutes * 60 - 40) for a in rng.sample(ids, len(ids) // 25)}
    crashy = rng.choice(sorted(set(ids) - never - set(drop_at)))
    with Fleet(model, clock=clock, seed=seed, store=store) as fleet:
        steps = int(minutes * 60 / 10)
        for step in range(steps):
            elapsed = step * 10.0
            batch = []
            for asset_id in ids:
                if asset_id in never or drop_at.get(asset_id, math.inf) < elapsed:
                    continue
                spec = model.assets[asset_id]
                batch.append(Sample(asset_id, clock.now(), {
                    "power_kw": _power(spec.kind, spec.rated_kw, elapsed, rng)}))
            fleet.ingest(batch)
            if step in (3, 4, 5, 6):
                fleet.inject_fault(crashy, "demo: firmware parser bug")
            fleet.advance(10)
        _print_tree(fleet, out)
        metrics = fleet.metrics()
        out.write(f"\n{metrics['samples_accepted']:,} samples accepted in "
                  f"{minutes:g} min of virtual time; {metrics['transitions']} state "
                  f"transitions; {metrics['supervisor_restarts']} actor restarts, "
                  f"{metrics['supervisor_quarantines']} quarantined"
                  f"{f' ({crashy}, crash loop)' if metrics['supervisor_quarantines'] else ''}\n")
        if fleet.store is not None:
            fleet.flush()
            out.write(f"store: {fleet.store.url} ({metrics['batches']} batches in the durable "
                      f"log, {fleet.store.count('twin_samples'):,} sample rows)\n")
    return fleet


def _power(kind: str, rated: float, t: float, rng: random.Random) -> float:
    if kind == "turbine":
        wind = 0.55 + 0.35 * math.sin(t / 300.0) + rng.uniform(-0.05, 0.05)
        return round(max(0.0, min(1.0, wind)) * rated, 1)
    if kind == "battery":
        return round(rated * math.sin(t / 120.0 + rng.random()), 2)
    return round(-rng.uniform(0.0, 1.0) * rated, 1) if rng.random() < 0.6 else 0.0


def _print_tree(fleet: Fleet, out: TextIO) -> None:
    rollups = fleet.rollups()
    out.write(f"{'node':<34}{'reporting':>11}{'MW now':>9}{'MW cap':>9}"
              f"{'offline':>9}{'unknown':>9}{'quarant.':>9}  missing\n")
    for path in fleet.model.node_paths():
        _row(out, rollups[path], "  " * path.count("/") + path.rsplit("/", 1)[-1])
    for name in sorted(fleet.model.groups):
        _row(out, rollups[name], f"[group] {name}")
    for owner in fleet.model.owners:
        r = rollups[owner]
        out.write(f"\n{owner}: {r.power_kw / 1000:.1f} MW now, but only {r.reporting} of the "
                  f"{r.expected} assets we expect are reporting")


def _row(out: TextIO, r: Rollup, label: str) -> None:
    short = "!" if r.reporting < r.expected else " "
    missing = ", ".join(r.missing[:4]) + (f" +{len(r.missing) - 4}" if len(r.missing) > 4 else "")
    out.write(f"{label:<34}{short}{r.reporting:>5}/{r.expected:<4}{r.power_kw / 1000:>9.2f}"
              f"{r.capacity_kw / 1000:>9.2f}{r.offline:>9}{r.unknown:>9}{r.quarantined:>9}"
              f"  {missing}\n")
