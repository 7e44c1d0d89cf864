"""The durable store (SQLAlchemy 2): raw log, derived tables, snapshots.

Writes take two paths:

* the **raw log** append is synchronous and committed (fsync'd on SQLite: WAL with
  ``synchronous=FULL``) before ``Fleet.ingest`` returns: what is acknowledged is durable;
* **derived rows** (classified samples, state transitions) are built and written by a writer
  *process* (:mod:`twin.store.writer`, :mod:`twin.store.writer_process`), on a core of its
  own, which
  batches them (size or time, whichever first) and retries with exponential backoff and
  jitter while the database is unavailable, losing nothing. When ``queue_batches`` batches
  are in flight, ingest waits (up to ``busy_timeout_s``) before it appends anything, then
  raises :class:`StoreBusy`: memory never grows without bound, and a refused batch is not
  acknowledged.

A log append that fails for ``busy_timeout_s`` marks the store *down*: until an append
succeeds again, each append makes a single attempt and ``ingest`` refuses at once instead of
waiting out the timeout again (a refused connection answers in microseconds; on PostgreSQL a
connection or statement that hangs gives up after ``statement_timeout_s``).

Each derived batch is committed with the log offset it covers (``twin_progress.cleaned``); a
snapshot is taken only once the writer has caught up, so a restart replays the log from the
newest snapshot's offset. Replays are idempotent (conflicting rows are ignored).

On SQLite, the writes of this process and of the writer process take a shared file lock
(:class:`twin.store.writer_process.FileLock`, ``<database>-twinlock``) around their transactions,
so that each waits exactly as long as the other's transaction lasts.
"""

from __future__ import annotations

import inspect
import math
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, create_engine, event, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from twin.core.errors import TwinError
from twin.store import schema
from twin.store.writer import StoreBusy, StoreUnavailable, Writer
from twin.store.writer_process import FileLock

log = structlog.get_logger("twin.store")

__all__ = ["LogEntry", "Snapshot", "Store", "StoreBusy", "StoreUnavailable", "StoredVersion",
           "engine_for", "open_store"]


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


def engine_for(url: str, statement_timeout_s: float | None = None) -> Engine:
    """An engine for ``url``; SQLite files get WAL, full sync and a busy timeout. On
    PostgreSQL, ``statement_timeout_s`` bounds every statement of its connections, and their
    connection attempts (unless the URL sets ``connect_timeout``)."""
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
    if statement_timeout_s is None or parsed.get_backend_name() != "postgresql":
        return create_engine(url, pool_pre_ping=True)
    # libpq counts whole seconds, at least 2
    connect = ({} if "connect_timeout" in parsed.query else
               {"connect_timeout": max(2, math.ceil(statement_timeout_s))})
    engine = create_engine(url, pool_pre_ping=True, connect_args=connect)
    timeout_ms = max(1, int(statement_timeout_s * 1000))

    @event.listens_for(engine, "connect")
    def _timeout(dbapi_connection: Any, _record: Any) -> None:
        # a lock held elsewhere, or a server that stopped answering, must not hang the fleet
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = {timeout_ms}")
        dbapi_connection.commit()

    return engine


class Store:
    """One fleet's store. ``Store(url)`` creates the tables it needs and starts the writer
    process (about 25 ms until it answers; nothing waits for that unless it must).

    ``queue_batches``: batches in flight to the writer before ingest waits, then refuses;
    ``flush_rows`` / ``flush_interval_s``: the writer writes when it holds this many rows or
    its oldest is this old; ``chunk_rows``: rows per SQLite transaction (the longest a log
    append waits for the writer); ``busy_timeout_s``: how long a log append retries, ingest
    waits for room, and the writer waits for SQLite's lock, before giving up;
    ``statement_timeout_s`` (PostgreSQL; default ``busy_timeout_s``): the longest one
    statement or connection attempt of this process may take; ``retry_base_s`` /
    ``retry_max_s`` / ``seed``: the writer's exponential backoff with jitter while the database
    is away. ``Fleet(model, store=url, store_options={...})`` passes the same options.
    """

    def __init__(self, url: str, *, queue_batches: int = 64, flush_rows: int = 20_000,
                 flush_interval_s: float = 0.2, busy_timeout_s: float = 10.0,
                 statement_timeout_s: float | None = None,
                 retry_base_s: float = 0.05, retry_max_s: float = 5.0, seed: int = 0,
                 chunk_rows: int = 2_000) -> None:
        for name, value in (("busy_timeout_s", busy_timeout_s),
                            ("statement_timeout_s", statement_timeout_s)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self.url = url
        self.busy_timeout_s = busy_timeout_s
        self.statement_timeout_s = (busy_timeout_s if statement_timeout_s is None
                                    else statement_timeout_s)
        self.engine = engine_for(url, self.statement_timeout_s)
        self.dialect = self.engine.dialect.name
        self.down = False          # the last log append failed: the next one tries only once
        schema.metadata.create_all(self.engine)
        self._log_conn = self.engine.connect()
        mark = "?" if self.dialect == "sqlite" else "%s"
        # the hot append as plain SQL: Core's statement handling costs more than the insert
        self._append_sql = (f'INSERT INTO twin_log (received_at, source, samples, payload) '
                            f'VALUES ({mark}, {mark}, {mark}, {mark}) RETURNING "offset"')
        self._log_lock = threading.Lock()
        config: dict[str, Any] = {
            "dialect": self.dialect, "flush_rows": flush_rows,
            "flush_interval_s": flush_interval_s, "retry_base_s": retry_base_s,
            "retry_max_s": retry_max_s, "seed": seed, "chunk_rows": chunk_rows}
        self._file_lock: FileLock | None = None
        if self.dialect == "sqlite":
            database = str(self.engine.url.database)
            lock_path = f"{database}-twinlock"
            self._file_lock = FileLock(lock_path)
            config.update(database=database, busy_timeout_s=busy_timeout_s, lock_path=lock_path)
        else:
            _, params = self.engine.dialect.create_connect_args(self.engine.url)
            # plain values only (SQLAlchemy adds its own adapters, which the writer needs not)
            config["connect"] = {k: v for k, v in params.items()
                                 if isinstance(v, str | int | float | bool)}
        try:
            self.writer = Writer(config, queue_batches=queue_batches)
        except BaseException:
            self._release()
            raise

    def _exclusive(self) -> AbstractContextManager[None]:
        """Hold the lock shared with the writer process (SQLite only)."""
        return self._file_lock.held() if self._file_lock is not None else nullcontext()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A write transaction on a pooled connection, under the shared file lock."""
        with self._exclusive(), self.engine.begin() as conn:
            yield conn

    # -- the raw log (synchronous) -----------------------------------------------------------

    def append(self, received_at: float, source: str, payload: bytes, count: int) -> int:
        """Append a batch to the raw log and commit; returns its offset. Retries for up to
        ``busy_timeout_s``, or tries once while the store is known to be down."""
        with self._log_lock:
            deadline = time.monotonic() + (0.0 if self.down else self.busy_timeout_s)
            attempt = 0
            while True:
                try:
                    with self._exclusive():
                        offset = self._log_conn.exec_driver_sql(
                            self._append_sql, (received_at, source, count, payload)
                        ).scalar_one()
                        self._log_conn.commit()
                except DBAPIError as error:
                    with suppress(DBAPIError):      # a lost connection cannot roll back
                        self._log_conn.rollback()
                    attempt += 1
                    delay = min(1.0, 0.02 * 2 ** attempt)
                    if time.monotonic() + delay > deadline:
                        raise self._unavailable(error) from None
                    log.warning("log_append_retry", attempt=attempt, reason=str(error.orig))
                    time.sleep(delay)
                    continue
                if self.down:
                    self.down = False
                    log.info("store_back", url=_redact(self.url))
                return int(offset)

    def _unavailable(self, error: DBAPIError) -> StoreUnavailable:
        reason = " ".join(str(error.orig).split())
        if not self.down:
            self.down = True
            log.error("store_down", url=_redact(self.url), reason=reason,
                      action="refuse batches at once until an append succeeds")
            return StoreUnavailable(f"could not append to the log at {_redact(self.url)} "
                                    f"within {self.busy_timeout_s:g}s: {reason}")
        return StoreUnavailable(f"the store at {_redact(self.url)} is down (tried once: "
                                f"{reason}); nothing of this batch was accepted, retry later")

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
        """Write ``snapshot`` and drop older ones; :class:`StoreUnavailable` if the database
        refused."""
        try:
            with self._begin() as conn:
                conn.execute(insert(schema.snapshots).values(
                    log_offset=snapshot.log_offset, taken_at=snapshot.taken_at,
                    model_version=snapshot.model_version, state=snapshot.state))
                # older snapshots are no longer needed: the log holds everything after it
                conn.execute(schema.snapshots.delete().where(
                    schema.snapshots.c.log_offset < snapshot.log_offset))
        except DBAPIError as error:
            raise StoreUnavailable(f"could not save a snapshot at {_redact(self.url)}: "
                                   f"{' '.join(str(error.orig).split())}") from None

    def latest_snapshot(self) -> Snapshot | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(schema.snapshots).order_by(
                schema.snapshots.c.log_offset.desc()).limit(1)).first()
        if row is None:
            return None
        return Snapshot(int(row.log_offset), row.taken_at, row.model_version, bytes(row.state))

    def record_command(self, at: float, asset_id: str, log_offset: int, desired_json: str
                       ) -> int:
        with self._begin() as conn:
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
        with self._begin() as conn:
            conn.execute(_insert_ignore(self.dialect, schema.model_versions).values(
                version=version, effective=effective, recorded_at=recorded_at,
                log_offset=log_offset, change=change_json))
            if scheduled_id is not None:
                conn.execute(schema.scheduled.update().where(
                    schema.scheduled.c.id == scheduled_id).values(done=1))

    def schedule_change(self, effective: float, change_json: str) -> int:
        with self._begin() as conn:
            return int(conn.execute(insert(schema.scheduled).values(
                effective=effective, change=change_json, done=0)
                .returning(schema.scheduled.c.id)).scalar_one())

    def finish_scheduled(self, scheduled_id: int) -> None:
        with self._begin() as conn:
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
        """Write everything still queued, stop the writer process, then close."""
        self.writer.close()
        self._release()

    def _release(self) -> None:
        with self._log_lock:
            self._log_conn.close()
        self.engine.dispose()
        if self._file_lock is not None:
            self._file_lock.close()
            self._file_lock = None


def open_store(url: str, options: Mapping[str, Any] | None = None) -> Store:
    """``Store(url, **options)``, with an error naming an option that is not one."""
    known = [name for name, param in inspect.signature(Store).parameters.items()
             if param.kind is inspect.Parameter.KEYWORD_ONLY]
    for name in options or {}:
        if name not in known:
            raise TypeError(f"store_options: {name!r} is not an option of the store; "
                            f"valid: {', '.join(known)}")
    return Store(url, **(options or {}))


def _insert_ignore(dialect: str, table: Any) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert
    return sqlite_insert(table).on_conflict_do_nothing()


def _redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
