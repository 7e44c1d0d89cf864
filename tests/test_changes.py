"""Model changes on a running fleet: roll-ups follow at once, state survives moves, history."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest

from twin import (
    AddAsset,
    AddOwner,
    AddRegion,
    AddSite,
    DecommissionAsset,
    Fleet,
    ModelError,
    ModelVersion,
    MoveAsset,
    MoveSite,
    PendingChange,
    Sample,
    UnknownAsset,
    UnknownPath,
    VirtualClock,
    change_from_dict,
)
from twin.testing import assert_consistent, capture_logs


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Captured log entries: keeps these tests independent of any global logging setup."""
    with capture_logs() as entries:
        yield entries


def power(fleet: Fleet, clock: VirtualClock, asset_id: str, kw: float) -> None:
    report = fleet.ingest([Sample(asset_id, ts=clock.now(), signals={"power_kw": kw})])
    assert report.accepted == 1, report.errors


def counts(fleet: Fleet, path: str) -> tuple[int, int, float, float]:
    r = fleet.rollup(path)
    return r.expected, r.reporting, r.power_kw, r.capacity_kw


# -- adding --------------------------------------------------------------------------------


def test_an_added_asset_is_expected_at_once_and_counts_when_it_reports(
        fleet: Fleet, clock: VirtualClock) -> None:
    version = fleet.apply(AddAsset("acme/north/gamma",
                                   {"id": "t-03", "kind": "turbine", "rated_kw": 1500}))
    assert isinstance(version, ModelVersion) and version.version == 1
    assert counts(fleet, "acme/north/gamma") == (2, 0, 0.0, 3500.0)
    assert fleet.rollup("acme").expected == 6
    assert fleet.asset("t-03").state == "unknown"
    assert_consistent(fleet)
    power(fleet, clock, "t-03", 1200.0)
    assert counts(fleet, "acme/north") == (5, 1, 1200.0, 3000 + 5000 + 150 + 2000 + 1500)
    assert_consistent(fleet)


def test_an_added_site_gets_a_rollup_and_takes_assets(fleet: Fleet, clock: VirtualClock
                                                      ) -> None:
    fleet.apply(AddSite("acme/south", "delta"))
    assert counts(fleet, "acme/south/delta") == (0, 0, 0.0, 0.0)
    fleet.apply(AddAsset("delta", {"id": "c-09", "kind": "charger", "rated_kw": 50}))
    power(fleet, clock, "c-09", -40.0)
    assert counts(fleet, "acme/south/delta") == (1, 1, -40.0, 50.0)
    assert counts(fleet, "acme/south") == (2, 1, -40.0, 60.0)
    assert fleet.asset("c-09").site == "acme/south/delta"
    assert_consistent(fleet)


# -- decommissioning -------------------------------------------------------------------------


def test_a_decommissioned_asset_is_no_longer_expected_anywhere(fleet: Fleet, clock: VirtualClock
                                                               ) -> None:
    power(fleet, clock, "t-01", 2100.0)
    power(fleet, clock, "b-01", 100.0)
    fleet.apply(DecommissionAsset("t-01"))
    assert counts(fleet, "acme/north/alpha") == (2, 1, 100.0, 5150.0)
    assert counts(fleet, "grid/ercot") == (3, 1, 100.0, 5160.0)
    assert counts(fleet, "acme") == (4, 1, 100.0, 7160.0)
    assert "t-01" not in fleet.rollup("acme").missing
    with pytest.raises(UnknownAsset, match=r"'t-01'.*decommissioned"):
        fleet.asset("t-01")
    assert fleet.transitions()[-1][1:4] == ("t-01", "online", "decommissioned")
    report = fleet.ingest([Sample("t-01", clock.now() + 1, {"power_kw": 1.0})])
    assert (report.rejected, report.errors[0].field) == (1, "asset_id")
    assert_consistent(fleet)


def test_decommissioning_a_direct_group_member_shrinks_the_group(fleet: Fleet) -> None:
    fleet.apply(DecommissionAsset("b-02"))
    assert counts(fleet, "grid/ercot") == (3, 0, 0.0, 8150.0)
    assert fleet.rollup("acme/south/beta").expected == 0
    assert_consistent(fleet)


# -- moving assets ---------------------------------------------------------------------------


def test_a_moved_asset_keeps_its_state_and_power_in_its_new_site(
        fleet: Fleet, clock: VirtualClock) -> None:
    shard_of = fleet.placement     # with 2 shards this move crosses shards: check it does
    assert len({shard_of["alpha"], shard_of["gamma"]}) == fleet.metrics()["shards"]
    power(fleet, clock, "t-01", 2100.0)
    fleet.apply(MoveAsset("t-01", "gamma"))
    view = fleet.asset("t-01")
    assert (view.state, view.reported, view.site) == ("online", {"power_kw": 2100.0},
                                                       "acme/north/gamma")
    assert counts(fleet, "acme/north/gamma") == (2, 1, 2100.0, 5000.0)
    assert counts(fleet, "acme/north/alpha") == (2, 0, 0.0, 5150.0)
    assert counts(fleet, "acme/north") == (4, 1, 2100.0, 10150.0)
    assert_consistent(fleet)


def test_a_moved_asset_still_goes_offline_when_its_timeout_passes(
        fleet: Fleet, clock: VirtualClock) -> None:
    power(fleet, clock, "t-01", 2100.0)
    fleet.advance(10)
    fleet.apply(MoveAsset("t-01", "gamma"))
    fleet.advance(19.9)
    assert fleet.asset("t-01").state == "online"
    fleet.advance(0.1)
    assert fleet.asset("t-01").state == "offline"
    assert counts(fleet, "acme/north/gamma") == (2, 0, 0.0, 5000.0)
    assert_consistent(fleet)


def test_moving_a_direct_group_member_into_a_listed_site_does_not_count_it_twice(
        fleet: Fleet, clock: VirtualClock) -> None:
    power(fleet, clock, "b-02", 4.0)
    fleet.apply(MoveAsset("b-02", "alpha"))
    assert counts(fleet, "grid/ercot") == (4, 1, 4.0, 8160.0)
    assert counts(fleet, "acme/north/alpha") == (4, 1, 4.0, 8160.0)
    assert counts(fleet, "acme/south") == (0, 0, 0.0, 0.0)
    assert counts(fleet, "acme/north") == (5, 1, 4.0, 10160.0)
    assert_consistent(fleet)
    fleet.advance(1)
    power(fleet, clock, "b-02", 6.0)
    assert counts(fleet, "grid/ercot") == (4, 1, 6.0, 8160.0)


def test_moving_an_asset_out_of_a_listed_site_removes_it_from_the_group(
        fleet: Fleet, clock: VirtualClock) -> None:
    power(fleet, clock, "t-01", 2100.0)
    fleet.apply(MoveAsset("t-01", "acme/south/beta"))
    assert counts(fleet, "grid/ercot") == (3, 0, 0.0, 5160.0)
    assert "t-01" not in fleet.rollup("grid/ercot").missing
    assert counts(fleet, "acme/south") == (2, 1, 2100.0, 3010.0)
    assert_consistent(fleet)


def test_an_invalid_change_raises_and_changes_nothing(fleet: Fleet) -> None:
    with pytest.raises(ModelError, match="'t-01' is already in site 'alpha'"):
        fleet.apply(MoveAsset("t-01", "acme/north/alpha"))
    with pytest.raises(UnknownPath, match="'nowhere'"):
        fleet.apply(MoveAsset("t-01", "nowhere"))
    with pytest.raises(ModelError, match="duplicate asset id 't-02'"):
        fleet.apply(AddAsset("beta", {"id": "t-02", "kind": "turbine", "rated_kw": 1}))
    assert fleet.model.version == 0 and fleet.metrics()["model_changes"] == 0
    assert fleet.asset("t-01").site == "acme/north/alpha"
    assert_consistent(fleet)


# -- moving sites ----------------------------------------------------------------------------


def test_a_site_moved_to_another_region_takes_its_assets_and_their_power(
        fleet: Fleet, clock: VirtualClock) -> None:
    power(fleet, clock, "b-02", 4.0)
    fleet.apply(MoveSite("beta", "acme/north"))
    assert counts(fleet, "acme/north/beta") == (1, 1, 4.0, 10.0)
    assert counts(fleet, "acme/north") == (5, 1, 4.0, 10160.0)
    assert counts(fleet, "acme/south") == (0, 0, 0.0, 0.0)
    with pytest.raises(UnknownPath):
        fleet.rollup("acme/south/beta")
    assert fleet.asset("b-02").state == "online"
    assert_consistent(fleet)


def test_a_site_moved_to_another_owner_leaves_the_old_owners_totals(
        fleet: Fleet, clock: VirtualClock) -> None:
    power(fleet, clock, "b-02", 4.0)
    fleet.apply(AddOwner("zeta"))
    fleet.apply(AddRegion("zeta", "west"))
    assert counts(fleet, "zeta") == (0, 0, 0.0, 0.0)
    fleet.apply(MoveSite("beta", "zeta/west"))
    assert counts(fleet, "zeta") == (1, 1, 4.0, 10.0)
    assert counts(fleet, "zeta/west/beta") == (1, 1, 4.0, 10.0)
    assert counts(fleet, "acme") == (4, 0, 0.0, 10150.0)
    assert counts(fleet, "grid/ercot") == (4, 1, 4.0, 8160.0)    # b-02 is listed directly
    assert fleet.asset("b-02").site == "zeta/west/beta"
    assert_consistent(fleet)


def test_a_site_listed_in_a_group_by_path_stays_in_the_group_when_it_moves(
        fleet: Fleet, clock: VirtualClock) -> None:
    power(fleet, clock, "t-01", 2100.0)
    fleet.apply(MoveSite("alpha", "acme/south"))
    assert counts(fleet, "grid/ercot") == (4, 1, 2100.0, 8160.0)


# -- scheduled changes -----------------------------------------------------------------------


def test_a_future_change_waits_until_the_clock_reaches_it(fleet: Fleet, clock: VirtualClock
                                                          ) -> None:
    t0 = clock.now()
    move = MoveAsset("t-01", "gamma")
    pending = fleet.apply(move, effective=t0 + 100)
    assert pending == PendingChange(t0 + 100, move)
    assert fleet.pending_changes() == [pending]
    assert fleet.metrics()["pending_changes"] == 1
    fleet.advance(99)
    assert fleet.asset("t-01").site == "acme/north/alpha"
    assert fleet.model.version == 0
    fleet.advance(1)
    assert fleet.asset("t-01").site == "acme/north/gamma"
    assert fleet.pending_changes() == []
    assert fleet.model.history[-1].effective == t0 + 100
    assert_consistent(fleet)


def test_a_scheduled_change_that_became_invalid_is_counted_and_skipped(
        fleet: Fleet, clock: VirtualClock, logs: list[MutableMapping[str, Any]]) -> None:
    t0 = clock.now()
    fleet.apply(MoveAsset("t-01", "gamma"), effective=t0 + 100)
    fleet.apply(AddAsset("gamma", {"id": "t-04", "kind": "turbine", "rated_kw": 7}),
                effective=t0 + 200)
    fleet.apply(DecommissionAsset("t-01"), effective=t0 + 50)
    fleet.advance(300)
    assert fleet.metrics()["scheduled_change_failures"] == 1
    (failed,) = [e for e in logs if e["event"] == "scheduled_change_failed"]
    assert (failed["effective"], failed["reason"]) == (t0 + 100, "unknown asset 't-01' "
                                                       "(decommissioned)")
    assert fleet.model.version == 2                  # the decommission and the add
    assert counts(fleet, "acme/north/gamma") == (2, 0, 0.0, 2007.0)
    assert_consistent(fleet)


def test_a_change_with_a_wrongly_typed_field_is_refused_before_it_is_scheduled(
        fleet: Fleet, clock: VirtualClock) -> None:
    with pytest.raises(ModelError, match=r"MoveAsset.to_site: expected a non-empty string, got 7"):
        change_from_dict({"op": "move_asset", "asset": "t-01", "to_site": 7})
    assert fleet.pending_changes() == []


# -- history -------------------------------------------------------------------------------


def test_model_at_returns_the_model_as_it_was(fleet: Fleet, clock: VirtualClock) -> None:
    t0 = clock.now()
    fleet.advance(10)
    fleet.apply(MoveAsset("t-01", "gamma"))
    fleet.advance(10)
    fleet.apply(DecommissionAsset("b-01"))
    before, between, after = (fleet.model_at(t0 + t) for t in (5, 15, 25))
    assert before.asset("t-01").site == "alpha" and before.version == 0
    assert between.asset("t-01").site == "gamma" and between.version == 1
    assert between.asset("b-01").site == "alpha"
    assert fleet.model_at(t0 + 10).asset("t-01").site == "gamma"     # effective at once
    with pytest.raises(UnknownAsset, match="decommissioned"):
        after.asset("b-01")
    assert fleet.model.asset("t-01").site == "gamma"        # the live model is untouched
    assert "b-01" in before.assets and "b-01" not in fleet.model.assets


def test_model_at_undoes_a_site_move_that_named_the_site_by_path(
        fleet: Fleet, clock: VirtualClock) -> None:
    t0 = clock.now()
    fleet.advance(10)
    fleet.apply(MoveSite("acme/south/beta", "acme/north"))
    assert fleet.model_at(t0 + 5).site("beta").path == "acme/south/beta"


def test_a_change_effective_before_the_latest_recorded_one_is_refused(
        fleet: Fleet, clock: VirtualClock) -> None:
    t0 = clock.now()
    fleet.advance(20)
    fleet.apply(MoveAsset("t-01", "gamma"), effective=t0 + 10)
    assert fleet.model.history[-1].effective == t0 + 10
    with pytest.raises(ModelError, match="earlier than the latest recorded version"):
        fleet.apply(MoveAsset("t-02", "beta"), effective=t0 + 5)
    assert fleet.asset("t-02").site == "acme/north/gamma"
    assert fleet.model.version == 1


# -- changes from JSON -----------------------------------------------------------------------


def test_a_change_from_a_dict_applies_like_the_dataclass(fleet: Fleet, clock: VirtualClock
                                                        ) -> None:
    change = change_from_dict({"op": "move_asset", "asset": "t-01", "to_site": "beta"})
    assert change == MoveAsset("t-01", "beta")
    power(fleet, clock, "t-01", 50.0)
    fleet.apply(change)
    assert counts(fleet, "acme/south/beta") == (2, 1, 50.0, 3010.0)
    assert_consistent(fleet)


@pytest.mark.parametrize(("raw", "pattern"), [
    ({"op": "teleport_asset", "asset": "t-01"},
     r"change op 'teleport_asset' is unknown \(valid: add_owner, .*move_asset, move_site\)"),
    ({"asset": "t-01"}, r"an 'op' \(add_owner, .*\), got \{'asset': 't-01'\}"),
    ({"op": "move_asset", "asset": "t-01", "to": "beta"}, r"change 'move_asset': .*'to'"),
])
def test_a_malformed_change_dict_gets_a_clear_error(raw: dict[str, str], pattern: str) -> None:
    with pytest.raises(ModelError, match=pattern):
        change_from_dict(raw)
