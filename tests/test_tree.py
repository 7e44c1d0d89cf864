"""The roll-up tree (``twin.runtime.tree``), fed leaf summaries by hand: no shards, no Fleet.

Rows are ``(unknown, online, offline, quarantined, power_w, capacity_w)`` per kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.groups import GroupActor, LeafSummary
from twin.core.clock import VirtualClock
from twin.core.errors import UnknownPath
from twin.core.model import FleetModel
from twin.core.rollup import Rollup, Row
from twin.runtime.shard import partial_key, site_key
from twin.runtime.tree import RollupTree

T0 = 1767225600.0
ERCOT = "grid/ercot"
ERCOT_LEAF = partial_key(ERCOT, 0)
PARTIALS = [(ERCOT_LEAF, ERCOT)]


def turbine(asset_id: str) -> dict[str, Any]:
    return {"id": asset_id, "kind": "turbine", "rated_kw": 3000.0}


def battery(asset_id: str) -> dict[str, Any]:
    return {"id": asset_id, "kind": "battery", "rated_kw": 5.0, "capacity_kwh": 13.5}


def fleet_raw(farm_region: str = "north") -> dict[str, Any]:
    """acme/north/{farm, yard}, acme/south/dock, zenith/east/hub; ``grid/ercot`` lists the
    farm site and one battery of the dock; ``all-acme`` lists the owner acme."""
    farm = {"id": "farm", "assets": [turbine("t1"), turbine("t2")]}
    acme_regions: dict[str, list[dict[str, Any]]] = {
        "north": [{"id": "yard", "assets": [battery("b1")]}],
        "south": [{"id": "dock", "assets": [battery("b8"), battery("b9")]}]}
    acme_regions[farm_region].insert(0, farm)
    return {
        "owners": [
            {"id": "acme", "regions": [{"id": r, "sites": s} for r, s in acme_regions.items()]},
            {"id": "zenith", "regions": [{"id": "east", "sites": [
                {"id": "hub", "assets": [turbine("t5")]}]}]}],
        "groups": {ERCOT: ["farm", "b9"], "all-acme": ["acme"]},
    }


# which leaves each roll-up sums (the farm in north)
LEAVES_UNDER: dict[str, tuple[str, ...]] = {
    "acme/north/farm": ("site:farm",),
    "acme/north/yard": ("site:yard",),
    "acme/south/dock": ("site:dock",),
    "zenith/east/hub": ("site:hub",),
    "acme/north": ("site:farm", "site:yard"),
    "acme/south": ("site:dock",),
    "zenith/east": ("site:hub",),
    "acme": ("site:farm", "site:yard", "site:dock"),
    "zenith": ("site:hub",),
    ERCOT: ("site:farm", ERCOT_LEAF),
    "all-acme": ("site:farm", "site:yard", "site:dock"),
}


def make_tree(clock: VirtualClock | None = None, farm_region: str = "north") -> RollupTree:
    tree = RollupTree((clock or VirtualClock(T0)).now)
    tree.wire(FleetModel.from_dict(fleet_raw(farm_region)), PARTIALS)
    return tree


@pytest.fixture
def tree() -> RollupTree:
    return make_tree()


def summary(key: str, version: int, rows: Mapping[str, Row],
            missing: Iterable[str] | None = None) -> LeafSummary:
    """A leaf summary; ``missing`` given means the leaf's missing set is (re-)sent."""
    parts = () if missing is None else ((key, frozenset(missing)),)
    return LeafSummary(key, version, dict(rows), parts)


def counts(tree: RollupTree, path: str) -> tuple[int, int, int, int, float, float]:
    r = tree.lookup(path).snapshot()
    return (r.unknown, r.reporting, r.offline, r.quarantined, r.power_kw, r.capacity_kw)


FARM_ONLINE = summary("site:farm", 1, {"turbine": (0, 2, 0, 0, 2_500_000, 6_000_000)}, ())
YARD_UNKNOWN = summary("site:yard", 1, {"battery": (1, 0, 0, 0, 0, 5_000)}, {"b1"})
DOCK_MIXED = summary("site:dock", 1, {"battery": (0, 1, 1, 0, -3_000, 10_000)}, {"b8"})
HUB_OFFLINE = summary("site:hub", 1, {"turbine": (0, 0, 1, 0, 0, 3_000_000)}, {"t5"})
ERCOT_B9 = summary(ERCOT_LEAF, 1, {"battery": (0, 1, 0, 0, -3_000, 5_000)}, ())
ALL = [FARM_ONLINE, YARD_UNKNOWN, DOCK_MIXED, HUB_OFFLINE, ERCOT_B9]


# -- wiring and lookup -------------------------------------------------------------------------


def test_wiring_makes_a_node_for_every_owner_region_site_and_group(tree: RollupTree) -> None:
    assert sorted(tree.paths("owner")) == ["acme", "zenith"]
    assert sorted(tree.paths("region")) == ["acme/north", "acme/south", "zenith/east"]
    assert sorted(tree.paths("site")) == ["acme/north/farm", "acme/north/yard",
                                          "acme/south/dock", "zenith/east/hub"]
    assert sorted(tree.paths("group")) == ["all-acme", ERCOT]
    assert sorted(tree.paths()) == sorted(LEAVES_UNDER)


def test_lookup_finds_each_node_by_its_path_or_group_name(tree: RollupTree) -> None:
    for path, level in [("acme", "owner"), ("acme/south", "region"),
                        ("acme/north/farm", "site"), (ERCOT, "group")]:
        node = tree.lookup(path)
        assert (node.path, node.level) == (path, level)
    assert tree.lookup("acme/north/farm").parents == [tree.lookup("acme/north"),
                                                      tree.lookup(ERCOT)]
    assert tree.lookup("acme").parents == [tree.lookup("all-acme")]


def test_an_unknown_path_error_names_the_path_and_its_close_neighbours(tree: RollupTree
                                                                       ) -> None:
    with pytest.raises(UnknownPath) as caught:
        tree.lookup("acme/west")
    message = str(caught.value)
    assert "'acme/west'" in message
    assert "did you mean one of: acme, acme/north, acme/north/farm" in message
    assert caught.value.path == "acme/west"


def test_an_unknown_owner_error_lists_the_owners_and_groups(tree: RollupTree) -> None:
    with pytest.raises(UnknownPath, match=r"'nobody'.*owners and groups: acme, all-acme, zenith"):
        tree.lookup("nobody")


def test_a_freshly_wired_tree_counts_nothing_and_reports_every_node_changed(
        tree: RollupTree) -> None:
    assert {node.path for node in tree.take_changed()} == set(LEAVES_UNDER)
    assert tree.take_changed() == set()
    assert all(counts(tree, path) == (0, 0, 0, 0, 0.0, 0.0) for path in LEAVES_UNDER)


# -- roll-ups ----------------------------------------------------------------------------------


def test_a_site_summary_rolls_up_through_region_and_owner(tree: RollupTree) -> None:
    tree.absorb([FARM_ONLINE])
    for path in ("acme/north/farm", "acme/north", "acme", ERCOT, "all-acme"):
        assert counts(tree, path) == (0, 2, 0, 0, 2500.0, 6000.0), path
    for path in ("acme/north/yard", "acme/south", "zenith"):
        assert counts(tree, path) == (0, 0, 0, 0, 0.0, 0.0), path


def test_every_level_sums_the_leaves_below_it(tree: RollupTree) -> None:
    tree.absorb(ALL)
    assert counts(tree, "acme/north") == (1, 2, 0, 0, 2500.0, 6005.0)
    assert counts(tree, "acme/south") == (0, 1, 1, 0, -3.0, 10.0)
    assert counts(tree, "acme") == (1, 3, 1, 0, 2497.0, 6015.0)
    assert counts(tree, "zenith") == (0, 0, 1, 0, 0.0, 3000.0)
    # the group: the farm site plus the battery listed directly
    assert counts(tree, ERCOT) == (0, 3, 0, 0, 2497.0, 6005.0)
    acme = tree.lookup("acme").snapshot()
    assert acme.kinds["battery"].counts()["expected"] == 3
    assert acme.kinds["turbine"].power_kw == 2500.0


def test_missing_ids_roll_up_to_every_level_above(tree: RollupTree) -> None:
    tree.absorb(ALL)
    assert tree.lookup("acme").snapshot().missing == ("b1", "b8")
    assert tree.lookup("acme/south/dock").snapshot().missing == ("b8",)
    assert tree.lookup("zenith").snapshot().missing == ("t5",)
    assert tree.lookup(ERCOT).snapshot().missing == ()
    tree.absorb([summary("site:dock", 2, {"battery": (0, 2, 0, 0, 0, 10_000)}, ())])
    assert tree.lookup("all-acme").snapshot().missing == ("b1",)


def test_owners_together_count_every_site_once(tree: RollupTree) -> None:
    tree.absorb(ALL)
    tops = tree.top_level()
    assert sorted(r.path for r in tops) == ["acme", "zenith"]
    assert sum(r.expected for r in tops) == 6


def test_a_newer_summary_replaces_the_leafs_previous_one(tree: RollupTree) -> None:
    tree.absorb([FARM_ONLINE])
    tree.absorb([summary("site:farm", 2, {"turbine": (0, 1, 1, 0, 1_000_000, 6_000_000)},
                         {"t2"})])
    assert counts(tree, "acme") == (0, 1, 1, 0, 1000.0, 6000.0)
    assert tree.lookup("acme").snapshot().missing == ("t2",)


def test_a_repeated_or_stale_summary_changes_nothing(tree: RollupTree) -> None:
    tree.absorb(ALL)
    tree.absorb([summary("site:farm", 5, {"turbine": (0, 1, 1, 0, 1, 6_000_000)}, {"t2"})])
    tree.take_changed()
    before = {path: tree.lookup(path).snapshot() for path in LEAVES_UNDER}
    versions = {path: tree.lookup(path).version for path in LEAVES_UNDER}
    tree.absorb([summary("site:farm", 5, {"turbine": (0, 1, 1, 0, 1, 6_000_000)}, {"t2"}),
                 summary("site:farm", 4, {"turbine": (2, 0, 0, 0, 0, 6_000_000)}, {"t1", "t2"}),
                 FARM_ONLINE])
    assert tree.take_changed() == set()
    for path in LEAVES_UNDER:
        node = tree.lookup(path)
        assert node.snapshot() is before[path], path       # not even recomputed
        assert node.version == versions[path], path


def test_a_summary_of_a_leaf_the_tree_does_not_know_is_ignored(tree: RollupTree) -> None:
    tree.take_changed()
    tree.absorb([summary("site:elsewhere", 1, {"turbine": (0, 1, 0, 0, 7, 7)}, ())])
    assert tree.take_changed() == set()


def test_an_unchanged_summary_with_a_new_version_sends_nothing_upward(tree: RollupTree) -> None:
    tree.absorb([FARM_ONLINE])
    tree.take_changed()
    tree.absorb([summary("site:farm", 2, FARM_ONLINE.rows, ())])
    assert tree.take_changed() == set()


def test_take_changed_returns_the_nodes_changed_since_the_last_call(tree: RollupTree) -> None:
    tree.take_changed()
    tree.absorb([DOCK_MIXED])
    changed = tree.take_changed()
    assert {node.path for node in changed} == {"acme/south/dock", "acme/south", "acme",
                                               "all-acme"}
    assert all(isinstance(node, GroupActor) for node in changed)
    assert tree.take_changed() == set()


def test_a_changed_node_is_stamped_with_the_clock_and_a_new_version() -> None:
    clock = VirtualClock(T0)
    tree = make_tree(clock)
    acme = tree.lookup("acme")
    first = acme.version
    clock.advance(42.0)
    tree.absorb([FARM_ONLINE, YARD_UNKNOWN])
    snap = acme.snapshot()
    assert (snap.as_of, snap.version) == (T0 + 42.0, first + 1)   # two leaves, one flush


def test_forgetting_a_leaf_drops_its_counts_and_takes_its_next_summary_as_new(
        tree: RollupTree) -> None:
    tree.absorb(ALL)
    tree.absorb([summary("site:farm", 9, FARM_ONLINE.rows, ())])
    tree.forget_leaves(["site:farm", "site:never-wired"])
    assert counts(tree, "acme/north") == (1, 0, 0, 0, 0.0, 5.0)
    assert counts(tree, ERCOT) == (0, 1, 0, 0, -3.0, 5.0)
    # the shard came back: its versions start over
    tree.absorb([summary("site:farm", 1, {"turbine": (2, 0, 0, 0, 0, 6_000_000)}, {"t1", "t2"})])
    assert counts(tree, "acme/north") == (3, 0, 0, 0, 0.0, 6005.0)
    assert tree.lookup("acme").snapshot().missing == ("b1", "b8", "t1", "t2")


def test_rewiring_after_a_site_moves_region_moves_its_counts_and_missing_ids(
        tree: RollupTree) -> None:
    tree.absorb([*ALL, summary("site:farm", 2, {"turbine": (0, 1, 1, 0, 9_000, 6_000_000)},
                               {"t2"})])
    tree.wire(FleetModel.from_dict(fleet_raw(farm_region="south")), PARTIALS)
    assert counts(tree, "acme/north") == (1, 0, 0, 0, 0.0, 5.0)
    assert tree.lookup("acme/north").snapshot().missing == ("b1",)
    assert counts(tree, "acme/south") == (0, 2, 2, 0, 6.0, 6010.0)
    assert tree.lookup("acme/south").snapshot().missing == ("b8", "t2")
    assert counts(tree, "acme") == (1, 2, 2, 0, 6.0, 6015.0)
    assert tree.lookup("acme").snapshot().missing == ("b1", "b8", "t2")
    assert tree.lookup("acme/south/farm").path == "acme/south/farm"
    with pytest.raises(UnknownPath):
        tree.lookup("acme/north/farm")


# -- the invariant -----------------------------------------------------------------------------

# the assets behind each leaf, with their kind and rating in watts
LEAF_ASSETS: dict[str, tuple[tuple[str, str, int], ...]] = {
    site_key("farm"): (("t1", "turbine", 3_000_000), ("t2", "turbine", 3_000_000)),
    site_key("yard"): (("b1", "battery", 5_000),),
    site_key("dock"): (("b8", "battery", 5_000), ("b9", "battery", 5_000)),
    site_key("hub"): (("t5", "turbine", 3_000_000),),
    ERCOT_LEAF: (("b9", "battery", 5_000),),
}
LEAF_KEYS = sorted(LEAF_ASSETS)


def leaf_summary(key: str, version: int, states: list[tuple[int, int]]) -> LeafSummary:
    """What a leaf tally says when its assets are in ``states`` ((state, power_w) each)."""
    rows: dict[str, list[int]] = {}
    missing = set()
    for (asset_id, kind, capacity), (state, power_w) in zip(LEAF_ASSETS[key], states,
                                                             strict=True):
        row = rows.setdefault(kind, [0] * 6)
        row[state] += 1
        row[5] += capacity
        if state == 1:
            row[4] += power_w
        else:
            missing.add(asset_id)
    return summary(key, version, {k: (r[0], r[1], r[2], r[3], r[4], r[5])
                                  for k, r in rows.items()}, missing)


@st.composite
def histories(draw: st.DrawFn) -> dict[str, list[LeafSummary]]:
    """Each leaf's summaries, versions 1, 2, ... (each whole, missing set included)."""
    out = {}
    for key in LEAF_KEYS:
        n = len(LEAF_ASSETS[key])
        asset_state = st.tuples(st.integers(0, 3), st.integers(-5_000, 3_000_000))
        out[key] = [leaf_summary(key, v + 1, draw(st.lists(asset_state, min_size=n,
                                                           max_size=n)))
                    for v in range(draw(st.integers(1, 4)))]
    return out


def expected_rollup(path: str, level: str, latest: Mapping[str, LeafSummary]) -> Rollup:
    rows: dict[str, list[int]] = {}
    parts: list[frozenset[str]] = []
    for key in LEAVES_UNDER[path]:
        if key not in latest:
            continue
        for kind, row in latest[key].rows.items():
            total = rows.setdefault(kind, [0] * 6)
            for i, value in enumerate(row):
                total[i] += value
        parts.extend(ids for _, ids in latest[key].missing if ids is not None)
    return Rollup(path, level, rows, 0, 0.0, parts)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(history=histories(), data=st.data())
def test_every_rollup_is_the_sum_of_the_latest_summary_of_each_leaf_below_it(
        history: dict[str, list[LeafSummary]], data: st.DataObject) -> None:
    every = [s for summaries in history.values() for s in summaries]
    # deliveries in any order, some twice, some never; in batches of any size
    deliveries = data.draw(st.lists(st.sampled_from(every), max_size=25))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(deliveries)), max_size=4)))
    tree = make_tree()
    start = 0
    for cut in [*cuts, len(deliveries)]:
        tree.absorb(deliveries[start:cut])
        start = cut
    latest: dict[str, LeafSummary] = {}
    for s in deliveries:
        if s.key not in latest or s.version > latest[s.key].version:
            latest[s.key] = s
    for path in LEAVES_UNDER:
        node = tree.lookup(path)
        actual, expected = node.snapshot(), expected_rollup(path, node.level, latest)
        assert actual == expected, f"{path}: {actual.to_dict()} != {expected.to_dict()}"
