"""The durable store (SQLAlchemy 2): raw log, derived tables, snapshots.

Writes take two paths:

* the **raw log** append is synchronous and committed (fsync'd on SQLite: WAL with
  ``synchronous=FULL``) before ``Fleet.ingest`` returns: what is acknowledged is durable;
* **derived rows** (classified samples, state transitions) go through a bounded queue to a
  writer thread that batches them (size or time, whichever first) and retries with
  exponential backoff and jitter while the database is unavailable, losing nothing. When the
  queue is full, ingest waits (up to ``busy_timeout_s``) before it appends anything, then
  raises :class:`StoreBusy`: memory never grows without bound, and a refused batch is not
  acknowledged.

Each derived batch is committed with the log offset it covers (``twin_progress.cleaned``); a
snapshot is taken only once the writer has caught up, so a restart replays the log from the
newest snapshot's offset. Replays are idempotent (conflicting rows are ignored).
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Engine, create_engine, event, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError

from twin import _store_schema as schema
from twin._errors import TwinError

log = structlog.get_logger("twin.store")


class StoreBusy(TwinError):
    """The store's writer is behind; the batch was not accepted (retry later)."""


class StoreUnavailable(TwinError):
    """The database could not be reached in time; the batch was not accepted."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    offset: int
    received_at: float
    source: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Snapshot:
    log_offset: int
    taken_at: float
    model_version: int
    state: bytes


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """A recorded model change; it was applied after the log up to ``log_offset``."""

    version: int
    effective: float
    recorded_at: float
    log_offset: int
    change_json: str


def engine_for(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL, full sync and a busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise TwinError("the store needs an SQLite *file* (sqlite:///path/fleet.db): its "
                            "writer thread has its own connection")
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")     # a commit survives power loss
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Store:
    """One fleet's store. ``Store(url)`` creates the tables it needs."""

    def __init__(self, url: str, *, queue_batches: int = 64, flush_rows: int = 20_000,
                 flush_interval_s: float = 0.2, busy_timeout_s: float = 10.0,
                 retry_base_s: float = 0.05, retry_max_s: float = 5.0, seed: int = 0) -> None:
        self.url = url
        self.engine = engine_for(url)
        self.dialect = self.engine.dialect.name
        self.busy_timeout_s = busy_timeout_s
        schema.metadata.create_all(self.engine)
        self._log_conn = self.engine.connect()
        mark = "?" if self.dialect == "sqlite" else "%s"
        # the hot append as plain SQL: Core's statement handling costs more than the insert
        self._append_sql = (f'INSERT INTO twin_log (received_at, source, samples, payload) '
                            f'VALUES ({mark}, {mark}, {mark}, {mark}) RETURNING "offset"')
        # SQLite waits at most its busy timeout; PostgreSQL needs a statement timeout
        self._append_timeout_sql = (
            f"SET LOCAL statement_timeout = {max(1, int(busy_timeout_s * 1000))}"
            if self.dialect == "postgresql" else "")
        self._log_lock = threading.Lock()
        self.writer = Writer(self.engine, queue_batches=queue_batches, flush_rows=flush_rows,
                             flush_interval_s=flush_interval_s, retry_base_s=retry_base_s,
                             retry_max_s=retry_max_s, rng=random.Random(seed))

    # -- the raw log (synchronous) -----------------------------------------------------------

    def append(self, received_at: float, source: str, payload: bytes, count: int) -> int:
        """Append a batch to the raw log and commit; returns its offset."""
        deadline = time.monotonic() + self.busy_timeout_s
        attempt = 0
        with self._log_lock:
            while True:
                try:
                    if self._append_timeout_sql:
                        # a lock held elsewhere must not hang ingest (and the fleet's lock)
                        self._log_conn.exec_driver_sql(self._append_timeout_sql)
                    offset = self._log_conn.exec_driver_sql(
                        self._append_sql, (received_at, source, count, payload)).scalar_one()
                    self._log_conn.commit()
                    return int(offset)
                except DBAPIError as error:
                    self._log_conn.rollback()
                    attempt += 1
                    delay = min(1.0, 0.02 * 2 ** attempt)
                    if time.monotonic() + delay > deadline:
                        raise StoreUnavailable(f"could not append to the log at "
                                               f"{_redact(self.url)}: {error.orig}") from None
                    log.warning("log_append_retry", attempt=attempt, reason=str(error.orig))
                    time.sleep(delay)

    def read_log(self, after: int) -> Iterator[LogEntry]:
        """Batches with an offset greater than ``after``, in order (streamed in pages)."""
        last = after
        with self.engine.connect() as conn:
            while True:
                rows = conn.execute(
                    select(schema.log.c.offset, schema.log.c.received_at, schema.log.c.source,
                           schema.log.c.payload)
                    .where(schema.log.c.offset > last).order_by(schema.log.c.offset).limit(500)
                ).all()
                if not rows:
                    return
                for row in rows:
                    yield LogEntry(int(row.offset), row.received_at, row.source,
                                   bytes(row.payload))
                last = int(rows[-1].offset)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(schema.snapshots).values(
                log_offset=snapshot.log_offset, taken_at=snapshot.taken_at,
                model_version=snapshot.model_version, state=snapshot.state))
            # older snapshots are no longer needed: the log holds everything after this one
            conn.execute(schema.snapshots.delete().where(
                schema.snapshots.c.log_offset < snapshot.log_offset))

    def latest_snapshot(self) -> Snapshot | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(schema.snapshots).order_by(
                schema.snapshots.c.log_offset.desc()).limit(1)).first()
        if row is None:
            return None
        return Snapshot(int(row.log_offset), row.taken_at, row.model_version, bytes(row.state))

    def record_command(self, at: float, asset_id: str, log_offset: int, desired_json: str
                       ) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(insert(schema.commands).values(
                at=at, asset_id=asset_id, log_offset=log_offset, desired=desired_json)
                .returning(schema.commands.c.id)).scalar_one())

    def commands(self, after_id: int) -> list[tuple[int, str, int, str]]:
        """(id, asset id, log offset, desired JSON) of the commands after ``after_id``."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(schema.commands.c.id, schema.commands.c.asset_id,
                                       schema.commands.c.log_offset, schema.commands.c.desired)
                                .where(schema.commands.c.id > after_id)
                                .order_by(schema.commands.c.id)).all()
        return [(int(r.id), r.asset_id, int(r.log_offset), r.desired) for r in rows]

    def cleaned_offset(self) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(select(schema.progress.c.value).where(
                schema.progress.c.name == "cleaned")).scalar()
        return int(value or 0)

    def record_model_version(self, version: int, effective: float, recorded_at: float,
                             log_offset: int, change_json: str,
                             scheduled_id: int | None = None) -> None:
        """Record an applied change; if it was scheduled, mark that done in the same
        transaction, so a restart neither loses nor repeats it."""
        with self.engine.begin() as conn:
            conn.execute(_insert_ignore(self.dialect, schema.model_versions).values(
                version=version, effective=effective, recorded_at=recorded_at,
                log_offset=log_offset, change=change_json))
            if scheduled_id is not None:
                conn.execute(schema.scheduled.update().where(
                    schema.scheduled.c.id == scheduled_id).values(done=1))

    def schedule_change(self, effective: float, change_json: str) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(insert(schema.scheduled).values(
                effective=effective, change=change_json, done=0)
                .returning(schema.scheduled.c.id)).scalar_one())

    def finish_scheduled(self, scheduled_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(schema.scheduled.update().where(
                schema.scheduled.c.id == scheduled_id).values(done=1))

    def scheduled_changes(self) -> list[tuple[int, float, str]]:
        """(id, effective, change JSON) of the scheduled changes not yet applied."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(schema.scheduled.c.id, schema.scheduled.c.effective,
                                       schema.scheduled.c.change)
                                .where(schema.scheduled.c.done == 0)
                                .order_by(schema.scheduled.c.id)).all()
        return [(int(r.id), r.effective, r.change) for r in rows]

    def model_versions(self, after: int) -> list[StoredVersion]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(schema.model_versions).where(
                schema.model_versions.c.version > after).order_by(
                schema.model_versions.c.version)).all()
        return [StoredVersion(int(r.version), r.effective, r.recorded_at, int(r.log_offset),
                              r.change) for r in rows]

    # -- reading derived rows (for tests and tools) -----------------------------------------

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())

    def close(self) -> None:
        """Write everything still queued, then close."""
        self.writer.close()
        with self._log_lock:
            self._log_conn.close()
        self.engine.dispose()


@dataclass(frozen=True, slots=True)
class _Item:
    offset: int
    samples: Iterable[tuple[Any, ...]]
    count: int
    transitions: list[tuple[Any, ...]]


class Writer:
    """The background writer of derived rows: bounded queue, batching, retry with backoff."""

    def __init__(self, engine: Engine, *, queue_batches: int, flush_rows: int,
                 flush_interval_s: float, retry_base_s: float, retry_max_s: float,
                 rng: random.Random) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.queue: queue.Queue[_Item | None] = queue.Queue(maxsize=queue_batches)
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.rng = rng
        self.written_rows = 0
        self.writes = 0
        self.write_seconds = 0.0
        self.retries = 0
        self.failed_rows = 0          # derived rows the database refused for good
        self._stopped = threading.Event()
        self._samples_sql = _insert_ignore_sql(
            self.dialect, "twin_samples",
            ("ts", "asset_id", "received_at", "flagged", "outcome", "log_offset", "power_kw",
             "signals"),
            # a clean sample replaces a flagged one of the same time; nothing else changes
            on_conflict=("(ts, asset_id) DO UPDATE SET flagged = excluded.flagged, "
                         "outcome = excluded.outcome, received_at = excluded.received_at, "
                         "log_offset = excluded.log_offset, power_kw = excluded.power_kw, "
                         "signals = excluded.signals "
                         "WHERE twin_samples.flagged = 1 AND excluded.flagged = 0"))
        self._transitions_sql = _insert_ignore_sql(self.dialect, "twin_transitions",
                                                   ("log_offset", "at", "asset_id", "old",
                                                    "new", "reason"))
        self._thread = threading.Thread(target=self._run, name="twin-store-writer", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    def wait_for_room(self, timeout_s: float) -> None:
        """Block until the queue has room for one more batch, or raise :class:`StoreBusy`."""
        if self.queue.qsize() < self.queue.maxsize:
            return
        deadline = time.monotonic() + timeout_s
        while self.queue.qsize() >= self.queue.maxsize:
            if time.monotonic() >= deadline:
                raise StoreBusy(f"the store's writer is {self.queue.qsize()} batches behind; "
                                f"nothing of this batch was accepted, retry later")
            self._stopped.wait(0.005)

    def put(self, offset: int, sample_rows: Iterable[tuple[Any, ...]], count: int,
            transition_rows: list[tuple[Any, ...]]) -> None:
        """Queue rows covering the log up to ``offset``; ``sample_rows`` may be lazy (it is
        iterated on the writer thread) and yields ``count`` rows."""
        self.queue.put(_Item(offset, sample_rows, count, transition_rows))

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            pending = [item]
            rows = item.count
            deadline = time.monotonic() + self.flush_interval_s
            closing = False
            while rows < self.flush_rows:
                try:
                    more = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    closing = True
                    break
                pending.append(more)
                rows += more.count
            try:
                self._write(pending)
            except Exception as error:    # a bug must not kill the writer and hang flush()
                self.failed_rows += sum(item.count for item in pending)
                log.error("store_write_failed", reason=repr(error)[:300],
                          rows=sum(item.count for item in pending))
            for _ in pending:
                self.queue.task_done()
            if closing:
                return

    def _write(self, pending: Sequence[_Item]) -> None:
        sample_rows = [row for item in pending for row in item.samples]
        transition_rows = [row for item in pending for row in item.transitions]
        offset = max(item.offset for item in pending)
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                with self.engine.begin() as conn:
                    if sample_rows:
                        conn.exec_driver_sql(self._samples_sql, sample_rows)
                    if transition_rows:
                        conn.exec_driver_sql(self._transitions_sql, transition_rows)
                    conn.execute(_upsert_progress(self.dialect, offset))
                self.writes += 1
                self.write_seconds += time.perf_counter() - started
                self.written_rows += len(sample_rows) + len(transition_rows)
                return
            except (DataError, IntegrityError, ProgrammingError) as error:
                # these rows themselves are at fault, and retrying cannot help: write them
                # one by one, keeping all the others (the raw log still holds every sample)
                log.error("store_rows_refused", reason=str(error.orig)[:200],
                          rows=len(sample_rows) + len(transition_rows))
                self._write_one_by_one(sample_rows, transition_rows, offset)
                return
            except DBAPIError as error:
                # the database is away: wait and retry the same rows; nothing is dropped
                attempt += 1
                self.retries += 1
                ceiling = min(self.retry_max_s, self.retry_base_s * 2 ** min(attempt, 20))
                delay = ceiling / 2 + self.rng.uniform(0, ceiling / 2)
                log.warning("store_write_retry", attempt=attempt, delay_s=round(delay, 3),
                            rows=len(sample_rows), reason=str(error.orig)[:200])
                time.sleep(delay)

    def _write_one_by_one(self, sample_rows: list[tuple[Any, ...]],
                          transition_rows: list[tuple[Any, ...]], offset: int) -> None:
        for sql, rows in ((self._samples_sql, sample_rows),
                          (self._transitions_sql, transition_rows)):
            for row in rows:
                try:
                    with self.engine.begin() as conn:
                        conn.exec_driver_sql(sql, row)
                    self.written_rows += 1
                except (DataError, IntegrityError, ProgrammingError) as error:
                    self.failed_rows += 1
                    log.error("store_row_refused", row=repr(row)[:200],
                              reason=str(error.orig)[:200])
        with self.engine.begin() as conn:
            conn.execute(_upsert_progress(self.dialect, offset))

    def flush(self) -> None:
        """Wait until everything queued so far is written."""
        self.queue.join()

    def close(self) -> None:
        if self._thread.is_alive():
            self.queue.put(None)
            self._thread.join()
        self._stopped.set()


def _insert_ignore(dialect: str, table: Any) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert
    return sqlite_insert(table).on_conflict_do_nothing()


def _insert_ignore_sql(dialect: str, table: str, columns: Sequence[str],
                      on_conflict: str = "DO NOTHING") -> str:
    """Raw SQL for the bulk inserts: the driver's executemany on tuples is several times
    cheaper per row than Core's dict parameters, and these are the hot writes."""
    mark = "?" if dialect == "sqlite" else "%s"
    names = ", ".join(f'"{c}"' for c in columns)
    return (f"INSERT INTO {table} ({names}) VALUES ({', '.join(mark for _ in columns)}) "
            f"ON CONFLICT {on_conflict}")


def _upsert_progress(dialect: str, offset: int) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        pg = pg_insert(schema.progress).values(name="cleaned", value=offset)
        return pg.on_conflict_do_update(index_elements=["name"], set_={"value": offset})
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert
    lite = sqlite_insert(schema.progress).values(name="cleaned", value=offset)
    return lite.on_conflict_do_update(index_elements=["name"], set_={"value": offset})


def _redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
