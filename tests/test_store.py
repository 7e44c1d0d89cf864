"""The durable store, the same tests on SQLite and PostgreSQL: the raw log is written before
``ingest`` returns, derived rows follow, replays are idempotent, a restart restores what was,
a busy writer refuses batches cleanly, and a lost connection loses nothing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import msgpack
import psycopg
import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.pool import NullPool
from store_urls import (
    application_name,
    backend_of,
)

from tests.polling import wait_until
from twin import (
    AddAsset,
    Fleet,
    FleetModel,
    IngestReport,
    MoveAsset,
    PendingChange,
    Sample,
    Store,
    StoreBusy,
    StoreUnavailable,
    SupervisionPolicy,
    VirtualClock,
    change_from_dict,
)
from twin.testing import assert_consistent, capture_logs
from twin.wire import pack_batch, unpack_batch

ASSETS = ("t-01", "b-01", "c-01", "t-02", "b-02")
DAY = 86400.0

OpenFleet = Callable[..., Fleet]
OpenStore = Callable[..., Store]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Captured log entries (the writer's retry warnings land here, not on the terminal)."""
    with capture_logs() as entries:
        yield entries


@pytest.fixture
def db(store_url: str) -> Iterator[Engine]:
    """A connection source of its own, to look at the store from outside the fleet."""
    engine = create_engine(store_url, poolclass=NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def open_store(store_url: str) -> Iterator[OpenStore]:
    opened: list[Store] = []

    def open_(**options: Any) -> Store:
        store = Store(store_url, **options)
        opened.append(store)
        return store

    yield open_
    for store in reversed(opened):
        store.close()


@pytest.fixture
def open_fleet(store_url: str, clock: VirtualClock, example_dict: dict[str, Any],
               open_store: OpenStore) -> Iterator[OpenFleet]:
    """Opens fleets on the test's store, each with a fresh copy of the example model; all of
    them are closed after the test."""
    opened: list[Fleet] = []

    def open_(store: Store | None = None, *, shards: int = 1) -> Fleet:
        fleet = Fleet(FleetModel.from_dict(example_dict), clock=clock, shards=shards,
                      store=store if store is not None else store_url)
        opened.append(fleet)
        return fleet

    yield open_
    for fleet in reversed(opened):
        fleet.close()


# -- reading the store from outside ------------------------------------------------------------


def log_rows(db: Engine) -> list[tuple[int, float, str, int, bytes]]:
    with db.connect() as conn:
        rows = conn.execute(text('SELECT "offset", received_at, source, samples, payload '
                                 'FROM twin_log ORDER BY "offset"')).all()
    return [(int(r[0]), r[1], r[2], int(r[3]), bytes(r[4])) for r in rows]


def sample_rows(db: Engine) -> list[tuple[float, str, int, float, int, dict[str, Any]]]:
    """(ts, asset, outcome, received_at, log_offset, signals) of every stored sample; the
    signals put back together from the ``power_kw`` column and the ``signals`` map."""
    with db.connect() as conn:
        rows = conn.execute(text("SELECT ts, asset_id, outcome, received_at, log_offset, "
                                 "power_kw, signals FROM twin_samples "
                                 "ORDER BY asset_id, ts, outcome")
                            ).all()
    out = []
    for ts, asset_id, outcome, received_at, offset, power_kw, others in rows:
        signals = {} if power_kw is None else {"power_kw": power_kw}
        if others is not None:
            signals.update(msgpack.unpackb(bytes(others)))
        out.append((ts, asset_id, int(outcome), received_at, int(offset), signals))
    return out


def transition_rows(db: Engine) -> list[tuple[int, float, str, str, str, str]]:
    with db.connect() as conn:
        rows = conn.execute(text('SELECT log_offset, "at", asset_id, "old", "new", reason '
                                 'FROM twin_transitions ORDER BY "at", asset_id, "new"')).all()
    return [(int(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]


def model_version_rows(db: Engine) -> list[tuple[int, float, float, str]]:
    with db.connect() as conn:
        rows = conn.execute(text("SELECT version, effective, recorded_at, change "
                                 "FROM twin_model_versions ORDER BY version")).all()
    return [(int(r[0]), r[1], r[2], r[3]) for r in rows]


def stored(db: Engine) -> dict[str, list[Any]]:
    return {"samples": sample_rows(db), "transitions": transition_rows(db)}


# -- reading the fleet -----------------------------------------------------------------------


def asset_states(fleet: Fleet, *, later: bool = False) -> dict[str, dict[str, Any]]:
    """Every asset's view; ``later``: leave out what a later look must differ in (the time
    of the look, and the quality counters, which count every sample received)."""
    out = {}
    for asset_id in sorted(fleet.model.assets):
        view = fleet.asset(asset_id).to_dict()
        if later:
            del view["quality"], view["as_of"], view["age_s"]
        out[asset_id] = view
    return out


def rollups(fleet: Fleet) -> dict[str, dict[str, Any]]:
    out = {}
    for path, rollup in fleet.rollups().items():
        row = rollup.to_dict()
        del row["version"], row["as_of"]     # bookkeeping of the live tree, not state
        out[path] = row
    return out


def fleet_state(fleet: Fleet, *, later: bool = False) -> dict[str, Any]:
    return {"assets": asset_states(fleet, later=later), "rollups": rollups(fleet)}


# -- batches ---------------------------------------------------------------------------------


def mixed_batch(now: float) -> list[Sample]:
    """One sample of every outcome a batch can have, in an order that makes each one so."""
    return [
        Sample("t-01", now, {"power_kw": 2100.0}),              # accepted
        Sample("t-02", now, {"power_kw": 1500.0, "wind_speed_ms": 12.5}),   # accepted
        Sample("t-01", now - 5, {"power_kw": 1900.0}),          # late
        Sample("t-01", now, {"power_kw": 2500.0}),              # duplicate (same device time)
        Sample("b-01", now, {"power_kw": 99_000.0}),            # anomalous (rated 5000 kW)
        Sample("c-01", now + 3600, {"power_kw": -100.0}),       # future
        Sample("t-02", now - 40 * DAY, {"power_kw": 10.0}),     # stale
        Sample("x-99", now, {"power_kw": 1.0}),                 # rejected: unknown asset
        Sample("b-02", now, {"power_kw": "lots"}),              # rejected: not a number
    ]


def assert_mixed_report(report: IngestReport) -> None:
    assert report.counts() == {"accepted": 2, "duplicate": 1, "late": 1, "future": 1,
                               "stale": 1, "anomalous": 1, "rejected": 2, "deferred": 0,
                               "quarantined": 0}, report.errors


def power(fleet: Fleet, clock: VirtualClock, **kw_by_asset: float) -> None:
    """One batch: each named asset (``t_01=...``) reports its power now."""
    batch = [Sample(a.replace("_", "-"), clock.now(), {"power_kw": kw})
             for a, kw in kw_by_asset.items()]
    report = fleet.ingest(batch, source="site-gw")
    assert report.accepted == len(batch), report.errors


def run_history(fleet: Fleet, clock: VirtualClock) -> None:
    """A morning of a fleet: reports, silences (offline), a resend, flagged samples."""
    t0 = clock.now()
    power(fleet, clock, t_01=2100.0, b_01=-300.0, c_01=-100.0, t_02=1500.0, b_02=4.0)
    fleet.advance(10)
    power(fleet, clock, t_01=2200.0, b_01=-200.0, c_01=-120.0)
    fleet.advance(25)                       # t-02 and b-02 silent for 35 s: offline
    power(fleet, clock, t_01=2300.0, b_01=-100.0)
    fleet.advance(10)                       # c-01 silent for 35 s: offline
    report = fleet.ingest(pack_batch(mixed_batch(clock.now()), "gw-bytes", clock.now()))
    assert_mixed_report(report)
    fleet.advance(1)
    fleet.ingest(pack_batch(mixed_batch(t0 + 45), "gw-bytes", clock.now()))   # resent
    states = {a: fleet.asset(a).state for a in ASSETS}
    assert states == {"t-01": "online", "b-01": "online", "c-01": "offline",
                      "t-02": "online", "b-02": "offline"}


def run_more(fleet: Fleet, clock: VirtualClock) -> None:
    """Two more batches: a report, a late sample, an asset back (b-02), an anomalous one."""
    fleet.advance(5)
    report = fleet.ingest([Sample("t-02", clock.now(), {"power_kw": 1000.0}),
                           Sample("t-01", clock.now() - 20, {"power_kw": 2150.0})])
    assert (report.accepted, report.late) == (1, 1), report.errors
    fleet.advance(5)
    report = fleet.ingest([Sample("b-02", clock.now(), {"power_kw": 5.0}),
                           Sample("c-01", clock.now(), {"power_kw": -900.0})])
    assert (report.accepted, report.anomalous) == (1, 1), report.errors


# -- blocking and cutting the writer -----------------------------------------------------------


class BlockedWriter:
    """Stops the store's writer process from writing until released.

    PostgreSQL: another session takes ``LOCK TABLE twin_samples IN ACCESS EXCLUSIVE MODE`` in
    an open transaction; the writer's INSERT waits for it, and :meth:`cut_connection`
    terminates the writer's backend with ``pg_terminate_backend``. SQLite has no table locks
    (a database-wide write lock would block the raw-log append as well), so there the writer
    process is stopped with ``SIGSTOP`` while it is idle (it holds no lock then), and
    :meth:`cut_connection` takes the database's write lock from this test, lets the writer
    run into it (``database is locked`` after its busy timeout: the error SQLite reports while
    another process writes) and releases it once the writer has retried.
    """

    def __init__(self, store: Store, db: Engine) -> None:
        self.store = store
        self.db = db
        self._lock_conn: Any = None
        self._stopped: int | None = None

    def __enter__(self) -> BlockedWriter:
        if self.store.dialect == "postgresql":
            self._lock_conn = self.db.connect()
            self._lock_conn.execute(text("LOCK TABLE twin_samples IN ACCESS EXCLUSIVE MODE"))
        else:
            self.store.writer.flush()            # idle: in no transaction, holding no lock
            stopped = self._stopped = self.store.writer.pid
            os.kill(stopped, signal.SIGSTOP)
            wait_until(lambda: process_state(stopped) == "T", what="the writer to stop")
        return self

    def cut_connection(self) -> None:
        """Make the writer's current attempt fail as if its connection were lost."""
        if self.store.dialect == "postgresql":
            writer = ("FROM pg_stat_activity WHERE datname = current_database() "
                      "AND pid <> pg_backend_pid() AND application_name = :app "
                      "AND state = 'active' AND query LIKE 'INSERT INTO twin_samples%'")
            app = {"app": application_name(self.store.url)}

            def inside_insert() -> bool:
                with self.db.connect() as conn:
                    return bool(conn.execute(text(f"SELECT count(*) {writer}"), app).scalar())

            # a busy machine may start the writer's INSERT after ingest was refused
            wait_until(inside_insert, what="the writer to wait inside its INSERT")
            with self.db.connect() as conn:
                ended = conn.execute(text(f"SELECT pg_terminate_backend(pid, 5000) {writer}"),
                                     app).scalars().all()
            assert ended == [True], "the writer was not waiting inside its INSERT"
            return
        assert self._stopped is not None, "cut_connection() inside the with block"
        locker = sqlite3.connect(self.store.url.removeprefix("sqlite:///"), timeout=5,
                                 isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")    # the database's write lock, held here
            before = self.store.writer.retries
            self._continue()
            wait_until(lambda: self.store.writer.retries > before, what="the writer to retry")
            locker.execute("ROLLBACK")
        finally:
            locker.close()

    def _continue(self) -> None:
        if self._stopped is not None and process_state(self._stopped) == "T":
            os.kill(self._stopped, signal.SIGCONT)    # not if a test killed it meanwhile
        self._stopped = None

    def release(self) -> None:
        if self._lock_conn is not None:
            self._lock_conn.rollback()
            self._lock_conn.close()
            self._lock_conn = None
        self._continue()

    def __exit__(self, *exc: object) -> None:
        self.release()


def process_state(pid: int) -> str:
    """The state letter of a process (``T``: stopped; ``Z``/``X`` or gone: exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "X"


class FailingLogAppends:
    """While active, every INSERT into twin_log fails with the driver's OperationalError, as
    when the database is away (raised at SQLAlchemy's ``before_cursor_execute`` hook)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.active = False
        event.listen(store.engine, "before_cursor_execute", self._fail)

    def _fail(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self.active and statement.startswith("INSERT INTO twin_log"):
            if self.store.dialect == "postgresql":
                raise psycopg.OperationalError("server closed the connection (injected)")
            raise sqlite3.OperationalError("disk I/O error (injected by the test)")

    def __enter__(self) -> FailingLogAppends:
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False


def ingest_until_busy(fleet: Fleet, clock: VirtualClock, acknowledged: list[Sample]
                      ) -> Sample:
    """Send t-01 reports, one per batch, until the store refuses one; returns that one."""
    for i in range(50):
        sample = Sample("t-01", clock.now() - 100 + i, {"power_kw": 1000.0 + i})
        try:
            fleet.ingest([sample])
        except StoreBusy:
            return sample
        acknowledged.append(sample)
    raise AssertionError("50 batches were accepted with the writer blocked and room for one")


# -- (a) the raw log ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["samples", "bytes"])
def test_a_batch_is_in_the_raw_log_when_ingest_returns(
        open_fleet: OpenFleet, db: Engine, clock: VirtualClock, form: str) -> None:
    fleet = open_fleet()
    batch = mixed_batch(clock.now())
    payload = pack_batch(batch, "gw-7", clock.now() - 2)
    report = fleet.ingest(payload if form == "bytes" else batch, source="gw-7")
    assert_mixed_report(report)
    (row,) = log_rows(db)                     # no flush: the log is written synchronously
    offset, received_at, source, count, logged = row
    assert (offset, received_at, source, count) == (1, clock.now(), "gw-7", len(batch))
    if form == "bytes":
        assert logged == payload               # the bytes as received
    else:
        assert unpack_batch(logged).samples == batch


def test_every_acknowledged_batch_gets_the_next_log_offset(
        open_fleet: OpenFleet, db: Engine, clock: VirtualClock) -> None:
    fleet = open_fleet()
    for kw in (100.0, 200.0, 300.0):
        power(fleet, clock, t_01=kw)
        fleet.advance(1)
    offsets = [row[0] for row in log_rows(db)]
    assert len(offsets) == 3 and offsets == sorted(set(offsets))
    received = [row[1] for row in log_rows(db)]
    assert received == [clock.now() - 3, clock.now() - 2, clock.now() - 1]


# -- (b) derived rows --------------------------------------------------------------------------


def test_accepted_late_and_anomalous_samples_are_rows_with_their_outcome_and_the_rest_are_not(
        open_fleet: OpenFleet, db: Engine, clock: VirtualClock) -> None:
    fleet = open_fleet()
    now = clock.now()
    assert_mixed_report(fleet.ingest(mixed_batch(now), source="gw-7"))
    fleet.flush()
    ((offset, *_),) = log_rows(db)
    assert sample_rows(db) == [
        (now, "b-01", 5, now, offset, {"power_kw": 99_000.0}),    # anomalous, kept flagged
        (now - 5, "t-01", 2, now, offset, {"power_kw": 1900.0}),  # late: history
        (now, "t-01", 0, now, offset, {"power_kw": 2100.0}),      # accepted (not the duplicate)
        (now, "t-02", 0, now, offset, {"power_kw": 1500.0, "wind_speed_ms": 12.5}),
    ]
    fleet.advance(1)
    report = fleet.ingest([Sample("b-02", clock.now(), {"soc_pct": 55.0})])   # no power
    assert report.accepted == 1, report.errors
    fleet.flush()
    assert [row for row in sample_rows(db) if row[1] == "b-02"] == [
        (clock.now(), "b-02", 0, clock.now(), offset + 1, {"soc_pct": 55.0})]


def test_state_transitions_are_rows_in_twin_transitions(
        open_fleet: OpenFleet, db: Engine, clock: VirtualClock) -> None:
    fleet = open_fleet()
    t0 = clock.now()
    power(fleet, clock, t_01=2100.0)
    fleet.advance(10)
    power(fleet, clock, b_01=-50.0)
    fleet.advance(20)                          # t-01 silent for 30 s
    assert fleet.asset("t-01").state == "offline"
    fleet.flush()
    first, second = (row[0] for row in log_rows(db))
    assert transition_rows(db) == [
        (first, t0, "t-01", "unknown", "online", "sample"),
        (second, t0 + 10, "b-01", "unknown", "online", "sample"),
        (second, t0 + 30, "t-01", "online", "offline", "silence"),
    ]
    assert [row[1:] for row in transition_rows(db)] == [tuple(t) for t in fleet.transitions()]


def test_an_accepted_sample_replaces_an_anomalous_one_with_the_same_device_time(
        open_fleet: OpenFleet, db: Engine, clock: VirtualClock) -> None:
    fleet = open_fleet()
    now = clock.now()
    report = fleet.ingest([Sample("b-01", now, {"power_kw": 99_000.0}),
                           Sample("b-01", now, {"power_kw": 250.0})])
    assert (report.anomalous, report.accepted) == (1, 1)
    assert fleet.asset("b-01").reported == {"power_kw": 250.0}
    fleet.flush()
    assert [(ts, asset, outcome, signals) for ts, asset, outcome, _, _, signals
            in sample_rows(db)] == [(now, "b-01", 0, {"power_kw": 250.0})]
    fleet.ingest([Sample("b-01", now, {"power_kw": 99_000.0})])    # never the other way
    fleet.flush()
    assert [outcome for _, _, outcome, *_ in sample_rows(db)] == [0]


# -- (c) idempotency ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["samples", "bytes"])
def test_ingesting_the_same_batch_twice_changes_no_row_rollup_or_asset_state(
        open_fleet: OpenFleet, db: Engine, clock: VirtualClock, form: str) -> None:
    fleet = open_fleet()
    power(fleet, clock, b_02=4.0)
    fleet.advance(5)
    samples = mixed_batch(clock.now())
    batch: list[Sample] | bytes = (pack_batch(samples, "gw-7", clock.now()) if form == "bytes"
                                   else samples)
    assert_mixed_report(fleet.ingest(batch))
    fleet.flush()
    rows_before, state_before = stored(db), fleet_state(fleet, later=True)
    fleet.advance(2)
    again = fleet.ingest(batch)
    assert (again.accepted, again.duplicate, again.late, again.anomalous) == (0, 3, 1, 1)
    fleet.flush()
    assert stored(db) == rows_before
    assert fleet_state(fleet, later=True) == state_before
    assert len(log_rows(db)) == 3              # the resend is acknowledged, hence logged


# -- (d) restart -------------------------------------------------------------------------------


@pytest.mark.parametrize("snapshot", [False, True], ids=["log-only", "snapshot-and-log"])
def test_a_reopened_fleet_has_every_asset_state_and_rollup_it_had(
        open_fleet: OpenFleet, db: Engine, clock: VirtualClock, snapshot: bool) -> None:
    fleet = open_fleet()
    run_history(fleet, clock)
    if snapshot:
        assert fleet.snapshot() == log_rows(db)[-1][0]
    run_more(fleet, clock)                     # after the snapshot: these must be replayed
    batches = fleet.metrics()["batches"]
    fleet.flush()
    state, rows = fleet_state(fleet), stored(db)
    fleet.close()
    reopened = open_fleet()
    assert reopened.metrics()["replayed_batches"] == (2 if snapshot else batches)
    assert fleet_state(reopened) == state
    assert_consistent(reopened)
    reopened.flush()
    assert stored(db) == rows                  # the replay wrote nothing new
    assert len(log_rows(db)) == batches        # and logged nothing


def test_a_fleet_reopened_on_a_fresh_snapshot_replays_nothing(
        open_fleet: OpenFleet, clock: VirtualClock) -> None:
    fleet = open_fleet()
    run_history(fleet, clock)
    fleet.snapshot()
    state = fleet_state(fleet)
    fleet.close()
    reopened = open_fleet()
    assert reopened.metrics()["replayed_batches"] == 0
    assert fleet_state(reopened) == state


def test_a_fleet_reopened_later_lets_silent_assets_go_offline_and_records_it(
        open_fleet: OpenFleet, db: Engine, clock: VirtualClock) -> None:
    fleet = open_fleet()
    power(fleet, clock, t_01=2100.0, b_01=-300.0)
    fleet.snapshot()
    fleet.advance(10)
    power(fleet, clock, b_01=-200.0)
    fleet.close()
    clock.advance(25)                          # down for a while: t-01 silent for 35 s
    reopened = open_fleet()
    assert (reopened.asset("t-01").state, reopened.asset("b-01").state) == ("offline", "online")
    assert reopened.rollup("acme/north/alpha").power_kw == -200.0
    reopened.flush()
    assert transition_rows(db)[-1][1:] == (clock.now(), "t-01", "online", "offline", "silence")


def test_a_reopened_fleet_keeps_the_desired_values_of_accepted_commands(
        open_fleet: OpenFleet, clock: VirtualClock) -> None:
    fleet = open_fleet()
    power(fleet, clock, b_01=-300.0)
    fleet.command("b-01", {"setpoint_kw": -2000.0})
    state = fleet_state(fleet)
    assert state["assets"]["b-01"]["desired"] == {"setpoint_kw": -2000.0}
    fleet.close()
    reopened = open_fleet()
    assert fleet_state(reopened) == state


# -- (e) model changes -------------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 2], ids=["1-shard", "2-shards"])
@pytest.mark.parametrize("snapshot", [False, True], ids=["log-only", "snapshot-between"])
def test_model_changes_are_recorded_and_reapplied_when_the_original_model_is_reopened(
        open_fleet: OpenFleet, db: Engine, clock: VirtualClock, shards: int,
        snapshot: bool) -> None:
    fleet = open_fleet(shards=shards)
    power(fleet, clock, t_01=2100.0, b_02=4.0)
    fleet.advance(5)
    moved_at = clock.now()
    fleet.apply(MoveAsset("t-01", "gamma"))    # crosses shards when there are two
    if snapshot:
        fleet.snapshot()
    fleet.advance(5)
    added = AddAsset("gamma", {"id": "t-03", "kind": "turbine", "rated_kw": 1500})
    fleet.apply(added)
    power(fleet, clock, t_03=1200.0, t_01=2200.0)
    assert (fleet.rollup("acme/north/gamma").power_kw,
            fleet.rollup("acme/north/alpha").expected) == (3400.0, 2)
    fleet.flush()
    state, versions = fleet_state(fleet), model_version_rows(db)
    fleet.close()
    assert [(v, eff, rec) for v, eff, rec, _ in versions] == [
        (1, moved_at, moved_at), (2, moved_at + 5, moved_at + 5)]
    assert [change_from_dict(json.loads(raw)) for *_, raw in versions] == [
        MoveAsset("t-01", "gamma"), added]
    reopened = open_fleet(shards=shards)        # given the model as it was before the changes
    assert reopened.model.version == 2
    assert reopened.asset("t-01").site == "acme/north/gamma"
    assert fleet_state(reopened) == state
    assert (reopened.rollup("acme/north/gamma").power_kw,
            reopened.rollup("grid/ercot").expected) == (3400.0, 3)
    assert_consistent(reopened)
    assert model_version_rows(db) == versions   # re-applied, not recorded again


def test_a_sample_that_came_before_its_asset_was_added_stays_rejected_after_a_restart(
        open_fleet: OpenFleet, db: Engine, clock: VirtualClock) -> None:
    fleet = open_fleet()
    report = fleet.ingest([Sample("t-03", clock.now(), {"power_kw": 1200.0})])
    assert report.rejected == 1                 # unknown asset
    fleet.advance(5)
    fleet.apply(AddAsset("gamma", {"id": "t-03", "kind": "turbine", "rated_kw": 1500}))
    fleet.flush()
    state, rows = fleet_state(fleet), stored(db)
    assert (state["assets"]["t-03"]["state"], rows["samples"]) == ("unknown", [])
    fleet.close()
    reopened = open_fleet()
    assert fleet_state(reopened) == state
    reopened.flush()
    assert stored(db) == rows


# -- (f) backpressure --------------------------------------------------------------------------


def test_a_blocked_writer_makes_ingest_refuse_a_batch_without_logging_or_applying_it(
        open_store: OpenStore, open_fleet: OpenFleet, db: Engine, clock: VirtualClock) -> None:
    store = open_store(queue_batches=1, busy_timeout_s=0.2, flush_interval_s=0.01)
    fleet = open_fleet(store)
    acknowledged: list[Sample] = []
    with BlockedWriter(store, db):
        refused = ingest_until_busy(fleet, clock, acknowledged)
        assert len(acknowledged) >= 1
        assert len(log_rows(db)) == len(acknowledged)
        assert [unpack_batch(row[4]).samples for row in log_rows(db)] == [
            [s] for s in acknowledged]                         # the refused one is not there
        last = acknowledged[-1]
        view = fleet.asset("t-01")
        assert (view.last_sample_ts, view.reported) == (last.ts, last.signals)
        metrics = fleet.metrics()
        assert (metrics["samples_accepted"], metrics["batches"], metrics["batches_refused"]) == (
            len(acknowledged), len(acknowledged), 1)
        assert metrics["store_queue_depth"] == 1   # bounded: never more than queue_batches
        assert fleet.rollup("acme/north/alpha").power_kw == last.signals["power_kw"]
    fleet.flush()
    assert [(ts, asset, outcome) for ts, asset, outcome, *_ in sample_rows(db)] == [
        (s.ts, "t-01", 0) for s in acknowledged]
    assert store.cleaned_offset() == log_rows(db)[-1][0]
    assert fleet.ingest([refused]).accepted == 1               # sent again: taken now
    fleet.flush()
    assert sample_rows(db)[-1][:3] == (refused.ts, "t-01", 0)


def test_a_writer_stuck_in_the_database_with_megabytes_in_flight_still_gets_store_busy(
        open_store: OpenStore, open_fleet: OpenFleet, db: Engine, store_url: str,
        clock: VirtualClock) -> None:
    """More bytes in flight than a pipe holds (1 MB): the writer process keeps reading its
    input while its INSERT waits, so ingest refuses with StoreBusy rather than hanging."""
    if backend_of(store_url) != "postgresql":
        pytest.skip("needs a table lock that leaves the raw log writable (PostgreSQL)")
    store = open_store(queue_batches=40, busy_timeout_s=0.5, flush_interval_s=0.01)
    fleet = open_fleet(store)
    t0 = clock.now() - 3000
    batches = [pack_batch([Sample("t-01", t0 + k + i / 2000, {"power_kw": 1000.0 + i})
                           for i in range(2000)], "gw", clock.now()) for k in range(60)]
    assert sum(len(b) for b in batches[:40]) > 2**20
    outcome: list[BaseException | int] = []

    def ingest_all() -> None:
        try:
            for batch in batches:
                fleet.ingest(batch)
            outcome.append(len(batches))
        except BaseException as error:       # handed to the test's thread
            outcome.append(error)

    with BlockedWriter(store, db):
        worker = threading.Thread(target=ingest_all, daemon=True)
        worker.start()
        worker.join(timeout=60)
        assert not worker.is_alive(), "ingest hung on a full pipe instead of refusing"
        assert len(outcome) == 1 and isinstance(outcome[0], StoreBusy), outcome
        assert fleet.metrics()["store_queue_depth"] == 40
    fleet.flush()
    assert len(sample_rows(db)) == 40 * 2000


def test_a_batch_the_log_could_not_take_changes_no_state_and_is_taken_when_sent_again(
        open_store: OpenStore, open_fleet: OpenFleet, db: Engine, clock: VirtualClock) -> None:
    store = open_store(busy_timeout_s=0.2)
    fleet = open_fleet(store)
    power(fleet, clock, t_01=100.0)
    fleet.advance(1)
    before = fleet_state(fleet)
    batch = [Sample("t-01", clock.now(), {"power_kw": 2000.0})]
    with FailingLogAppends(store), pytest.raises(StoreUnavailable):
        fleet.ingest(batch)
    assert len(log_rows(db)) == 1
    assert fleet_state(fleet) == before        # "nothing of it applied" (Fleet.ingest)
    report = fleet.ingest(batch)               # sent again, as the docstring invites
    fleet.flush()
    assert report.accepted == 1
    assert [(asset, outcome, signals) for _, asset, outcome, _, _, signals
            in sample_rows(db)] == [("t-01", 0, {"power_kw": 100.0}),
                                    ("t-01", 0, {"power_kw": 2000.0})]


def test_an_asset_id_as_long_as_the_model_allows_is_stored_without_wedging_the_writer(
        open_store: OpenStore,
        example_dict: dict[str, Any], db: Engine, clock: VirtualClock) -> None:
    long_id = "turbine-" + "x" * 292
    example_dict["owners"][0]["regions"][0]["sites"][1]["assets"].append(
        {"id": long_id, "kind": "turbine", "rated_kw": 1000})
    store = open_store(queue_batches=1, busy_timeout_s=1.0, flush_interval_s=0.01)
    fleet = Fleet(FleetModel.from_dict(example_dict), clock=clock, store=store)
    try:
        assert fleet.ingest([Sample(long_id, clock.now(), {"power_kw": 500.0})]).accepted == 1
        for i in range(1, 4):                  # the writer keeps up (or ingest says busy)
            power(fleet, clock, t_01=100.0 * i)
            fleet.advance(1)
        fleet.flush()
        assert [asset for _, asset, *_ in sample_rows(db)].count(long_id) == 1
        assert (long_id, "unknown", "online") in [row[2:5] for row in transition_rows(db)]
    finally:
        fleet.close()


# -- (g) database unavailable ------------------------------------------------------------------


def test_the_writer_retries_a_lost_connection_and_loses_no_acknowledged_sample(
        open_store: OpenStore, open_fleet: OpenFleet, db: Engine, clock: VirtualClock,
        logs: list[MutableMapping[str, Any]]) -> None:
    store = open_store(queue_batches=1, busy_timeout_s=0.2, flush_interval_s=0.01,
                       retry_base_s=0.01, retry_max_s=0.05)
    fleet = open_fleet(store)
    acknowledged: list[Sample] = []
    with BlockedWriter(store, db) as blocked:
        ingest_until_busy(fleet, clock, acknowledged)     # rows queued, writer in its INSERT
        blocked.cut_connection()
    fleet.flush()
    assert store.writer.retries > 0
    assert [e["event"] for e in logs].count("store_write_retry") == store.writer.retries
    assert [(ts, asset, outcome) for ts, asset, outcome, *_ in sample_rows(db)] == [
        (s.ts, "t-01", 0) for s in acknowledged]
    assert store.cleaned_offset() == log_rows(db)[-1][0]


def test_a_killed_writer_process_is_restarted_and_writes_every_batch_sent_to_it(
        open_store: OpenStore, open_fleet: OpenFleet, db: Engine, clock: VirtualClock,
        logs: list[MutableMapping[str, Any]]) -> None:
    store = open_store()
    fleet = open_fleet(store)
    acknowledged: list[Sample] = []
    with BlockedWriter(store, db):
        for i in range(3):                    # sent, not written: the writer cannot write
            acknowledged.append(Sample("t-01", clock.now() - 10 + i, {"power_kw": 10.0 * i}))
            fleet.ingest([acknowledged[-1]])
        killed = store.writer.pid
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: store.writer.pid != killed, what="a new writer process")
    fleet.flush()
    assert process_state(killed) in ("Z", "X")
    assert [(ts, asset) for ts, asset, *_ in sample_rows(db)] == [
        (s.ts, "t-01") for s in acknowledged]
    assert store.cleaned_offset() == log_rows(db)[-1][0]
    assert (store.writer.restarts, fleet.metrics()["store_queue_depth"]) == (1, 0)
    assert [e["resent_batches"] for e in logs if e["event"] == "store_writer_restarted"] == [3]


def test_a_writer_process_that_keeps_dying_makes_ingest_refuse_batches(
        open_store: OpenStore, open_fleet: OpenFleet, db: Engine, clock: VirtualClock) -> None:
    store = open_store()
    fleet = open_fleet(store)
    power(fleet, clock, t_01=100.0)
    fleet.flush()
    def gone(pid: int) -> bool:
        """Restarted, or (after the third restart) given up on: its reader thread records
        that only after it reaped the process, so the process's exit alone is too early."""
        return store.writer.pid != pid or store.writer.failure is not None

    for _ in range(4):                        # three restarts are allowed within a minute
        killed = store.writer.pid
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: gone(killed), what="the writer to be restarted or to stay dead")  # noqa: B023
    fleet.advance(1)
    with pytest.raises(StoreUnavailable, match="writer process exited"):
        power(fleet, clock, t_01=200.0)
    assert len(log_rows(db)) == 1               # refused before it was logged
    assert fleet.metrics()["batches_refused"] == 1


def test_the_writer_process_exits_when_its_fleet_is_killed(store_url: str, tmp_path: Any
                                                            ) -> None:
    """A SIGKILLed fleet leaves no writer behind (it sees EOF on its input)."""
    script = ("import sys, time\nfrom twin import Store\nstore = Store(sys.argv[1])\n"
              "print(store.writer.pid, flush=True)\ntime.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", script, store_url], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        writer = int(child.stdout.readline())
        assert process_state(writer) not in ("Z", "X")
    finally:
        child.kill()                           # this child only, by its pid
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    wait_until(lambda: process_state(writer) in ("Z", "X"), what="the orphaned writer to exit")


def test_the_writer_process_and_the_fleet_agree_on_which_outcomes_are_stored() -> None:
    from twin.store import persistence as _persistence
    from twin.store import writer_process as _writer_process
    assert _persistence.STORED_OUTCOMES == _writer_process.STORED


def test_ingest_still_logs_after_every_connection_of_the_store_was_terminated(
        open_fleet: OpenFleet, db: Engine, store_url: str, clock: VirtualClock) -> None:
    if backend_of(store_url) != "postgresql":
        pytest.skip("terminating a server's backends has no SQLite counterpart")
    fleet = open_fleet()
    power(fleet, clock, t_01=100.0)
    fleet.flush()
    with db.connect() as conn:
        ended = conn.execute(text(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND application_name = :app"), {"app": application_name(store_url)}).scalars().all()
    assert ended and all(ended)                # the raw log's connection among them
    fleet.advance(1)
    power(fleet, clock, t_01=200.0)
    fleet.flush()
    assert len(log_rows(db)) == 2
    assert [(asset, outcome, signals) for _, asset, outcome, _, _, signals
            in sample_rows(db)] == [("t-01", 0, {"power_kw": 100.0}),
                                    ("t-01", 0, {"power_kw": 200.0})]


def test_a_change_scheduled_for_later_survives_a_restart_and_is_applied_once(
        open_fleet: OpenFleet, db: Engine, clock: VirtualClock) -> None:
    fleet = open_fleet()
    fleet.apply(MoveAsset("t-01", "gamma"), effective=clock.now() + 60)
    fleet.close()
    reopened = open_fleet()
    assert reopened.pending_changes() == [PendingChange(clock.now() + 60,
                                                        MoveAsset("t-01", "gamma"))]
    reopened.advance(61)
    assert reopened.asset("t-01").site == "acme/north/gamma"
    assert reopened.pending_changes() == []
    reopened.close()
    again = open_fleet()
    assert again.pending_changes() == []
    assert again.asset("t-01").site == "acme/north/gamma"
    assert [version for version, *_ in model_version_rows(db)] == [1]


def test_a_log_held_by_a_lock_elsewhere_refuses_the_batch_instead_of_hanging(
        open_store: OpenStore, open_fleet: OpenFleet, db: Engine, store_url: str,
        clock: VirtualClock) -> None:
    if backend_of(store_url) != "postgresql":
        pytest.skip("SQLite's own busy timeout bounds the wait; this is PostgreSQL's case")
    fleet = open_fleet(open_store(busy_timeout_s=0.3))
    power(fleet, clock, t_01=100.0)
    with db.connect() as locker:
        locker.execute(text("LOCK TABLE twin_log IN ACCESS EXCLUSIVE MODE"))
        with pytest.raises(StoreUnavailable, match="could not append to the log"):
            fleet.ingest([Sample("t-01", clock.now() + 1, {"power_kw": 200.0})])
        locker.rollback()
    assert fleet.asset("t-01").reported == {"power_kw": 100.0}     # nothing applied
    assert fleet.ingest([Sample("t-01", clock.now() + 1, {"power_kw": 200.0})]).accepted == 1


def test_a_sample_waiting_out_a_restart_survives_a_snapshot_and_a_restart(
        store_url: str, example_dict: dict[str, Any], clock: VirtualClock) -> None:
    policy = SupervisionPolicy(backoff_base_s=5.0, jitter=0.0, first_restart_immediate=False)
    with Fleet(FleetModel.from_dict(example_dict), clock=clock, store=store_url,
               supervision=policy) as fleet:
        power(fleet, clock, t_01=100.0)
        fleet.inject_fault("t-01")
        waiting = fleet.ingest([Sample("t-01", clock.now() + 1, {"power_kw": 250.0}, seq=9)])
        assert waiting.deferred == 1
        fleet.snapshot()
    with Fleet(FleetModel.from_dict(example_dict), clock=clock, store=store_url,
               supervision=policy) as reopened:
        reopened.advance(1)
        assert reopened.asset("t-01").reported == {"power_kw": 250.0}
        assert reopened.asset("t-01").last_sample_ts == clock.now()
