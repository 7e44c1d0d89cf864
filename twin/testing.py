"""Helpers for testing code built on twin (and twin itself).

``capture_logs``     structlog's context manager: the structured log entries emitted inside it.
``recount``          a brute-force recount of a roll-up from asset states and the model.
``assert_consistent`` checks a fleet's every roll-up against its recount.
``fleet_dict``       a small synthetic fleet model (dict), deterministic for a seed
                     (:func:`twin.fleetgen.grid_fleet`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from structlog.testing import capture_logs

from twin.core.clock import VirtualClock
from twin.fleetgen import grid_fleet as fleet_dict

if TYPE_CHECKING:
    from twin.core.model import FleetModel
    from twin.fleet.facade import Fleet

__all__ = ["VirtualClock", "assert_consistent", "capture_logs", "fleet_dict", "members",
           "recount"]

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
