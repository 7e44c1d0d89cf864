"""Leaf tallies and group actors (``actors.groups``) on a bare ``actors.Kernel``.

Rows are ``(unknown, online, offline, quarantined, power_w, capacity_w)`` per kind.
"""

from __future__ import annotations

from typing import Any

import pytest

from actors import Actor, Kernel
from actors.groups import Flush, GroupActor, LeafSummary, LeafTally, RemoveChild
from twin.core.rollup import ROW_WIDTH, Row
from twin.core.states import OFFLINE, ONLINE, QUARANTINED, UNKNOWN


class RecordingGroup(GroupActor):
    """A group actor that also keeps every summary it receives (to see what was sent up)."""

    def __init__(self, key: str, kernel: Kernel, changes: list[GroupActor]) -> None:
        super().__init__(key, key, "region", kernel, changes.append)
        self.received: list[LeafSummary] = []

    def receive(self, message: Any) -> None:
        if isinstance(message, LeafSummary):
            self.received.append(message)
        super().receive(message)


class FailureLog:
    def __init__(self) -> None:
        self.failures: list[tuple[Actor, Any, BaseException]] = []

    def child_failed(self, child: Actor, message: Any, error: BaseException) -> None:
        self.failures.append((child, message, error))


@pytest.fixture
def kernel() -> Kernel:
    return Kernel()


@pytest.fixture
def changes() -> list[GroupActor]:
    return []


@pytest.fixture
def site(kernel: Kernel, changes: list[GroupActor]) -> GroupActor:
    return GroupActor("sitenode:farm", "acme/north/farm", "site", kernel, changes.append)


@pytest.fixture
def region(kernel: Kernel, changes: list[GroupActor], site: GroupActor) -> RecordingGroup:
    parent = RecordingGroup("acme/north", kernel, changes)
    site.parents = [parent]
    return parent


def row(unknown: int = 0, online: int = 0, offline: int = 0, quarantined: int = 0,
        power_w: int = 0, capacity_w: int = 0) -> Row:
    return (unknown, online, offline, quarantined, power_w, capacity_w)


def leaf(key: str, version: int, rows: dict[str, Row], missing: set[str] | None = None
         ) -> LeafSummary:
    parts = () if missing is None else ((key, frozenset(missing)),)
    return LeafSummary(key, version, rows, parts)


def send(kernel: Kernel, actor: Actor, *messages: Any) -> None:
    for message in messages:
        kernel.tell(actor, message)
    kernel.run()


# -- LeafTally ---------------------------------------------------------------------------------


def test_a_tally_counts_assets_by_kind_and_state_with_capacity_in_watts() -> None:
    tally = LeafTally("site:farm", [])
    tally.add("turbine", "t1", UNKNOWN, 0, 3_000_000)
    tally.add("turbine", "t2", ONLINE, 1_234_567, 3_000_000)
    tally.add("turbine", "t3", OFFLINE, 99, 2_000_000)
    tally.add("battery", "b1", QUARANTINED, 0, 5_000)
    assert {k: tuple(r) for k, r in tally.rows.items()} == {
        "turbine": row(1, 1, 1, 0, 1_234_567, 8_000_000),   # only online power counts
        "battery": row(quarantined=1, capacity_w=5_000)}
    assert tally.missing == {"t1", "t3", "b1"}


def test_a_tally_joins_its_shards_changed_list_once_until_summarized() -> None:
    sink: list[LeafTally] = []
    tally = LeafTally("site:farm", sink)
    tally.add("turbine", "t1", UNKNOWN, 0, 1_000)
    tally.add("turbine", "t2", UNKNOWN, 0, 1_000)
    tally.mark()
    assert sink == [tally]
    tally.summary()
    tally.transition("turbine", "t1", UNKNOWN, ONLINE, 10)
    assert sink == [tally, tally]


def test_going_offline_takes_the_power_out_and_lists_the_asset_missing() -> None:
    tally = LeafTally("site:farm", [])
    tally.add("turbine", "t1", ONLINE, 500_000, 3_000_000)
    tally.transition("turbine", "t1", ONLINE, OFFLINE, 500_000)
    assert (tuple(tally.rows["turbine"]), tally.missing) == (row(offline=1,
                                                                 capacity_w=3_000_000), {"t1"})
    tally.transition("turbine", "t1", OFFLINE, ONLINE, 700_000)
    assert (tuple(tally.rows["turbine"]), tally.missing) == (
        row(online=1, power_w=700_000, capacity_w=3_000_000), set())


def test_removing_the_last_asset_of_a_kind_drops_its_row() -> None:
    tally = LeafTally("site:farm", [])
    tally.add("turbine", "t1", OFFLINE, 0, 3_000_000)
    tally.add("battery", "b1", ONLINE, -2_000, 5_000)
    tally.remove("turbine", "t1", OFFLINE, 0, 3_000_000)
    tally.remove("battery", "b1", ONLINE, -2_000, 5_000)
    assert (tally.rows, tally.missing) == ({}, set())


def test_a_summary_is_a_whole_versioned_copy_of_the_tally() -> None:
    tally = LeafTally("site:farm", [])
    tally.add("turbine", "t1", ONLINE, 1_000, 3_000_000)
    first = tally.summary()
    tally.transition("turbine", "t1", ONLINE, OFFLINE, 1_000)
    second = tally.summary()
    assert (first.key, first.version, first.rows) == (
        "site:farm", 1, {"turbine": row(online=1, power_w=1_000, capacity_w=3_000_000)})
    assert (second.version, second.rows) == (2, {"turbine": row(offline=1,
                                                                capacity_w=3_000_000)})
    assert not tally.dirty


def test_a_summary_carries_the_missing_set_only_when_it_changed_or_when_full() -> None:
    tally = LeafTally("site:farm", [])
    tally.add("turbine", "t1", UNKNOWN, 0, 3_000_000)
    tally.add("turbine", "t2", ONLINE, 5, 3_000_000)
    assert tally.summary().missing == (("site:farm", frozenset({"t1"})),)
    tally.rows["turbine"][4] += 10         # a power change, as an asset actor makes it
    tally.mark()
    assert tally.summary().missing == ()
    assert tally.summary(full=True).missing == (("site:farm", frozenset({"t1"})),)


# -- GroupActor --------------------------------------------------------------------------------


def test_a_group_sums_its_childrens_rows_by_kind(kernel: Kernel, site: GroupActor) -> None:
    send(kernel, site,
         leaf("site:farm", 1, {"turbine": row(0, 2, 1, 0, 4_000_000, 9_000_000)}, {"t3"}),
         leaf("partial:x@0", 1, {"turbine": row(1, 0, 0, 0, 0, 3_000_000),
                                 "battery": row(0, 1, 0, 0, -2_500, 5_000)}, {"t9"}))
    snap = site.snapshot()
    assert snap.kinds["turbine"].counts() == {
        "expected": 4, "reporting": 2, "offline": 1, "unknown": 1, "quarantined": 0,
        "power_kw": 4000.0, "capacity_kw": 12000.0}
    assert (snap.expected, snap.reporting, snap.power_kw, snap.capacity_kw) == (
        5, 3, 3997.5, 12005.0)
    assert snap.missing == ("t3", "t9")


def test_summaries_in_one_round_coalesce_into_one_flush(
        kernel: Kernel, site: GroupActor, region: RecordingGroup,
        changes: list[GroupActor]) -> None:
    send(kernel, site, *[leaf(f"site:{n}", 1, {"turbine": row(online=1, power_w=n)})
                         for n in range(5)])
    assert [s.version for s in region.received] == [1]
    assert region.received[0].rows == {"turbine": row(online=5, power_w=10)}
    assert changes == [site, region]          # each node flushed once
    send(kernel, site, leaf("site:0", 2, {"turbine": row(offline=1)}))
    assert [s.version for s in region.received] == [1, 2]


def test_a_newer_summary_replaces_the_childs_previous_one(kernel: Kernel,
                                                          site: GroupActor) -> None:
    send(kernel, site, leaf("site:farm", 1, {"turbine": row(online=2, power_w=6_000)}))
    send(kernel, site, leaf("site:farm", 2, {"turbine": row(online=1, offline=1,
                                                            power_w=2_500)}))
    assert site.rows == {"turbine": [0, 1, 1, 0, 2_500, 0]}


def test_a_duplicate_or_older_summary_is_ignored(kernel: Kernel, site: GroupActor,
                                                 region: RecordingGroup,
                                                 changes: list[GroupActor]) -> None:
    current = leaf("site:farm", 3, {"turbine": row(online=1, power_w=100)}, set())
    send(kernel, site, current)
    changes.clear()
    send(kernel, site, current, leaf("site:farm", 2, {"turbine": row(offline=1)}, {"t1"}))
    assert site.rows == {"turbine": [0, 1, 0, 0, 100, 0]}
    assert (site.missing_parts, changes, len(region.received)) == ({"site:farm": frozenset()},
                                                                   [], 1)


def test_a_version_already_seen_is_a_duplicate_whatever_it_says(kernel: Kernel,
                                                                 site: GroupActor) -> None:
    send(kernel, site, leaf("site:farm", 1, {"turbine": row(online=1)}, set()),
         leaf("site:farm", 1, {"turbine": row(offline=1)}, {"t1"}))
    assert (site.rows, site.snapshot().missing) == ({"turbine": [0, 1, 0, 0, 0, 0]}, ())


def test_a_summary_without_news_does_not_flush(kernel: Kernel, site: GroupActor,
                                               changes: list[GroupActor]) -> None:
    send(kernel, site, leaf("site:farm", 1, {"turbine": row(online=1)}, set()))
    changes.clear()
    send(kernel, site, leaf("site:farm", 2, {"turbine": row(online=1)}),
         leaf("site:farm", 3, {"turbine": row(online=1)}, set()))
    assert changes == []


def test_a_removed_child_takes_its_counts_and_missing_ids_with_it(
        kernel: Kernel, site: GroupActor) -> None:
    send(kernel, site, leaf("site:a", 4, {"turbine": row(unknown=1, capacity_w=7)}, {"t1"}),
         leaf("site:b", 1, {"turbine": row(online=1, power_w=3, capacity_w=7)}, set()))
    send(kernel, site, RemoveChild("site:a"))
    assert (site.rows, site.snapshot().missing) == ({"turbine": [0, 1, 0, 0, 3, 7]}, ())
    # it may come back with its versions starting over
    send(kernel, site, leaf("site:a", 1, {"battery": row(offline=1)}, {"b1"}))
    assert site.snapshot().missing == ("b1",)
    assert site.snapshot().expected == 2


def test_a_leaf_whose_missing_part_is_none_is_gone_from_the_missing_ids(
        kernel: Kernel, site: GroupActor) -> None:
    send(kernel, site, leaf("site:a", 1, {}, {"t1"}))
    send(kernel, site, LeafSummary("site:a", 2, {}, (("site:a", None),)))
    assert (site.missing_parts, site.snapshot().missing) == ({}, ())


def test_a_group_passes_changed_missing_parts_up_and_all_of_them_on_a_full_flush(
        kernel: Kernel, site: GroupActor, region: RecordingGroup) -> None:
    send(kernel, site, leaf("site:a", 1, {}, {"t1"}), leaf("site:b", 1, {}, {"t2"}))
    send(kernel, site, leaf("site:a", 2, {}, {"t1", "t3"}))
    assert [dict(s.missing) for s in region.received] == [
        {"site:a": frozenset({"t1"}), "site:b": frozenset({"t2"})},
        {"site:a": frozenset({"t1", "t3"})}]
    assert region.snapshot().missing == ("t1", "t2", "t3")
    site.request_full_flush()
    kernel.run()
    assert dict(region.received[-1].missing) == {"site:a": frozenset({"t1", "t3"}),
                                                 "site:b": frozenset({"t2"})}
    send(kernel, site, Flush(full=True))
    assert len(region.received) == 4


def test_removing_a_group_from_its_parent_forgets_the_leaves_below_it(
        kernel: Kernel, site: GroupActor, region: RecordingGroup) -> None:
    send(kernel, site, leaf("site:a", 1, {"turbine": row(unknown=1)}, {"t1"}))
    assert region.snapshot().missing == ("t1",)
    send(kernel, region, RemoveChild(site.key))
    snap = region.snapshot()
    assert (snap.expected, snap.missing, region.rows) == (0, (), {})


def test_a_snapshot_is_cached_until_the_next_change(kernel: Kernel, site: GroupActor) -> None:
    send(kernel, site, leaf("site:a", 1, {"turbine": row(online=1)}))
    first = site.snapshot()
    assert site.snapshot() is first
    send(kernel, site, leaf("site:a", 2, {"turbine": row(offline=1)}))
    assert site.snapshot() is not first
    assert (first.reporting, site.snapshot().offline) == (1, 1)


def test_rows_stay_exact_integers_over_many_replacements(kernel: Kernel,
                                                         site: GroupActor) -> None:
    for v in range(1, 200):
        send(kernel, site, leaf("site:a", v, {"battery": row(online=1, power_w=v * 7 - 500)}),
             leaf("site:b", v, {"battery": row(online=1, power_w=-v * 7)}))
    assert site.rows == {"battery": [0, 2, 0, 0, -500, 0]}
    assert all(type(x) is int for x in site.rows["battery"])
    assert len(site.rows["battery"]) == ROW_WIDTH


def test_a_message_outside_the_protocol_goes_to_the_supervisor(kernel: Kernel,
                                                               site: GroupActor) -> None:
    log = FailureLog()
    site.supervisor = log
    send(kernel, site, "hello")
    ((child, message, error),) = log.failures
    assert (child, message, type(error)) == (site, "hello", TypeError)
    assert "GroupActor does not handle str" in str(error)
