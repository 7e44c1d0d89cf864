"""Placement: whole sites on one shard, one rule at start and for new sites, routing by it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from twin.core.model import FleetModel
from twin.core.samples import IngestReport, Sample
from twin.fleetgen import grid_fleet
from twin.runtime.placement import Placement


def model_of(sizes: list[int]) -> FleetModel:
    sites = [{"id": f"s{i}", "assets": [{"id": f"s{i}-a{j}", "kind": "turbine",
                                         "rated_kw": 1000} for j in range(n)]}
             for i, n in enumerate(sizes)]
    return FleetModel.from_dict({"owners": [{"id": "o", "regions": [{"id": "r",
                                                                     "sites": sites}]}]})


def test_every_site_is_placed_whole_on_one_shard() -> None:
    model = FleetModel.from_dict(grid_fleet(owners=2, regions=2, sites=3, assets=4))
    placement = Placement(3)
    placement.place_all(model)
    assert set(placement.site_shard) == set(model.sites)
    assert all(0 <= i < 3 for i in placement.site_shard.values())
    for spec in model.assets.values():
        assert placement.shard_of(model, spec.id) == placement.shard_of_site(spec.site)


def test_biggest_sites_go_first_so_shards_end_even() -> None:
    model = model_of([10, 6, 5, 5, 4])
    placement = Placement(2)
    placement.place_all(model)
    assert placement.loads(model) == [15, 15]
    assert placement.site_shard["s0"] == 0          # ties go to the lowest index


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 30), min_size=1, max_size=25), shards=st.integers(1, 5))
def test_no_shard_holds_more_than_the_least_loaded_plus_the_biggest_site(
        sizes: list[int], shards: int) -> None:
    model = model_of(sizes)
    placement = Placement(shards)
    placement.place_all(model)
    load = placement.loads(model)
    assert sum(load) == sum(n or 1 for n in sizes)
    assert max(load) - min(load) <= max(*sizes, 1)


def test_a_new_site_follows_the_same_rule_as_the_first_ones() -> None:
    model = model_of([8, 3])
    placement = Placement(2)
    placement.place_all(model)
    assert placement.loads(model) == [8, 3]
    # an empty new site counts as one asset and goes to the least-loaded shard
    assert placement.place("new", model) == 1
    assert placement.sites_on(1) == ["s1", "new"]


def test_routing_splits_a_batch_by_shard_and_rejects_unknown_assets_by_name() -> None:
    model = model_of([2, 2])
    placement = Placement(2)
    placement.place_all(model)
    batch = [Sample("s0-a0", 1.0, {}), Sample("nope", 1.0, {}), Sample("s1-a1", 1.0, {}),
             Sample("s0-a1", 1.0, {})]
    report = IngestReport()
    parts = placement.route(model, batch, None, report)
    s0, s1 = placement.shard_of_site("s0"), placement.shard_of_site("s1")
    assert [s.asset_id for s in parts[s0][0]] == ["s0-a0", "s0-a1"] and parts[s0][1] == [0, 3]
    assert [s.asset_id for s in parts[s1][0]] == ["s1-a1"] and parts[s1][1] == [2]
    assert report.rejected == 1
    assert (report.errors[0].index, report.errors[0].field) == (1, "asset_id")
    assert "unknown asset" in report.errors[0].reason
