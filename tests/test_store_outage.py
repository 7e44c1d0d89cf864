"""A database outage leaves reads, subscriptions and timers alone (issue 10, defect 3).

The database is a PostgreSQL server of the test's own (the ``private_pg`` fixture of
``conftest.py``, from :mod:`pg_private`), stopped and started again while a client keeps
sending batches and re-sending the refused ones. Fleet time is a VirtualClock moved by the
test, so "the timers fire on time" is exact; real time only bounds how long a read or a
round of timers may take.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from pg_private import PrivatePostgres
from sqlalchemy import create_engine, text

from tests.polling import wait_until
from twin import (
    Fleet,
    FleetModel,
    Rollup,
    Sample,
    StoreBusy,
    StoreUnavailable,
    VirtualClock,
)
from twin.store.writer_process import DriverLog
from twin.testing import assert_consistent, capture_logs, fleet_dict
from twin.wire import pack_batch, unpack_batch

pytestmark = pytest.mark.slow

START = 1767225600.0
OFFLINE_AFTER_S = 30.0
READ_WITHIN_S = 0.1          # the bound for rollup() during the outage
TIMERS_WITHIN_S = 1.0        # a round of timers (fleet.advance) during the outage
OUTAGE_WAIT_S = 30.0         # a database restart on a busy machine
SILENT_SITE = "o1-r0-s1"     # its assets report once, at START, and never again


class Client(threading.Thread):
    """Sends a batch of every reporting asset's sample in a loop, as a gateway would;
    re-sends a refused batch until it is acknowledged. Batch ``k`` carries device time
    ``START + k / 1000``, so each acknowledged sample is new and accepted."""

    def __init__(self, fleet: Fleet, assets: list[str]) -> None:
        super().__init__(name="client")
        self.fleet = fleet
        self.assets = assets
        self.stop = threading.Event()
        self.acknowledged: list[bytes] = []
        self.refused = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        k = 0
        while not self.stop.is_set():
            k += 1
            ts = START + k / 1000
            payload = pack_batch([Sample(a, ts, {"power_kw": 0.001}) for a in self.assets],
                                 "gateway")
            while not self.stop.is_set():
                try:
                    self.fleet.ingest(payload)
                except (StoreBusy, StoreUnavailable):
                    self.refused += 1
                    self.stop.wait(0.01)
                    continue
                except Exception as error:    # any other error fails the test
                    self.errors.append(error)
                    return
                self.acknowledged.append(payload)
                break


class Reader(threading.Thread):
    """Asks for a roll-up every few milliseconds and keeps the slowest answer."""

    def __init__(self, fleet: Fleet, path: str) -> None:
        super().__init__(name="reader")
        self.fleet, self.path = fleet, path
        self.stop = threading.Event()
        self.slowest = 0.0
        self.reads = 0

    def run(self) -> None:
        while not self.stop.wait(0.003):
            started = time.perf_counter()
            self.fleet.rollup(self.path)
            self.slowest = max(self.slowest, time.perf_counter() - started)
            self.reads += 1


def test_a_database_outage_leaves_reads_and_timers_alone_and_loses_nothing_acknowledged(
        private_pg: PrivatePostgres, capfd: pytest.CaptureFixture[str]) -> None:
    pg = private_pg
    model = FleetModel.from_dict(fleet_dict(owners=2, regions=1, sites=4, assets=50, seed=5,
                                            offline_after_s=OFFLINE_AFTER_S))
    silent = sorted(a for a, spec in model.assets.items() if spec.site == SILENT_SITE)
    reporting = sorted(set(model.assets) - set(silent))
    clock = VirtualClock(START)
    fleet = Fleet(model, clock=clock, store=pg.url,
                  store_options={"busy_timeout_s": 2.0, "retry_max_s": 0.2})
    client = Client(fleet, reporting)
    reader = Reader(fleet, "o1")
    seen: list[Rollup] = []
    try:
        with capture_logs() as logs:
            fleet.subscribe("o1", seen.append)
            fleet.ingest([Sample(a, START, {"power_kw": 0.001}) for a in model.assets])
            fleet.advance(10)                      # the reporting assets' deadline: +40 s
            client.start()
            reader.start()
            wait_until(lambda: len(client.acknowledged) >= 3, OUTAGE_WAIT_S,
                       "the client's first batches")

            pg.stop()                                           # the outage
            outage = time.monotonic()
            wait_until(lambda: client.refused >= 1, OUTAGE_WAIT_S, "a refused batch")
            # known to be down now: a batch is refused at once, not after busy_timeout_s
            started = time.perf_counter()
            with pytest.raises(StoreUnavailable, match="is down"):
                fleet.ingest([Sample(reporting[0], START + 5, {"power_kw": 0.001})])
            assert time.perf_counter() - started < 1.0

            def advance_to(when: float) -> None:
                started = time.perf_counter()
                fleet.advance(when - clock.now())
                assert time.perf_counter() - started < TIMERS_WITHIN_S

            def offline() -> set[str]:
                return {a for r in fleet.rollups("site").values() for a in r.missing
                        if fleet.asset(a).state == "offline"}

            advance_to(START + OFFLINE_AFTER_S - 0.1)
            assert offline() == set()
            advance_to(START + OFFLINE_AFTER_S + 0.1)         # the silent site's deadline
            assert offline() == set(silent)
            assert fleet.rollup(f"o1/r0/{SILENT_SITE}").offline == len(silent)
            assert seen[-1].offline == len(silent)            # subscribers told on time
            # no batch got through since: every reporting asset's deadline passes too
            advance_to(START + 10 + OFFLINE_AFTER_S + 0.1)
            assert offline() == set(model.assets)
            acknowledged_during_outage = len(client.acknowledged)
            wait_until(lambda: time.monotonic() - outage >= 3 and client.refused >= 5,
                       OUTAGE_WAIT_S, "a few seconds of outage")
            assert len(client.acknowledged) == acknowledged_during_outage

            pg.start()                                          # the end of it
            wait_until(lambda: len(client.acknowledged) >= acknowledged_during_outage + 3,
                       OUTAGE_WAIT_S, "batches acknowledged again")
            client.stop.set()
            reader.stop.set()
            client.join()
            reader.join()
            fleet.flush()
            assert_consistent(fleet)
            assert fleet.rollup("o0").reporting == fleet.rollup("o0").expected
    finally:
        client.stop.set()
        reader.stop.set()
        if client.is_alive():
            client.join()
        if reader.is_alive():
            reader.join()
        if not pg.running:
            pg.start()          # close() writes what the writer still holds: it needs the server
        fleet.close()

    assert not client.errors, client.errors
    assert reader.reads > 10 and reader.slowest < READ_WITHIN_S, reader.slowest
    events = [e["event"] for e in logs]
    assert events.count("store_down") == 1 and events.count("store_back") == 1
    # 0 acknowledged samples lost: each acknowledged batch is in the log, its samples stored
    acknowledged = {(s.asset_id, s.ts) for payload in client.acknowledged
                    for s in unpack_batch(payload).samples}
    assert len(acknowledged) == len(client.acknowledged) * len(reporting)
    db = create_engine(pg.url)
    try:
        with db.connect() as conn:
            logged = {bytes(row[0]) for row in conn.execute(text("SELECT payload FROM twin_log"))}
            stored = {(row[0], row[1]) for row in conn.execute(text(
                "SELECT asset_id, ts FROM twin_samples WHERE outcome = 0"))}
    finally:
        db.dispose()
    assert set(client.acknowledged) <= logged
    assert acknowledged <= stored
    # the driver's own complaints went through the structured log, not bare onto stderr
    assert "error ignored terminating" not in capfd.readouterr().err


def test_the_drivers_log_records_join_the_writers_structured_log(
        capfd: pytest.CaptureFixture[str]) -> None:
    class Writer:
        def __init__(self) -> None:
            self.logs: list[tuple[str, str, dict[str, Any]]] = []

        def log(self, level: str, event: str, **fields: Any) -> None:
            self.logs.append((level, event, fields))

    writer = Writer()
    before = logging.getLogger("psycopg").handlers[:]
    try:
        DriverLog.install(writer, "psycopg")         # type: ignore[arg-type]
        # what psycopg logs when the server goes away in the middle of a pipeline
        logging.getLogger("psycopg").warning("error ignored terminating %r: %s",
                                             "<psycopg.Pipeline [BAD]>",
                                             "the connection is lost")
    finally:
        logging.getLogger("psycopg").handlers[:] = before
        logging.getLogger("psycopg").propagate = True
    assert writer.logs == [("warning", "store_driver_message", {
        "driver": "psycopg",
        "message": "error ignored terminating '<psycopg.Pipeline [BAD]>': the connection "
                   "is lost"})]
    assert capfd.readouterr().err == ""
