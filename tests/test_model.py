"""The fleet model: loading, the to_dict round trip, validation messages, group coverage."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from twin import (
    Fleet,
    FleetModel,
    ModelError,
    UnknownAsset,
    UnknownPath,
    VirtualClock,
)
from twin.testing import assert_consistent

ASSET0 = re.escape("owners[0].regions[0].sites[0].assets[0]")


def structure(model: FleetModel) -> dict[str, Any]:
    """What a model says, independent of how it was built: hierarchy, specs, groups."""
    return {
        "defaults": model.defaults,
        "paths": model.node_paths(),
        "assets": {a: (s.kind, s.rated_kw, s.site, s.capacity_kwh, s.report_interval_s,
                       s.offline_after_s, dict(s.attrs)) for a, s in model.assets.items()},
        "groups": dict(model.groups),
    }


def broken(example_dict: dict[str, Any], edit: Callable[[dict[str, Any]], None]
           ) -> dict[str, Any]:
    raw = copy.deepcopy(example_dict)
    edit(raw)
    return raw


def first_asset(raw: dict[str, Any]) -> dict[str, Any]:
    asset: dict[str, Any] = raw["owners"][0]["regions"][0]["sites"][0]["assets"][0]
    return asset


# -- building and the round trip ---------------------------------------------------------


def test_from_dict_builds_the_hierarchy_specs_and_groups(model: FleetModel) -> None:
    assert model.node_paths() == ["acme", "acme/north", "acme/north/alpha", "acme/north/gamma",
                                  "acme/south", "acme/south/beta"]
    b01 = model.asset("b-01")
    assert (b01.kind, b01.rated_kw, b01.capacity_kwh, b01.site) == ("battery", 5000.0,
                                                                    13500.0, "alpha")
    assert (b01.report_interval_s, b01.offline_after_s) == (10.0, 30.0)
    assert model.site("beta").path == "acme/south/beta"
    assert model.site("acme/south/beta") is model.site("beta")
    # a site member is kept by id, so the site stays in the group when it moves
    assert model.groups == {"grid/ercot": ("alpha", "b-02")}
    assert model.version == 0 and model.history == []


def test_load_reads_a_json_file(tmp_path: Path, example_dict: dict[str, Any]) -> None:
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(example_dict))
    assert structure(FleetModel.load(path)) == structure(FleetModel.from_dict(example_dict))
    assert structure(FleetModel.load(str(path))) == structure(FleetModel.from_dict(example_dict))


def test_load_names_the_file_when_it_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"owners": [')
    with pytest.raises(ModelError, match=r"broken\.json: not valid JSON"):
        FleetModel.load(path)


def test_to_dict_round_trips_to_the_same_structure(model: FleetModel) -> None:
    raw = model.to_dict()
    again = FleetModel.from_dict(raw)
    assert structure(again) == structure(model)
    assert again.to_dict() == raw
    json.dumps(raw)   # JSON-able, as documented


def test_to_dict_round_trips_per_asset_intervals_and_optional_fields() -> None:
    raw = {"defaults": {"report_interval_s": 10, "offline_after_s": 50},
           "owners": [{"id": "o", "regions": [{"id": "r", "sites": [{"id": "s", "assets": [
               {"id": "a", "kind": "turbine", "rated_kw": 100, "report_interval_s": 5},
               {"id": "b", "kind": "turbine", "rated_kw": 100, "offline_after_s": 90},
               {"id": "c", "kind": "charger", "rated_kw": 22, "report_interval_s": 10},
           ]}]}]}]}
    model = FleetModel.from_dict(raw)
    assert [(s.report_interval_s, s.offline_after_s) for s in model.assets.values()] == [
        (5.0, 15.0), (10.0, 90.0), (10.0, 30.0)]
    assert structure(FleetModel.from_dict(model.to_dict())) == structure(model)


def test_to_dict_round_trips_an_asset_timeout_equal_to_the_default() -> None:
    raw = {"defaults": {"report_interval_s": 10, "offline_after_s": 50},
           "owners": [{"id": "o", "regions": [{"id": "r", "sites": [{"id": "s", "assets": [
               {"id": "a", "kind": "turbine", "rated_kw": 100, "report_interval_s": 20,
                "offline_after_s": 50}]}]}]}]}
    model = FleetModel.from_dict(raw)
    assert model.asset("a").offline_after_s == 50.0
    again = FleetModel.from_dict(model.to_dict())
    assert again.asset("a").offline_after_s == 50.0


# -- defaults ---------------------------------------------------------------------------


def test_defaults_with_only_a_report_interval_time_out_after_three_intervals() -> None:
    model = FleetModel.from_dict({"defaults": {"report_interval_s": 20}})
    assert (model.defaults.report_interval_s, model.defaults.offline_after_s) == (20.0, 60.0)


def test_an_asset_with_only_a_report_interval_times_out_after_three_of_its_intervals(
        example_dict: dict[str, Any]) -> None:
    raw = broken(example_dict, lambda r: first_asset(r).update(report_interval_s=7))
    spec = FleetModel.from_dict(raw).asset("t-01")
    assert (spec.report_interval_s, spec.offline_after_s) == (7.0, 21.0)


def test_a_model_without_defaults_uses_the_documented_settings() -> None:
    d = FleetModel.from_dict({}).defaults
    assert (d.report_interval_s, d.offline_after_s, d.allowed_skew_s, d.retention_s) == (
        60.0, 180.0, 300.0, 30 * 86400.0)


# -- validation: every message names the field path and the value -------------------------


@pytest.mark.parametrize(("edit", "pattern"), [
    pytest.param(lambda r: first_asset(r).pop("rated_kw"),
                 rf"^{ASSET0}: turbine asset 't-01' needs 'rated_kw'$", id="missing-rated_kw"),
    pytest.param(lambda r: first_asset(r).update(rated_kw=-5),
                 rf"^{ASSET0}\.rated_kw: expected a positive number, got -5$",
                 id="negative-rated_kw"),
    pytest.param(lambda r: first_asset(r).update(rated_kw="3000"),
                 rf"^{ASSET0}\.rated_kw: expected a positive number, got '3000'$",
                 id="string-rated_kw"),
    pytest.param(lambda r: first_asset(r).update(kind="windmill"),
                 rf"^{ASSET0}\.kind: unknown kind 'windmill' \(known: battery, charger, "
                 r"turbine\)$", id="unknown-kind"),
    pytest.param(lambda r: first_asset(r).update(colour="red"),
                 rf"^{ASSET0}\.colour: unknown field for a turbine asset 't-01' \(valid: id, "
                 r"kind, offline_after_s, rated_kw, report_interval_s\)$",
                 id="unknown-asset-field"),
    pytest.param(lambda r: r["owners"][0]["regions"][1]["sites"][0]["assets"].append(
                     {"id": "t-01", "kind": "turbine", "rated_kw": 1}),
                 r"^owners\[0\]\.regions\[1\]\.sites\[0\]\.assets\[1\]: duplicate asset id "
                 r"'t-01' \(already in site 'alpha'\)$", id="duplicate-asset"),
    pytest.param(lambda r: r["owners"][0]["regions"][1]["sites"].append({"id": "alpha"}),
                 r"^owners\[0\]\.regions\[1\]\.sites\[1\]: duplicate site id 'alpha' .*"
                 r"already at acme/north/alpha\)$", id="duplicate-site"),
    pytest.param(lambda r: r["owners"][0]["regions"][0]["sites"][0]["assets"].__setitem__(
                     1, {"id": "b-01", "kind": "battery", "rated_kw": 5000}),
                 r"^owners\[0\]\.regions\[0\]\.sites\[0\]\.assets\[1\]: battery asset 'b-01' "
                 r"needs 'capacity_kwh'$", id="battery-without-capacity"),
    pytest.param(lambda r: r["defaults"].update(report_every_s=5),
                 r"^defaults\.report_every_s: unknown setting \(valid: allowed_skew_s, "
                 r"offline_after_s, report_interval_s, retention_s\)$", id="bad-defaults-key"),
    pytest.param(lambda r: r["defaults"].update(report_interval_s=30, offline_after_s=20),
                 r"^defaults\.offline_after_s=20 is shorter than report_interval_s=30",
                 id="offline-shorter-than-interval"),
    pytest.param(lambda r: r.update(defaults={"offline_after_s": 30}),
                 r"^defaults\.offline_after_s=30 is shorter than report_interval_s=60",
                 id="offline-shorter-than-default-interval"),
    pytest.param(lambda r: r["groups"]["grid/ercot"].append("zz-99"),
                 r"^groups\.grid/ercot\[2\]: 'zz-99' is neither an asset id nor a path",
                 id="group-member-missing"),
    pytest.param(lambda r: r["groups"].update({"acme/north": ["t-01"]}),
                 r"^groups\.acme/north: the name collides with a path of the hierarchy$",
                 id="group-name-is-a-region"),
    pytest.param(lambda r: r["groups"].update({"acme": ["t-01"]}),
                 r"^groups\.acme: the name collides", id="group-name-is-an-owner"),
    pytest.param(lambda r: r["owners"][0]["regions"][0].update(id="no/rth"),
                 r"^owners\[0\]\.regions\[0\]\.id: expected a non-empty id without '/'.*"
                 r"got 'no/rth'$", id="slash-in-id"),
    pytest.param(lambda r: r.update(sites=[]),
                 r"^unknown top-level field 'sites'", id="unknown-top-level-field"),
])
def test_an_invalid_model_is_refused_with_the_field_path_and_value(
        example_dict: dict[str, Any], edit: Callable[[dict[str, Any]], None],
        pattern: str) -> None:
    raw = broken(example_dict, edit)
    with pytest.raises(ModelError, match=pattern) as refused:
        FleetModel.from_dict(raw)
    assert isinstance(refused.value, ValueError)


def test_an_asset_timeout_shorter_than_its_report_interval_is_refused(
        example_dict: dict[str, Any]) -> None:
    raw = broken(example_dict,
                 lambda r: first_asset(r).update(report_interval_s=60, offline_after_s=5))
    with pytest.raises(ModelError, match=rf"{ASSET0}\.offline_after_s"):
        FleetModel.from_dict(raw)


def test_lookups_of_missing_things_raise_value_errors_that_name_them(model: FleetModel
                                                                     ) -> None:
    with pytest.raises(UnknownPath, match="'nope'") as site:
        model.site("nope")
    with pytest.raises(UnknownPath, match="'acme/south/alpha'"):
        model.site("acme/south/alpha")          # right id, wrong path
    with pytest.raises(UnknownPath, match="'acme/west'"):
        model.split_region("acme/west")
    with pytest.raises(UnknownAsset, match="'x-9'") as asset:
        model.asset("x-9")
    assert isinstance(site.value, ValueError) and isinstance(asset.value, ValueError)


# -- group coverage --------------------------------------------------------------------------


def with_groups(example_dict: dict[str, Any], groups: dict[str, list[str]]) -> FleetModel:
    return FleetModel.from_dict({**example_dict, "groups": groups})


def test_group_coverage_drops_paths_under_another_listed_path(example_dict: dict[str, Any]
                                                              ) -> None:
    model = with_groups(example_dict, {"g": ["acme/north/alpha", "acme/north", "gamma"]})
    assert model.group_coverage("g") == (frozenset({"acme/north"}), frozenset())


def test_group_coverage_drops_assets_inside_a_listed_path(example_dict: dict[str, Any]
                                                          ) -> None:
    model = with_groups(example_dict, {"g": ["acme/north", "t-01", "t-02", "b-02"]})
    assert model.group_coverage("g") == (frozenset({"acme/north"}), frozenset({"b-02"}))
    model = with_groups(example_dict, {"g": ["gamma", "t-02"]})   # the asset's own site
    assert model.group_coverage("g") == (frozenset({"acme/north/gamma"}), frozenset())


def test_group_coverage_normalizes_site_ids_to_paths(example_dict: dict[str, Any]) -> None:
    model = with_groups(example_dict, {"g": ["beta", "acme/north/alpha", "t-02"]})
    assert model.group_coverage("g") == (
        frozenset({"acme/south/beta", "acme/north/alpha"}), frozenset({"t-02"}))


def test_a_group_listing_overlapping_members_counts_each_asset_once(
        example_dict: dict[str, Any], clock: VirtualClock) -> None:
    model = with_groups(example_dict, {"g": ["acme", "acme/north", "alpha", "t-01", "b-02"]})
    with Fleet(model, clock=clock, shards=2) as fleet:
        g = fleet.rollup("g")
        assert (g.expected, g.capacity_kw) == (5, 3000 + 5000 + 150 + 2000 + 10)
        assert_consistent(fleet)
