"""Without a VirtualClock the fleet's own ticker fires timers: offline detection does not
wait for the next API call."""

from __future__ import annotations

import threading

from twin import Fleet, FleetModel, Rollup, Sample

START = 1767225600.0


class SettableClock:
    """A real-clock stand-in (not a VirtualClock, so the ticker thread runs) whose time the
    test sets, so nothing depends on how fast this machine is."""

    def __init__(self, now: float) -> None:
        self._now = now
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def set(self, now: float) -> None:
        with self._lock:
            self._now = now


def test_the_ticker_marks_a_silent_asset_offline_without_any_call(model: FleetModel) -> None:
    clock = SettableClock(START)
    went_offline = threading.Event()

    def watch(rollup: Rollup) -> None:
        if rollup.offline == 1:
            went_offline.set()

    with Fleet(model, clock=clock, tick_interval_s=0.005) as fleet:
        fleet.subscribe("acme/north/alpha", watch)
        fleet.ingest([Sample("t-01", START, {"power_kw": 1.0})])
        clock.set(START + 31)                 # no fleet call after this line
        assert went_offline.wait(timeout=10), "the ticker never fired the offline deadline"
        assert fleet.asset("t-01").state == "offline"


def test_close_stops_the_ticker_thread(model: FleetModel) -> None:
    before = {t.ident for t in threading.enumerate()}
    fleet = Fleet(model, clock=SettableClock(START), tick_interval_s=0.005)
    ticker = [t for t in threading.enumerate() if t.ident not in before and t.name == "twin-ticker"]
    assert len(ticker) == 1
    fleet.close()
    assert not ticker[0].is_alive()
