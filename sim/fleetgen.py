"""A realistic fleet model: owners → regions → sites of one kind each, sized like real ones.

Wind farms hold turbines, neighbourhoods hold home and commercial batteries, charging hubs
hold chargers. Kind counts follow the mix exactly (largest remainder), and everything is drawn
from one ``random.Random(seed)``, so a seed always gives the same fleet.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from sim.config import DEFAULT_REPORT_EVERY, KINDS, SimConfigError

# (rated_kw, capacity_kwh or None, weight): common real-world ratings
_RATINGS: dict[str, tuple[tuple[float, float | None, float], ...]] = {
    "turbine": ((2000.0, None, 2), (3000.0, None, 3), (3600.0, None, 2), (4200.0, None, 1)),
    "battery": ((5.0, 13.5, 6), (10.0, 20.0, 2), (250.0, 500.0, 1), (1000.0, 2000.0, 0.5)),
    "charger": ((11.0, None, 4), (22.0, None, 3), (50.0, None, 2), (150.0, None, 2),
                (350.0, None, 1)),
}
_PREFIX = {"turbine": "t", "battery": "b", "charger": "c"}
_OWNER_NAMES = ("acme", "borealis", "cirrus", "dynamo", "ember", "fjord", "gale", "helios")
_REGION_NAMES = ("north", "south", "east", "west", "coast", "plains", "hills", "valley",
                 "delta", "lakes", "ridge", "bay")


def apportion(total: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` by ``shares`` into integers that sum to ``total`` (largest remainder,
    ties broken by kind order)."""
    raw = {k: total * shares[k] for k in KINDS if k in shares}
    counts = {k: int(v) for k, v in raw.items()}
    left = total - sum(counts.values())
    order = sorted(raw, key=lambda k: (-(raw[k] - counts[k]), KINDS.index(k)))
    for k in order[:left]:
        counts[k] += 1
    return counts


def generate_fleet(assets: int, *, owners: int = 3, regions: int = 8, sites: int | None = None,
                   mix: Mapping[str, float], seed: int = 7,
                   report_every: Mapping[str, float] = DEFAULT_REPORT_EVERY) -> dict[str, Any]:
    """A fleet model as the dict ``FleetModel.from_dict`` reads."""
    if regions < owners:
        raise SimConfigError(f"--regions: {regions} regions cannot be shared by {owners} owners "
                             "(every owner needs one)")
    rng = random.Random(seed)
    per_kind = apportion(assets, mix)
    n_sites = max(1, min(sites if sites is not None else max(1, assets // 10), assets))
    site_kinds = _site_kinds(n_sites, per_kind)
    owner_list: list[dict[str, Any]] = [
        {"id": _name(_OWNER_NAMES, i), "regions": []} for i in range(owners)]
    region_list: list[dict[str, Any]] = []
    for r in range(regions):
        region: dict[str, Any] = {"id": _name(_REGION_NAMES, r), "sites": []}
        owner_list[r % owners]["regions"].append(region)
        region_list.append(region)
    counters = dict.fromkeys(KINDS, 0)
    site_no = 0
    for kind in KINDS:
        kind_sites = [i for i, k in enumerate(site_kinds) if k == kind]
        sizes = _split(per_kind.get(kind, 0), len(kind_sites), rng)
        for size in sizes:
            site: dict[str, Any] = {"id": f"site-{site_no:04d}", "assets": []}
            site_no += 1
            for _ in range(size):
                site["assets"].append(_asset(kind, counters[kind], rng))
                counters[kind] += 1
            rng.choice(region_list)["sites"].append(site)
    period = report_every.get("turbine", 30.0)
    return {"name": f"sim-{assets}-seed{seed}",
            "defaults": {"report_interval_s": period, "offline_after_s": 3 * period},
            "owners": owner_list,
            "groups": _groups(owner_list, report_every, period)}


def _site_kinds(n_sites: int, per_kind: Mapping[str, int]) -> list[str]:
    """A kind for each site, in proportion to the kinds' asset counts, each kind with assets
    getting at least one site and never more sites than assets."""
    present = {k: n for k, n in per_kind.items() if n > 0}
    n_sites = max(n_sites, len(present))
    total = sum(present.values())
    counts = apportion(n_sites, {k: n / total for k, n in present.items()})
    for kind, n in present.items():
        counts[kind] = max(1, min(counts.get(kind, 0), n))
    return [kind for kind in KINDS for _ in range(counts.get(kind, 0))]


def _split(total: int, parts: int, rng: random.Random) -> list[int]:
    """``total`` items over ``parts`` sites, each at least one, sizes uneven like real sites."""
    if parts == 0:
        return []
    weights = [rng.uniform(0.3, 1.7) for _ in range(parts)]
    scale = (total - parts) / sum(weights)
    sizes = [1 + int(w * scale) for w in weights]
    for i in range(total - sum(sizes)):
        sizes[i % parts] += 1
    return sizes


def _asset(kind: str, number: int, rng: random.Random) -> dict[str, Any]:
    choices = _RATINGS[kind]
    rated, capacity, _ = rng.choices(choices, weights=[c[2] for c in choices])[0]
    asset: dict[str, Any] = {"id": f"{_PREFIX[kind]}-{number:06d}", "kind": kind,
                             "rated_kw": rated}
    if capacity is not None:
        asset["capacity_kwh"] = capacity
    return asset


def _groups(owner_list: list[dict[str, Any]], report_every: Mapping[str, float],
            default_period: float) -> dict[str, list[str]]:
    """Per-asset report intervals where a kind's differs from the fleet default, and one extra
    grouping (a virtual power plant of every battery site) to exercise group roll-ups."""
    vpp: list[str] = []
    for owner in owner_list:
        for region in owner["regions"]:
            for site in region["sites"]:
                for asset in site["assets"]:
                    period = report_every.get(asset["kind"], default_period)
                    if period != default_period:
                        asset["report_interval_s"] = period
                if site["assets"] and site["assets"][0]["kind"] == "battery":
                    vpp.append(f"{owner['id']}/{region['id']}/{site['id']}")
    return {"vpp/batteries": vpp} if vpp else {}


def _name(names: tuple[str, ...], i: int) -> str:
    return names[i] if i < len(names) else f"{names[i % len(names)]}-{i // len(names)}"
