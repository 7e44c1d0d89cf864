"""The shard (``twin.runtime.shard``), driven directly: no Fleet, no Thespian, time given per call.

Rows in summaries are ``(unknown, online, offline, quarantined, power_w, capacity_w)`` per kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import msgpack
import pytest

from actors.asset import CommandAccepted, Unavailable
from actors.groups import LeafSummary
from supervisors import SupervisionPolicy
from twin.core.errors import InvalidCommand, UnknownAsset
from twin.core.kinds import Turbine, default_kinds
from twin.core.model import AssetSpec, FleetModel
from twin.core.samples import OUTCOMES, Sample
from twin.core.states import Transition
from twin.runtime.shard import Shard, ShardConfig, ShardOutput, partial_key, site_key
from twin.wire import pack_rows

T0 = 1767225600.0          # 2026-01-01T00:00:00Z
OFFLINE_AFTER = 30.0

# two restarts allowed per minute: the first at once, the second after 5 s; a third failure
# quarantines
ASSET_POLICY = SupervisionPolicy(max_restarts=2, within_s=60.0, backoff_base_s=5.0, jitter=0.0)
SITE_POLICY = SupervisionPolicy(max_restarts=3, within_s=600.0)


class Flaky(Turbine):
    """A turbine kind whose derive hook fails on a wind speed of exactly 13 m/s."""

    name = "flaky"

    def derive(self, spec: AssetSpec, reported: Mapping[str, Any], signals: Mapping[str, Any]
               ) -> Mapping[str, Any] | None:
        if signals.get("wind_speed_ms") == 13.0:
            raise ArithmeticError("unlucky wind")
        return None


def fleet_raw() -> dict[str, Any]:
    return {
        "defaults": {"report_interval_s": 10.0, "offline_after_s": OFFLINE_AFTER},
        "owners": [{"id": "acme", "regions": [{"id": "north", "sites": [
            {"id": "farm", "assets": [
                {"id": "t1", "kind": "turbine", "rated_kw": 3000.0},
                {"id": "t2", "kind": "turbine", "rated_kw": 2000.0},
                {"id": "f1", "kind": "flaky", "rated_kw": 1000.0}]},
            {"id": "yard", "assets": [
                {"id": "b1", "kind": "battery", "rated_kw": 5.0, "capacity_kwh": 13.5}]},
            {"id": "lot", "assets": []}]}]}],
        "groups": {"vpp": ["b1", "t2"]},
    }


def make_model() -> FleetModel:
    kinds = default_kinds.copy()
    kinds.register(Flaky())
    return FleetModel.from_dict(fleet_raw(), kinds=kinds)


def direct_groups(model: FleetModel) -> dict[str, list[str]]:
    direct: dict[str, list[str]] = {}
    for name in model.groups:
        for asset_id in model.group_coverage(name)[1]:
            direct.setdefault(asset_id, []).append(name)
    return direct


def make_shard(model: FleetModel, index: int = 0, sites: tuple[str, ...] | None = None
               ) -> Shard:
    """A shard holding ``sites`` (default: every site of ``model``) and their assets."""
    shard = Shard(ShardConfig(index, model.defaults, model.kinds, ASSET_POLICY, SITE_POLICY))
    chosen = sites if sites is not None else tuple(model.sites)
    for site_id in chosen:
        shard.add_site(site_id)
    shard.add_assets([s for s in model.assets.values() if s.site in chosen], direct_groups(model))
    shard.collect()                       # drop the first (build) summaries
    return shard


@pytest.fixture
def model() -> FleetModel:
    return make_model()


@pytest.fixture
def shard(model: FleetModel) -> Shard:
    return make_shard(model)


def power(asset_id: str, kw: float, ts: float) -> Sample:
    return Sample(asset_id, ts, {"power_kw": kw})


def by_key(out: ShardOutput) -> dict[str, LeafSummary]:
    keys = [s.key for s in out.summaries]
    assert len(keys) == len(set(keys)), f"a leaf was summarized twice in one output: {keys}"
    return {s.key: s for s in out.summaries}


def rows_of(shard: Shard) -> dict[str, dict[str, tuple[int, ...]]]:
    """Every leaf's rows as a full collect reports them."""
    return {s.key: dict(s.rows) for s in shard.collect(full=True).summaries}


def counts(out: ShardOutput) -> dict[str, int]:
    assert out.counts is not None
    return {name: n for name, n in zip(OUTCOMES, out.counts, strict=True) if n}


def views(shard: Shard) -> dict[str, dict[str, Any]]:
    return {asset_id: shard.asset_view(asset_id) for asset_id in sorted(shard.actors)}


# -- keys and building -------------------------------------------------------------------------


def test_leaf_keys_name_the_site_or_the_group_and_shard() -> None:
    assert site_key("farm") == "site:farm"
    assert partial_key("vpp", 3) == "partial:vpp@3"


def test_a_new_site_reports_a_first_summary_even_when_empty(model: FleetModel) -> None:
    shard = Shard(ShardConfig(0, model.defaults, model.kinds, ASSET_POLICY, SITE_POLICY))
    shard.add_site("lot")
    shard.add_site("lot")                     # adding a site twice changes nothing
    out = shard.collect()
    assert [(s.key, s.version, s.rows) for s in out.summaries] == [("site:lot", 1, {})]
    assert shard.collect().summaries == []


def test_added_assets_count_as_unknown_with_capacity_in_integer_watts(shard: Shard) -> None:
    rows = rows_of(shard)
    assert rows["site:farm"] == {"turbine": (2, 0, 0, 0, 0, 5_000_000),
                                 "flaky": (1, 0, 0, 0, 0, 1_000_000)}
    assert rows["site:yard"] == {"battery": (1, 0, 0, 0, 0, 5_000)}
    assert rows["site:lot"] == {}


def test_assets_listed_directly_by_a_group_also_feed_its_partial_leaf(shard: Shard) -> None:
    rows = rows_of(shard)
    assert rows[partial_key("vpp", 0)] == {"turbine": (1, 0, 0, 0, 0, 2_000_000),
                                           "battery": (1, 0, 0, 0, 0, 5_000)}


def test_a_full_collect_lists_every_leaf_with_its_missing_ids(shard: Shard) -> None:
    out = shard.collect(full=True)
    missing = {s.key: s.missing for s in out.summaries}
    assert missing == {
        "site:farm": (("site:farm", frozenset({"t1", "t2", "f1"})),),
        "site:yard": (("site:yard", frozenset({"b1"})),),
        "site:lot": (("site:lot", frozenset()),),
        "partial:vpp@0": (("partial:vpp@0", frozenset({"b1", "t2"})),)}


# -- ingest ------------------------------------------------------------------------------------


def test_a_valid_sample_brings_its_asset_online_and_adds_its_power(shard: Shard) -> None:
    out = shard.ingest(T0, [power("t1", 1500.0, T0 - 1)])
    assert counts(out) == {"accepted": 1}
    assert out.errors == []
    assert out.transitions == [Transition(T0, "t1", "unknown", "online", "sample")]
    summary = by_key(out)["site:farm"]
    assert summary.rows["turbine"] == (1, 1, 0, 0, 1_500_000, 5_000_000)
    assert summary.missing == (("site:farm", frozenset({"t2", "f1"})),)
    view = shard.asset_view("t1")
    assert (view["state"], view["reported"], view["last_seen"], view["last_sample_ts"],
            view["accepted"]) == ("online", {"power_kw": 1500.0}, T0, T0 - 1, 1)


def test_each_sample_gets_its_own_outcome_and_the_counts_sum_to_the_batch(shard: Shard) -> None:
    batch = [
        power("t1", 100.0, T0),                 # accepted
        power("t1", 200.0, T0),                 # duplicate: same device time
        power("t1", 300.0, T0 - 5),             # late: older than the newest
        power("t2", 100.0, T0 + 3600),          # future: beyond the allowed skew
        power("t2", 100.0, T0 - 40 * 86400),    # stale: beyond retention
        power("t2", 9e9, T0),                   # anomalous: beyond the turbine's bounds
        power("ghost", 1.0, T0),                # rejected: no such asset
        Sample("b1", T0, {"soc_pct": "full"}),  # rejected: wrong type
    ]
    out = shard.ingest(T0, batch, want_outcomes=True)
    assert out.outcomes is not None
    assert [OUTCOMES[code] for code in out.outcomes] == [
        "accepted", "duplicate", "late", "future", "stale", "anomalous", "rejected", "rejected"]
    assert counts(out) == {"accepted": 1, "duplicate": 1, "late": 1, "future": 1, "stale": 1,
                           "anomalous": 1, "rejected": 2}
    assert sum(out.counts or []) == len(batch)
    assert [(e.index, e.asset_id, e.field) for e in out.errors] == [
        (6, "ghost", "asset_id"), (7, "b1", "signals.soc_pct")]
    assert shard.asset_view("t1")["reported"] == {"power_kw": 100.0}
    assert shard.asset_view("t1")["quality"] == {"duplicate": 1, "late": 1}


def test_outcomes_are_left_out_unless_asked_for(shard: Shard) -> None:
    assert shard.ingest(T0, [power("t1", 1.0, T0)]).outcomes is None


def test_an_unknown_asset_is_rejected_by_its_position_in_the_callers_batch(shard: Shard
                                                                           ) -> None:
    out = shard.ingest(T0, [power("t1", 1.0, T0), power("nope", 1.0, T0)], indices=[4, 9])
    assert counts(out) == {"accepted": 1, "rejected": 1}
    (error,) = out.errors
    assert (error.index, error.asset_id, error.field, error.value) == (9, "nope", "asset_id",
                                                                       "nope")
    assert "unknown asset" in error.reason


def test_an_unhashable_asset_id_is_rejected_not_raised(shard: Shard) -> None:
    out = shard.ingest(T0, [Sample(cast(Any, ["t1"]), T0, {"power_kw": 1.0})])
    assert counts(out) == {"rejected": 1}
    assert out.errors[0].field == "asset_id"


def test_a_failing_handler_rejects_only_its_sample_and_the_asset_restarts(shard: Shard) -> None:
    out = shard.ingest(T0, [Sample("f1", T0, {"wind_speed_ms": 13.0}),
                            Sample("t1", T0, {"power_kw": 5.0})])
    assert counts(out) == {"accepted": 1, "rejected": 1}
    (error,) = out.errors
    assert (error.index, error.asset_id, error.field, error.value) == (0, "f1", "handler",
                                                                       "ArithmeticError")
    assert "unlucky wind" in error.reason
    view = shard.asset_view("f1")
    assert (view["state"], view["restarts"], view["accepted"]) == ("unknown", 1, 0)
    out = shard.ingest(T0 + 1, [Sample("f1", T0 + 1, {"wind_speed_ms": 12.0})])
    assert counts(out) == {"accepted": 1}


def test_packed_rows_are_ingested_exactly_like_the_samples_they_pack(model: FleetModel) -> None:
    batch = [power("t1", 100.0, T0), power("t1", 200.0, T0), power("ghost", 1.0, T0),
             Sample("b1", T0, {"soc_pct": 55.0}, seq=7), power("t2", 9e9, T0)]
    from_objects, from_rows = make_shard(model), make_shard(model)
    a = from_objects.ingest(T0, batch, [10, 11, 12, 13, 14], True)
    b = from_rows.ingest_rows(T0, pack_rows(batch), [10, 11, 12, 13, 14], True)
    assert (a.counts, a.errors, a.outcomes, a.transitions) == (
        b.counts, b.errors, b.outcomes, b.transitions)
    assert [(s.key, s.rows) for s in a.summaries] == [(s.key, s.rows) for s in b.summaries]
    assert views(from_objects) == views(from_rows)


# -- time --------------------------------------------------------------------------------------


def test_a_silent_asset_goes_offline_exactly_at_offline_after_s(shard: Shard) -> None:
    shard.ingest(T0, [power("t1", 700.0, T0)])
    assert shard.tick(T0 + OFFLINE_AFTER - 0.001).transitions == []
    assert shard.asset_view("t1")["state"] == "online"
    out = shard.tick(T0 + OFFLINE_AFTER)
    assert out.transitions == [Transition(T0 + OFFLINE_AFTER, "t1", "online", "offline",
                                          "silence")]
    farm = by_key(out)["site:farm"]
    assert farm.rows["turbine"] == (1, 0, 1, 0, 0, 5_000_000)
    assert farm.missing == (("site:farm", frozenset({"t1", "t2", "f1"})),)


def test_a_deadline_inside_a_wheel_bucket_fires_at_the_deadline_not_the_bucket(shard: Shard
                                                                               ) -> None:
    shard.ingest(T0 + 0.5, [power("t1", 1.0, T0)])
    assert shard.tick(T0 + 30.4).transitions == []     # same one-second bucket, not yet due
    assert [t.new for t in shard.tick(T0 + 30.5).transitions] == ["offline"]


def test_each_accepted_sample_pushes_the_offline_deadline_back(shard: Shard) -> None:
    shard.ingest(T0, [power("t1", 1.0, T0)])
    shard.ingest(T0 + 20, [power("t1", 2.0, T0 + 20)])
    assert shard.tick(T0 + 30).transitions == []
    assert [(t.at, t.new) for t in shard.tick(T0 + 50).transitions] == [(T0 + 50, "offline")]


def test_a_late_or_duplicate_sample_does_not_keep_an_asset_online(shard: Shard) -> None:
    shard.ingest(T0, [power("t1", 1.0, T0)])
    shard.ingest(T0 + 20, [power("t1", 2.0, T0), power("t1", 2.0, T0 - 1)])
    assert [t.new for t in shard.tick(T0 + 30).transitions] == ["offline"]


def test_an_offline_asset_comes_back_online_with_its_new_power(shard: Shard) -> None:
    shard.ingest(T0, [power("t1", 1.0, T0)])
    shard.tick(T0 + 60)
    out = shard.ingest(T0 + 61, [power("t1", 2.5, T0 + 61)])
    assert out.transitions == [Transition(T0 + 61, "t1", "offline", "online", "sample")]
    assert by_key(out)["site:farm"].rows["turbine"] == (1, 1, 0, 0, 2_500, 5_000_000)


def test_a_tick_with_nothing_due_changes_nothing(shard: Shard) -> None:
    out = shard.tick(T0 + 1000)
    assert (out.summaries, out.transitions) == ([], [])


# -- summaries ---------------------------------------------------------------------------------


def test_summary_versions_only_grow_and_each_summary_is_whole(shard: Shard) -> None:
    seen: dict[str, int] = {}
    outs = [shard.ingest(T0, [power("t1", 10.0, T0)]),
            shard.ingest(T0 + 1, [power("t1", 20.0, T0 + 1)]),
            shard.collect(full=True),
            shard.ingest(T0 + 2, [power("b1", 1.0, T0 + 2)]),
            shard.tick(T0 + 100),
            shard.collect(full=True)]
    for out in outs:
        for summary in out.summaries:
            assert summary.version > seen.get(summary.key, 0), summary
            seen[summary.key] = summary.version
    # the second sample's summary holds t1's whole power, not the 10 kW change
    assert by_key(outs[1])["site:farm"].rows["turbine"] == (1, 1, 0, 0, 20_000, 5_000_000)


def test_only_leaves_that_changed_are_summarized(shard: Shard) -> None:
    out = shard.ingest(T0, [power("b1", 1.0, T0)])
    assert sorted(by_key(out)) == ["partial:vpp@0", "site:yard"]
    assert shard.collect().summaries == []


def test_a_power_change_without_a_state_change_leaves_the_missing_set_out(shard: Shard) -> None:
    shard.ingest(T0, [power("t1", 1.0, T0)])
    out = shard.ingest(T0 + 1, [power("t1", 2.0, T0 + 1)])
    farm = by_key(out)["site:farm"]
    assert (farm.rows["turbine"][4], farm.missing) == (2_000, ())


def test_a_summary_does_not_change_when_the_tally_moves_on(shard: Shard) -> None:
    first = by_key(shard.ingest(T0, [power("t1", 1.0, T0)]))["site:farm"]
    shard.ingest(T0 + 1, [power("t1", 2.0, T0 + 1)])
    assert first.rows["turbine"] == (1, 1, 0, 0, 1_000, 5_000_000)


# -- commands, faults, quarantine --------------------------------------------------------------


def test_a_command_to_an_online_asset_sets_its_desired_view(shard: Shard) -> None:
    shard.ingest(T0, [power("t1", 1.0, T0)])
    out = shard.command(T0 + 1, "t1", {"power_limit_kw": 1000})
    assert out.reply == CommandAccepted("t1", {"power_limit_kw": 1000.0})
    assert shard.asset_view("t1")["desired"] == {"power_limit_kw": 1000.0}


def test_a_command_to_an_asset_not_online_is_answered_unavailable(shard: Shard) -> None:
    assert shard.command(T0, "t1", {"power_limit_kw": 1}).reply == Unavailable("t1", "unknown",
                                                                               None)
    shard.ingest(T0, [power("t1", 1.0, T0)])
    shard.tick(T0 + OFFLINE_AFTER)
    assert shard.command(T0 + 31, "t1", {"power_limit_kw": 1}).reply == Unavailable(
        "t1", "offline", T0)
    assert shard.asset_view("t1")["desired"] == {}


def test_an_invalid_command_is_a_reply_value_naming_the_field(shard: Shard) -> None:
    shard.ingest(T0, [power("t1", 1.0, T0)])
    reply = shard.command(T0, "t1", {"setpoint_kw": 1}).reply
    assert isinstance(reply, InvalidCommand)
    assert "'setpoint_kw'" in str(reply) and "power_limit_kw" in str(reply)
    view = shard.asset_view("t1")                     # not a failure of the actor
    assert (view["state"], view["restarts"], view["desired"]) == ("online", 0, {})


def test_calls_on_an_asset_the_shard_does_not_hold_raise_unknown_asset(shard: Shard) -> None:
    for call in (lambda: shard.command(T0, "ghost", {}), lambda: shard.asset_view("ghost"),
                 lambda: shard.inject_fault(T0, "ghost", "x"), lambda: shard.release(T0, "ghost"),
                 lambda: shard.decommission(T0, "ghost"), lambda: shard.export_asset(T0, "ghost")):
        with pytest.raises(UnknownAsset, match=r"'ghost' \(not on shard 0\)"):
            call()


def test_a_fault_restarts_the_asset_from_its_last_good_state(shard: Shard) -> None:
    shard.ingest(T0, [power("t1", 4.0, T0)])
    out = shard.inject_fault(T0 + 1, "t1", "chaos")
    assert out.transitions == []
    view = shard.asset_view("t1")
    assert (view["state"], view["restarts"], view["reported"]) == ("online", 1,
                                                                   {"power_kw": 4.0})
    assert shard.metrics()["failures"] == 1


def test_an_asset_waiting_out_its_restart_backoff_defers_samples_and_refuses_commands(
        shard: Shard) -> None:
    shard.ingest(T0, [power("t1", 4.0, T0)])
    shard.inject_fault(T0 + 1, "t1", "chaos")         # restarted at once
    shard.inject_fault(T0 + 2, "t1", "chaos")         # waits 5 s
    out = shard.ingest(T0 + 3, [power("t1", 6.0, T0 + 3)], want_outcomes=True)
    assert counts(out) == {"deferred": 1}
    assert shard.asset_view("t1")["pending"] == 1
    assert shard.command(T0 + 3, "t1", {"power_limit_kw": 1}).reply == Unavailable(
        "t1", "restarting", T0)
    shard.tick(T0 + 6.9)
    assert (shard.asset_view("t1")["restarts"], shard.asset_view("t1")["pending"]) == (1, 1)
    shard.tick(T0 + 7)
    view = shard.asset_view("t1")
    assert (view["restarts"], view["pending"], view["reported"]) == (2, 0, {"power_kw": 6.0})


def test_a_crash_loop_quarantines_and_release_makes_the_asset_unknown_again(
        shard: Shard) -> None:
    shard.ingest(T0, [power("t1", 4.0, T0)])
    shard.inject_fault(T0 + 1, "t1", "chaos")
    shard.inject_fault(T0 + 2, "t1", "chaos")
    shard.tick(T0 + 7)
    out = shard.inject_fault(T0 + 8, "t1", "chaos")
    (transition,) = out.transitions
    assert (transition.old, transition.new) == ("online", "quarantined")
    assert transition.reason.startswith("crash loop: RuntimeError: chaos")
    assert by_key(out)["site:farm"].rows["turbine"] == (1, 0, 0, 1, 0, 5_000_000)
    held = shard.ingest(T0 + 9, [power("t1", 1.0, T0 + 9)], want_outcomes=True)
    assert counts(held) == {"quarantined": 1}
    assert held.outcomes == bytearray([OUTCOMES.index("quarantined")])
    assert held.errors == []
    assert shard.command(T0 + 9, "t1", {"power_limit_kw": 1}).reply == Unavailable(
        "t1", "quarantined", T0)
    assert shard.tick(T0 + 100).transitions == []     # no offline deadline while quarantined
    released = shard.release(T0 + 101, "t1")
    assert [(t.old, t.new, t.reason) for t in released.transitions] == [
        ("quarantined", "unknown", "released")]
    assert counts(shard.ingest(T0 + 102, [power("t1", 2.0, T0 + 102)])) == {"accepted": 1}
    assert shard.asset_view("t1")["state"] == "online"


# -- model changes -----------------------------------------------------------------------------


def test_a_decommissioned_asset_leaves_its_tallies_and_the_shard(shard: Shard) -> None:
    shard.ingest(T0, [power("t2", 300.0, T0)])
    out = shard.decommission(T0 + 1, "t2")
    assert out.transitions == [Transition(T0 + 1, "t2", "online", "decommissioned",
                                          "decommissioned")]
    leaves = by_key(out)
    assert leaves["site:farm"].rows == {"turbine": (1, 0, 0, 0, 0, 3_000_000),
                                        "flaky": (1, 0, 0, 0, 0, 1_000_000)}
    assert leaves["partial:vpp@0"].rows == {"battery": (1, 0, 0, 0, 0, 5_000)}
    assert counts(shard.ingest(T0 + 2, [power("t2", 1.0, T0 + 2)])) == {"rejected": 1}
    assert shard.tick(T0 + 100).transitions == []     # its deadline went with it
    with pytest.raises(UnknownAsset):
        shard.asset_view("t2")


def test_a_local_move_carries_state_and_power_to_the_new_site(shard: Shard,
                                                              model: FleetModel) -> None:
    shard.ingest(T0, [power("t1", 800.0, T0)])
    moved = AssetSpec("t1", "turbine", 3000.0, "lot", report_interval_s=10.0,
                      offline_after_s=OFFLINE_AFTER)
    out = shard.move_local(T0 + 1, moved, ["vpp"])
    assert out.transitions == []
    leaves = by_key(out)
    assert leaves["site:farm"].rows == {"turbine": (1, 0, 0, 0, 0, 2_000_000),
                                        "flaky": (1, 0, 0, 0, 0, 1_000_000)}
    assert leaves["site:lot"].rows == {"turbine": (0, 1, 0, 0, 800_000, 3_000_000)}
    assert leaves["partial:vpp@0"].rows["turbine"] == (1, 1, 0, 0, 800_000, 5_000_000)
    assert shard.asset_view("t1")["state"] == "online"
    assert [t.new for t in shard.tick(T0 + OFFLINE_AFTER).transitions] == ["offline"]
    assert rows_of(shard)["site:lot"] == {"turbine": (0, 0, 1, 0, 0, 3_000_000)}


def test_an_exported_asset_continues_on_the_shard_that_imports_it(model: FleetModel) -> None:
    source = make_shard(model, 0, ("farm", "yard", "lot"))
    target = make_shard(model, 1, ("lot",))
    source.ingest(T0, [power("t1", 900.0, T0)])
    source.ingest(T0 + 1, [power("t1", 950.0, T0 + 1), power("t1", 1.0, T0)])
    before = source.asset_view("t1")
    exported = source.export_asset(T0 + 2, "t1")
    assert "t1" not in source.actors
    assert by_key(exported)["site:farm"].rows["turbine"] == (1, 0, 0, 0, 0, 2_000_000)
    saved = msgpack.unpackb(msgpack.packb(exported.reply))      # it crosses processes
    spec = AssetSpec("t1", "turbine", 3000.0, "lot", report_interval_s=10.0,
                     offline_after_s=OFFLINE_AFTER)
    out = target.import_asset(T0 + 2, spec, saved, ["vpp"])
    assert out.transitions == []
    assert target.asset_view("t1") == before
    assert by_key(out)["site:lot"].rows == {"turbine": (0, 1, 0, 0, 950_000, 3_000_000)}
    assert by_key(out)["partial:vpp@1"].rows == {"turbine": (0, 1, 0, 0, 950_000, 3_000_000)}
    # its offline deadline moved with it: still measured from its last sample
    assert source.tick(T0 + 100).transitions == []
    assert [(t.at, t.asset_id, t.new) for t in target.tick(T0 + 31).transitions] == [
        (T0 + 31, "t1", "offline")]


def test_a_sample_waiting_in_a_restarting_actor_is_applied_where_the_asset_moves(
        model: FleetModel) -> None:
    source = make_shard(model, 0)
    target = make_shard(model, 1, ("lot",))
    source.ingest(T0, [power("t1", 1.0, T0)])
    source.inject_fault(T0 + 1, "t1", "chaos")
    source.inject_fault(T0 + 2, "t1", "chaos")        # now waiting out a backoff
    assert counts(source.ingest(T0 + 3, [power("t1", 7.0, T0 + 3)])) == {"deferred": 1}
    saved = source.export_asset(T0 + 4, "t1").reply
    spec = AssetSpec("t1", "turbine", 3000.0, "lot", offline_after_s=OFFLINE_AFTER)
    target.import_asset(T0 + 4, spec, saved, [])
    view = target.asset_view("t1")
    assert (view["reported"], view["last_sample_ts"], view["pending"]) == (
        {"power_kw": 7.0}, T0 + 3, 0)
    assert source.tick(T0 + 10).transitions == []     # the old backoff timer touches nothing


# -- snapshots and replay ----------------------------------------------------------------------


def busy_shard(model: FleetModel) -> Shard:
    """A shard whose assets are online, offline, quarantined, unknown, with commands."""
    shard = make_shard(model)
    shard.ingest(T0, [power("t1", 1.0, T0), power("t2", 2.0, T0), power("b1", -3.0, T0)])
    shard.command(T0 + 1, "b1", {"setpoint_kw": 2.5})
    shard.tick(T0 + OFFLINE_AFTER)                                 # all three offline
    shard.ingest(T0 + 40, [power("t1", 11.0, T0 + 40), power("t1", 5.0, T0 + 39),
                           power("b1", 9e9, T0 + 40)])
    for at in (41, 42, 47):                                        # t2 ends quarantined
        shard.tick(T0 + at)
        shard.inject_fault(T0 + at, "t2", "chaos")
    return shard


def test_a_snapshot_restored_on_a_new_shard_gives_the_same_assets_and_leaves(
        model: FleetModel) -> None:
    original = busy_shard(model)
    assert {v["state"] for v in views(original).values()} == {"online", "offline",
                                                               "quarantined", "unknown"}
    rows = msgpack.unpackb(msgpack.packb(original.snapshot()))    # msgpack-ready
    fresh = make_shard(model)
    out = fresh.restore(T0 + 50, rows)
    assert out.transitions == []                  # restored, not happening now
    assert views(fresh) == views(original)
    assert rows_of(fresh) == rows_of(original)


def test_a_restored_shard_keeps_running_the_state_machine(model: FleetModel) -> None:
    fresh = make_shard(model)
    fresh.restore(T0 + 50, busy_shard(model).snapshot())
    assert [(t.asset_id, t.new) for t in fresh.tick(T0 + 70).transitions] == [("t1", "offline")]
    assert counts(fresh.ingest(T0 + 71, [power("t2", 1.0, T0 + 71)])) == {"quarantined": 1}
    assert fresh.release(T0 + 72, "t2").transitions[0].new == "unknown"


def test_a_sample_waiting_at_snapshot_time_is_applied_on_restore(model: FleetModel) -> None:
    original = make_shard(model)
    original.ingest(T0, [power("t1", 1.0, T0)])
    original.inject_fault(T0 + 1, "t1", "chaos")
    original.inject_fault(T0 + 2, "t1", "chaos")            # waiting out a backoff
    original.ingest(T0 + 3, [power("t1", 8.0, T0 + 3), power("f1", 1.0, T0 + 3)])
    rows = original.snapshot()
    assert rows["t1"][-1] == [["t1", T0 + 3, None, {"power_kw": 8.0}]]
    fresh = make_shard(model)
    out = fresh.restore(T0 + 4, rows)
    assert out.transitions == []     # no state changes: t1 was online, f1 online before
    view = fresh.asset_view("t1")
    assert (view["reported"], view["pending"], view["accepted"]) == ({"power_kw": 8.0}, 0, 2)
    assert rows_of(fresh)["site:farm"]["flaky"] == (0, 1, 0, 0, 1_000, 1_000_000)


def test_restore_ignores_rows_of_assets_the_shard_does_not_hold(model: FleetModel) -> None:
    rows = busy_shard(model).snapshot()
    yard_only = make_shard(model, 0, ("yard",))
    yard_only.restore(T0 + 50, rows)
    assert sorted(yard_only.actors) == ["b1"]
    assert yard_only.asset_view("b1")["desired"] == {"setpoint_kw": 2.5}


def test_replaying_logged_batches_rebuilds_what_ingesting_them_did(model: FleetModel) -> None:
    batches = [(T0, [power("t1", 1.0, T0), power("ghost", 1.0, T0)]),
               (T0 + 10, [power("t1", 2.0, T0 + 10), power("b1", 1.0, T0 + 9)]),
               (T0 + 60, [power("b1", 2.0, T0 + 60), power("b1", 2.0, T0 + 60)])]
    live = make_shard(model)
    outcomes: list[bytes] = []
    transitions: list[Transition] = []
    for at, samples in batches:
        transitions += live.tick(at).transitions
        out = live.ingest(at, samples, want_outcomes=True)
        outcomes.append(bytes(out.outcomes or b""))
        transitions += out.transitions
    replayed = make_shard(model)
    out = replayed.replay([(at, pack_rows(samples)) for at, samples in batches])
    assert out.reply == outcomes
    assert out.transitions == transitions
    assert ("t1", "offline") in [(t.asset_id, t.new) for t in transitions]
    assert views(replayed) == views(live)
    assert rows_of(replayed) == rows_of(live)


def test_a_replay_reports_every_leaf_it_changed_so_the_tree_needs_no_full_collect(
        model: FleetModel) -> None:
    batches = [(T0, [power("t1", 1.0, T0), power("b1", 3.0, T0)]),
               (T0 + 60, [power("b1", 2.0, T0 + 60)])]
    replayed = make_shard(model)
    replayed.collect(full=True)                       # the first summaries, already sent
    out = replayed.replay([(at, pack_rows(samples)) for at, samples in batches])
    newest: dict[str, dict[str, tuple[int, ...]]] = {}
    for summary in out.summaries:                     # oldest first: the newest one stays
        newest[summary.key] = dict(summary.rows)
    assert newest and all(rows_of(replayed)[key] == rows for key, rows in newest.items())
