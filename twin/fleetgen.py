"""Synthetic fleet models, deterministic for a seed: the one generator that the simulator,
``twin demo`` and :mod:`twin.testing` share.

:func:`generate_fleet` is realistic: owners → regions → sites of one kind each, sized like real
ones (wind farms hold turbines, neighbourhoods home and commercial batteries, charging hubs
chargers), kind counts following the mix exactly (largest remainder). :func:`grid_fleet` is
regular: every region the same number of sites, every site the same number of assets, with ids
that say where an asset sits (``o0-r1-s2-a3``), for tests. Both draw everything from one
``random.Random(seed)`` and return the dict that ``FleetModel.from_dict`` reads.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from twin.core.errors import ModelError

KINDS = ("turbine", "battery", "charger")
# periodic report interval per kind (the model's report_interval_s; offline after 3x that)
DEFAULT_REPORT_EVERY: Mapping[str, float] = MappingProxyType(
    {"turbine": 30.0, "battery": 30.0, "charger": 60.0})

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
        raise ModelError(f"regions: {regions} regions cannot be shared by {owners} owners "
                         "(every owner needs one)")
    rng = random.Random(seed)
    per_kind = apportion(assets, mix)
    n_sites = max(1, min(sites if sites is not None else max(1, assets // 10), assets))
    site_kinds = _site_kinds(n_sites, per_kind)
    owner_list = [_owner(_name(_OWNER_NAMES, i)) for i in range(owners)]
    region_list: list[dict[str, Any]] = []
    for r in range(regions):
        region = _region(_name(_REGION_NAMES, r))
        owner_list[r % owners]["regions"].append(region)
        region_list.append(region)
    counters = dict.fromkeys(KINDS, 0)
    site_no = 0
    for kind in KINDS:
        kind_sites = [i for i, k in enumerate(site_kinds) if k == kind]
        sizes = _split(per_kind.get(kind, 0), len(kind_sites), rng)
        for size in sizes:
            site = _site(f"site-{site_no:04d}")
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


# grid_fleet's kinds: one rating each, so a test can count capacity by hand
_GRID_KINDS: tuple[tuple[str, dict[str, float]], ...] = (
    ("turbine", {"rated_kw": 3000.0}),
    ("battery", {"rated_kw": 5.0, "capacity_kwh": 13.5}),
    ("charger", {"rated_kw": 22.0}),
)


def grid_fleet(owners: int = 2, regions: int = 2, sites: int = 3, assets: int = 4,
               seed: int = 0, report_interval_s: float = 10.0,
               offline_after_s: float = 30.0) -> dict[str, Any]:
    """``owners * regions * sites`` sites of ``assets`` assets each, kinds mixed by a seeded
    generator. Ids: owners ``o0``, regions ``r0``, sites ``o0-r0-s0``, assets ``<site>-a0``;
    one extra group ``all-turbines-of-o0`` lists o0's turbines."""
    rng = random.Random(seed)
    owner_list = [_owner(f"o{o}") for o in range(owners)]
    turbines: list[str] = []
    for o, owner in enumerate(owner_list):
        for r in range(regions):
            region = _region(f"r{r}")
            for s in range(sites):
                site = _site(f"o{o}-r{r}-s{s}")
                for a in range(assets):
                    kind, fields = _GRID_KINDS[rng.randrange(len(_GRID_KINDS))]
                    site["assets"].append({"id": f"{site['id']}-a{a}", "kind": kind, **fields})
                    if o == 0 and kind == "turbine":
                        turbines.append(site["assets"][-1]["id"])
                region["sites"].append(site)
            owner["regions"].append(region)
    out: dict[str, Any] = {"defaults": {"report_interval_s": report_interval_s,
                                        "offline_after_s": offline_after_s},
                           "owners": owner_list}
    if turbines:
        out["groups"] = {"all-turbines-of-o0": turbines}
    return out


def _owner(owner_id: str) -> dict[str, Any]:
    return {"id": owner_id, "regions": []}


def _region(region_id: str) -> dict[str, Any]:
    return {"id": region_id, "sites": []}


def _site(site_id: str) -> dict[str, Any]:
    return {"id": site_id, "assets": []}


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
