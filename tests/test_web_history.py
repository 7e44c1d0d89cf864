"""Sparkline history: sampled on the fleet's clock, carried forward, bounded."""

from __future__ import annotations

import pytest

from twin import Fleet, FleetModel, Sample, VirtualClock
from twin.web import History
from twin.web.history import Point

T0 = 1767225600.0


def test_the_latest_value_of_a_bucket_wins() -> None:
    history = History(step_s=10, points=6)
    history.record_values("s", T0 + 1, 1.0, 1, 3)
    history.record_values("s", T0 + 9, 2.0, 2, 3)
    assert history.series("s", T0 + 9) == [Point(T0, 2.0, 2, 3)]


def test_a_quiet_node_carries_its_last_value_forward_to_now() -> None:
    history = History(step_s=10, points=6)
    history.record_values("s", T0, 5.0, 3, 3)
    history.record_values("s", T0 + 30, 4.0, 2, 3)
    assert [p.t - T0 for p in history.series("s", T0 + 50)] == [0, 10, 20, 30, 40, 50]
    assert [p.power_kw for p in history.series("s", T0 + 50)] == [5, 5, 5, 4, 4, 4]


def test_a_buffer_never_holds_more_than_its_points_however_long_the_gap() -> None:
    history = History(step_s=10, points=6)
    history.record_values("s", T0, 1.0, 1, 1)
    history.record_values("s", T0 + 86400 * 365, 2.0, 0, 1)     # a year of silence
    series = history.series("s", T0 + 86400 * 365 + 1000)
    assert len(series) == 6
    assert series[-1].t == history.bucket(T0 + 86400 * 365 + 1000)
    assert all(p.power_kw == 2.0 for p in series)


def test_values_older_than_the_newest_bucket_are_ignored() -> None:
    history = History(step_s=10, points=6)
    history.record_values("s", T0 + 20, 1.0, 1, 1)
    history.record_values("s", T0, 9.0, 1, 1)
    assert history.series("s", T0 + 20) == [Point(T0 + 20, 1.0, 1, 1)]


def test_bad_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"step_s.*-1"):
        History(step_s=-1)
    with pytest.raises(ValueError, match=r"points.*got 1"):
        History(points=1)


def test_a_fleet_in_virtual_time_fills_the_sparkline_as_time_moves(
        model: FleetModel, clock: VirtualClock) -> None:
    history = History(step_s=10, points=60)
    with Fleet(model, clock=clock) as fleet:
        fleet.subscribe("acme/north/alpha", history.record)
        for minute in range(3):
            fleet.ingest([Sample("t-01", clock.now(), {"power_kw": 100.0 * (minute + 1)})])
            fleet.advance(60)
        series = history.series("acme/north/alpha", clock.now())
    assert series[0].t == clock.now() - 180
    assert len(series) == 19
    powers = [p.power_kw for p in series]
    assert powers[0] == 100.0 and 200.0 in powers and 300.0 in powers
    assert series[-1].reporting == 0        # silent for 60 s > offline_after_s: offline now
