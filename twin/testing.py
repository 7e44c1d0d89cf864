"""Helpers for testing code built on twin (and twin itself).

``capture_logs``     structlog's context manager: the structured log entries emitted inside it.
``recount``          a brute-force recount of a roll-up from asset states and the model.
``assert_consistent`` checks a fleet's every roll-up against its recount.
``fleet_dict``       a small synthetic fleet model (dict), deterministic for a seed.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from structlog.testing import capture_logs

from twin.core.clock import VirtualClock

if TYPE_CHECKING:
    from twin._fleet import Fleet
    from twin.core.model import FleetModel

__all__ = ["VirtualClock", "assert_consistent", "capture_logs", "fleet_dict", "members",
           "recount"]

_KINDS: tuple[tuple[str, dict[str, float]], ...] = (
    ("turbine", {"rated_kw": 3000.0}),
    ("battery", {"rated_kw": 5.0, "capacity_kwh": 13.5}),
    ("charger", {"rated_kw": 22.0}),
)


def fleet_dict(owners: int = 2, regions: int = 2, sites: int = 3, assets: int = 4,
               seed: int = 0, report_interval_s: float = 10.0,
               offline_after_s: float = 30.0) -> dict[str, Any]:
    """A model dict with ``owners * regions * sites`` sites of ``assets`` assets each, kinds
    mixed by a seeded generator. Ids: owners ``o0``, regions ``r0``, sites ``o0-r0-s0``,
    assets ``<site>-a0``; one extra group ``all-turbines-of-o0`` lists o0's turbines."""
    rng = random.Random(seed)
    out: dict[str, Any] = {"defaults": {"report_interval_s": report_interval_s,
                                        "offline_after_s": offline_after_s}, "owners": []}
    turbines: list[str] = []
    for o in range(owners):
        owner: dict[str, Any] = {"id": f"o{o}", "regions": []}
        for r in range(regions):
            region: dict[str, Any] = {"id": f"r{r}", "sites": []}
            for s in range(sites):
                site_id = f"o{o}-r{r}-s{s}"
                site_assets = []
                for a in range(assets):
                    kind, fields = _KINDS[rng.randrange(len(_KINDS))]
                    asset_id = f"{site_id}-a{a}"
                    site_assets.append({"id": asset_id, "kind": kind, **fields})
                    if o == 0 and kind == "turbine":
                        turbines.append(asset_id)
                region["sites"].append({"id": site_id, "assets": site_assets})
            owner["regions"].append(region)
        out["owners"].append(owner)
    if turbines:
        out["groups"] = {"all-turbines-of-o0": turbines}
    return out


def members(model: FleetModel, path: str) -> set[str]:
    """Ids of the assets a roll-up path is expected to count, straight from the model."""
    if path in model.groups:
        paths, assets = model.group_coverage(path)
        out = set(assets)
        for p in paths:
            out |= members(model, p)
        return out
    site_ids = model.site_ids_under(path)
    return {a for s in site_ids for a in model.sites[s].assets}


def recount(fleet: Fleet, path: str) -> dict[str, Any]:
    """Count a roll-up the slow way: every expected asset's state, one by one."""
    counts = {"expected": 0, "reporting": 0, "offline": 0, "unknown": 0, "quarantined": 0}
    power_w = 0
    capacity_w = 0
    missing = []
    for asset_id in members(fleet.model, path):
        view = fleet.asset(asset_id)
        counts["expected"] += 1
        capacity_w += round(fleet.model.assets[asset_id].rated_kw * 1000.0)
        if view.state == "online":
            counts["reporting"] += 1
            power = view.reported.get("power_kw")
            power_w += 0 if power is None else round(power * 1000.0)
        else:
            counts[view.state] += 1
            missing.append(asset_id)
    return {**counts, "power_kw": power_w / 1000.0, "capacity_kw": capacity_w / 1000.0,
            "missing": tuple(sorted(missing))}


def assert_consistent(fleet: Fleet) -> None:
    """Every roll-up of ``fleet`` equals its brute-force recount (raises AssertionError)."""
    for path, rollup in fleet.rollups().items():
        expected = recount(fleet, path)
        actual = {**{k: getattr(rollup, k) for k in expected if k != "missing"},
                  "missing": rollup.missing}
        assert actual == expected, f"roll-up {path!r} is {actual}, a recount says {expected}"
