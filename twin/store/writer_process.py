"""The store's derived-row writer, a process of its own (``python -P writer_process.py``).

It builds the ``twin_samples`` and ``twin_transitions`` rows of each logged batch and writes
them with the driver's ``executemany``, on a core of its own: in the fleet's process, row
building and binding competed with ingestion for the interpreter lock. It is started by
:class:`twin.store.writer.Writer`, which also documents the protocol; it imports only the
standard library, msgpack and the database driver (not the ``twin`` package), so it starts
in a few tens of milliseconds. For the same reason it is one file, over the few hundred lines
modules keep to elsewhere, and reads wire rows (``[asset_id, ts, seq, signals]``) itself
rather than through :mod:`twin.wire` (a test holds the two to the same stored outcomes).

Messages are frames (a 4-byte little-endian length, then msgpack) on stdin, answered on the
descriptor that was stdout (stdout itself then goes to stderr, so a stray print cannot
corrupt a frame). At EOF on stdin, or when its parent is gone, it exits at once without
writing what it holds: the fleet that sent it is dead, and a restarted fleet derives those
rows again from the raw log (it replays from its newest snapshot, and a snapshot is taken
only once this writer caught up).
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import random
import signal
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

HEADER: Final = struct.Struct("<I")
# parent -> writer: [kind, ...]
BATCH: Final = 0        # [0, seq, offset, received_at, wire payload, outcomes, transitions]
ROWS: Final = 1         # [1, seq, offset, received_at, [[asset_id, ts, seq, signals]...], ...]
FLUSH: Final = 2        # [2]: write what is pending now, without waiting for the interval
CLOSE: Final = 3        # [3]: write everything, acknowledge, exit
# writer -> parent: [committed seq, rows, writes, write seconds, retries, failed rows, logs]
# (counts are increments since the previous message; logs are [level, event, fields])

ANOMALOUS: Final = 5
STORED: Final = frozenset((0, 2, ANOMALOUS))        # accepted, late, anomalous (see _samples)
SAMPLE_COLUMNS: Final = ("ts", "asset_id", "received_at", "flagged", "outcome", "log_offset",
                         "power_kw", "signals")
TRANSITION_COLUMNS: Final = ("log_offset", "at", "asset_id", "old", "new", "reason")
IDLE_CHECK_S: Final = 1.0           # how often an idle writer checks that its parent lives


def insert_sql(dialect: str, table: str, columns: Sequence[str],
               on_conflict: str = "DO NOTHING") -> str:
    mark = "?" if dialect == "sqlite" else "%s"
    names = ", ".join(f'"{c}"' for c in columns)
    return (f"INSERT INTO {table} ({names}) VALUES ({', '.join(mark for _ in columns)}) "
            f"ON CONFLICT {on_conflict}")


def samples_sql(dialect: str) -> str:
    # a clean sample replaces a flagged one of the same time; nothing else changes
    return insert_sql(dialect, "twin_samples", SAMPLE_COLUMNS, on_conflict=(
        "(ts, asset_id) DO UPDATE SET flagged = excluded.flagged, "
        "outcome = excluded.outcome, received_at = excluded.received_at, "
        "log_offset = excluded.log_offset, power_kw = excluded.power_kw, "
        "signals = excluded.signals "
        "WHERE twin_samples.flagged = 1 AND excluded.flagged = 0"))


def progress_sql(dialect: str) -> str:
    mark = "?" if dialect == "sqlite" else "%s"
    return (f"INSERT INTO twin_progress (name, value) VALUES ('cleaned', {mark}) "
            f"ON CONFLICT (name) DO UPDATE SET value = excluded.value")


def _pack(values: dict[str, Any]) -> bytes | None:
    if not values:
        return None
    packed: bytes = msgpack.packb(values, use_bin_type=True, default=repr)
    return packed


def sample_rows(offset: int, received_at: float, rows: Sequence[Any], outcomes: bytes
                ) -> list[tuple[Any, ...]]:
    """twin_samples rows of the stored outcomes; ``rows`` are wire rows [asset_id, ts, seq,
    signals], one per outcome code."""
    if len(rows) != len(outcomes):
        raise ValueError(f"{len(rows)} samples but {len(outcomes)} outcome codes")
    out: list[tuple[Any, ...]] = []
    append = out.append
    stored = STORED
    for (asset_id, ts, _, signals), code in zip(rows, outcomes, strict=True):
        if code in stored:
            power = signals.get("power_kw")
            if len(signals) == 1 and power is not None:
                others = None                     # the common case: no blob to pack
            else:
                others = _pack({k: v for k, v in signals.items() if k != "power_kw"})
            if power is not None and type(power) is not float:
                power = float(power) if type(power) is int else None
            append((ts, asset_id, received_at, int(code == ANOMALOUS), code, offset, power,
                    others))
    return out


@dataclass(slots=True)
class Item:
    seq: int
    offset: int
    samples: list[tuple[Any, ...]]
    transitions: list[tuple[Any, ...]]


@dataclass(slots=True)
class Counts:
    rows: int = 0
    writes: int = 0
    seconds: float = 0.0
    retries: int = 0
    failed: int = 0
    logs: list[list[Any]] = field(default_factory=list)


class ParentGone(BaseException):     # not an Exception: nothing may catch it on the way out
    """EOF on the input, or the parent process died."""


class Channel:
    """Frames in from the parent, frames out to it.

    A thread reads the input as it comes, even while the writer is inside a long database
    call: the fleet's writes to the pipe then never block on a full pipe (which would hang
    ``ingest`` instead of refusing the batch with ``StoreBusy``); what is buffered here is
    bounded by the fleet's limit on batches in flight.
    """

    def __init__(self, fd_in: int, fd_out: int) -> None:
        self.fd_in = fd_in
        self.fd_out = fd_out
        self.parent = os.getppid()
        self.buffer = bytearray()
        self.chunks: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        threading.Thread(target=self._pump, name="twin-writer-input", daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd_in, 1 << 20)
            except OSError:
                chunk = b""
            self.chunks.put(chunk)
            if not chunk:
                return                              # EOF: the parent is gone

    def _add(self, chunk: bytes) -> None:
        if not chunk:
            raise ParentGone
        self.buffer += chunk

    def wait(self, timeout_s: float) -> list[Any]:
        """Frames that arrive within ``timeout_s`` (all that are ready, if any)."""
        try:
            self._add(self.chunks.get(timeout=max(0.0, timeout_s)))
        except queue.Empty:
            if os.getppid() != self.parent:
                raise ParentGone from None
            return []
        return self.read_ready()

    def read_ready(self) -> list[Any]:
        """Every frame that came in so far."""
        while True:
            try:
                self._add(self.chunks.get_nowait())
            except queue.Empty:
                break
        frames: list[Any] = []
        buffer = self.buffer
        start = 0
        while len(buffer) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, start)
            end = start + HEADER.size + size
            if len(buffer) < end:
                break
            frames.append(msgpack.unpackb(memoryview(buffer)[start + HEADER.size:end],
                                          raw=False, strict_map_key=False, use_list=True))
            start = end
        del buffer[:start]
        return frames

    def read_first(self) -> tuple[Any, list[Any]]:
        """The first frame, and any that came with it."""
        while True:
            frames = self.wait(IDLE_CHECK_S)
            if frames:
                return frames[0], frames[1:]

    def send(self, message: Sequence[Any]) -> None:
        body = msgpack.packb(message, use_bin_type=True, default=repr)
        view = memoryview(HEADER.pack(len(body)) + body)
        while view:
            view = view[os.write(self.fd_out, view):]


class FileLock:
    """The lock around SQLite write transactions, shared by the fleet's process and the writer
    process (``flock`` on ``<path>``, released by the kernel if its holder dies).

    A waiter sleeps until the holder unlocks, instead of polling in SQLite's busy handler
    (which sleeps 1, 2, 5, 10... ms between tries). A turnstile (``<path>-turn``) makes the
    hand-over fair: whoever waits for the lock holds the turnstile, so the writer, between two
    of its transactions, cannot take the lock again before the fleet's waiting log append.
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.turn = os.open(f"{path}-turn", os.O_RDWR | os.O_CREAT, 0o644)

    @contextmanager
    def held(self) -> Iterator[None]:
        fcntl.flock(self.turn, fcntl.LOCK_EX)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        finally:
            fcntl.flock(self.turn, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.turn)


class Database:
    """The driver's connection, opened lazily and again after it was lost."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.dialect: str = config["dialect"]
        self.config = config
        self.conn: Any = None
        self.lock = FileLock(config["lock_path"]) if config.get("lock_path") else None
        if self.dialect == "sqlite":
            import sqlite3
            self.driver: Any = sqlite3
        else:
            import psycopg
            self.driver = psycopg
        driver = self.driver
        # these rows themselves are at fault: retrying cannot help
        self.refused: tuple[type[BaseException], ...] = (
            driver.DataError, driver.IntegrityError, driver.ProgrammingError, OverflowError)

    def connect(self) -> Any:
        if self.conn is None:
            if self.dialect == "sqlite":
                conn = self.driver.connect(self.config["database"], isolation_level=None,
                                           timeout=self.config["busy_timeout_s"])
                # NORMAL, not FULL: a derived commit reaches the disk with the raw log's next
                # (fsync'd) commit, as the write-ahead log is one ordered file; a snapshot's
                # commit comes after every row it relies on. Rows lost to a power cut were
                # not yet covered by a snapshot, so a restart derives them again.
                conn.execute("PRAGMA synchronous=NORMAL")
            else:
                conn = self.driver.connect(**self.config["connect"])
                # the same reasoning for PostgreSQL: a later synchronous commit (the log's,
                # a snapshot's) flushes the write-ahead log up to and past this one
                conn.execute("SET synchronous_commit = off")
                conn.commit()
            self.conn = conn
        return self.conn

    def discard(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with suppress(Exception):       # it is being dropped for being broken
                conn.close()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One write transaction (on SQLite, holding the lock shared with the log append)."""
        conn = self.connect()
        with self.lock.held() if self.lock is not None else nullcontext():
            if self.dialect == "sqlite":
                conn.execute("BEGIN IMMEDIATE")
            cursor = conn.cursor()
            try:
                yield cursor
                if self.dialect == "sqlite":
                    conn.execute("COMMIT")
                else:
                    conn.commit()
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        try:
            if self.dialect == "sqlite":
                if self.conn is not None and self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
            elif self.conn is not None:
                self.conn.rollback()
        except Exception:
            self.discard()


class DriverLog(logging.Handler):
    """The driver's own log records, into this writer's structured log.

    psycopg warns through :mod:`logging` (``error ignored terminating <psycopg.Pipeline
    [BAD]>: the connection is lost`` when the server goes away in the middle of a write);
    with no handler, Python printed that as a bare line on the fleet's stderr. Here it
    becomes a ``store_driver_message`` event the fleet re-emits with its own log."""

    def __init__(self, writer: WriterProcess) -> None:
        super().__init__(logging.INFO)
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else (
            "warning" if record.levelno >= logging.WARNING else "info")
        self.writer.log(level, "store_driver_message", driver=record.name,
                        message=" ".join(record.getMessage().split())[:300])

    @classmethod
    def install(cls, writer: WriterProcess, name: str) -> None:
        logger = logging.getLogger(name)
        logger.addHandler(cls(writer))
        logger.setLevel(logging.INFO)
        logger.propagate = False


class WriterProcess:
    def __init__(self, channel: Channel, config: dict[str, Any]) -> None:
        self.channel = channel
        self.db = Database(config)
        dialect = self.db.dialect
        self.samples_sql = samples_sql(dialect)
        self.transitions_sql = insert_sql(dialect, "twin_transitions", TRANSITION_COLUMNS)
        self.progress_sql = progress_sql(dialect)
        self.flush_rows: int = config["flush_rows"]
        self.flush_interval_s: float = config["flush_interval_s"]
        self.chunk_rows: int = config["chunk_rows"]
        self.retry_base_s: float = config["retry_base_s"]
        self.retry_max_s: float = config["retry_max_s"]
        self.rng = random.Random(config["seed"])
        self.pending: list[Item] = []
        self.pending_rows = 0
        self.deadline = 0.0
        self.hurry = False          # a flush was asked for
        self.closing = False
        self.last_seq = 0           # the newest batch received
        self.acked = 0              # the newest batch written
        self.counts = Counts()
        DriverLog.install(self, self.db.driver.__name__)

    def run(self) -> None:
        while True:
            if self.pending and (self.hurry or self.closing or
                                 self.pending_rows >= self.flush_rows or
                                 time.monotonic() >= self.deadline):
                self.write()
                continue
            if self.closing:
                self.send_counts(self.last_seq)
                return
            timeout = (max(0.0, self.deadline - time.monotonic()) if self.pending
                       else IDLE_CHECK_S)
            self.take(self.channel.wait(timeout))

    def take(self, frames: list[Any]) -> None:
        for frame in frames:
            kind = frame[0]
            if kind in (BATCH, ROWS):
                _, seq, offset, received_at, data, outcomes, transitions = frame
                try:
                    rows = msgpack.unpackb(data, raw=False, strict_map_key=False,
                                           use_list=True)[3] if kind == BATCH else data
                    samples = sample_rows(offset, received_at, rows, outcomes)
                except Exception as error:     # a bug must not kill the writer
                    samples = []
                    self.counts.failed += sum(1 for code in outcomes if code in STORED)
                    self.log("error", "store_rows_unreadable", reason=repr(error)[:300],
                             offset=offset)
                if not self.pending:
                    self.deadline = time.monotonic() + self.flush_interval_s
                self.pending.append(Item(seq, offset, samples, [
                    (offset, *t) for t in transitions]))
                self.pending_rows += len(samples) + len(transitions)
                self.last_seq = seq
            elif kind == FLUSH:
                self.hurry = True
            elif kind == CLOSE:
                self.closing = True

    def log(self, level: str, event: str, **fields: Any) -> None:
        self.counts.logs.append([level, event, fields])

    def send_counts(self, seq: int) -> None:
        c = self.counts
        self.channel.send([seq, c.rows, c.writes, c.seconds, c.retries, c.failed, c.logs])
        self.counts = Counts()

    def write(self) -> None:
        pending, self.pending, self.pending_rows, self.hurry = self.pending, [], 0, False
        samples = [row for item in pending for row in item.samples]
        transitions = [row for item in pending for row in item.transitions]
        offset = max(item.offset for item in pending)
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                self.write_rows(samples, transitions, offset)
                self.counts.writes += 1
                self.counts.seconds += time.perf_counter() - started
                self.counts.rows += len(samples) + len(transitions)
                break
            except self.db.refused as error:
                self.log("error", "store_rows_refused", reason=str(error)[:200],
                         rows=len(samples) + len(transitions))
                self.write_one_by_one(samples, transitions, offset)
                break
            except self.db.driver.Error as error:
                # the database is away: wait and retry the same rows; nothing is dropped
                if self.db.dialect != "sqlite":
                    self.db.discard()         # a lost server connection is not reused
                attempt += 1
                ceiling = min(self.retry_max_s, self.retry_base_s * 2 ** min(attempt, 20))
                delay = ceiling / 2 + self.rng.uniform(0, ceiling / 2)
                self.counts.retries += 1
                self.log("warning", "store_write_retry", attempt=attempt,
                         delay_s=round(delay, 3), rows=len(samples), reason=str(error)[:200])
                self.send_counts(self.acked)
                self.pause(delay)
            except Exception as error:        # a bug must not kill the writer or hang flush()
                self.counts.failed += len(samples) + len(transitions)
                self.log("error", "store_write_failed", reason=repr(error)[:300],
                         rows=len(samples) + len(transitions))
                break
        self.acked = pending[-1].seq
        self.send_counts(self.acked)

    def pause(self, seconds: float) -> None:
        """Back off, still reading the input (a dead parent ends the wait and the process)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.take(self.channel.wait(left))

    def write_rows(self, samples: list[tuple[Any, ...]], transitions: list[tuple[Any, ...]],
                   offset: int) -> None:
        """In transactions of ``chunk_rows`` on SQLite, so the raw-log append waits for at most
        one of them; the last one records the offset (``twin_progress.cleaned``)."""
        chunk = self.chunk_rows if self.db.dialect == "sqlite" else max(1, len(samples))
        start = 0
        while True:
            part = samples[start:start + chunk]
            start += chunk
            last = start >= len(samples)
            with self.db.transaction() as cursor:
                if part:
                    cursor.executemany(self.samples_sql, part)
                if last:
                    if transitions:
                        cursor.executemany(self.transitions_sql, transitions)
                    cursor.execute(self.progress_sql, (offset,))
            if last:
                return
            self.take(self.channel.read_ready())    # take what came in meanwhile

    def write_one_by_one(self, samples: list[tuple[Any, ...]],
                         transitions: list[tuple[Any, ...]], offset: int) -> None:
        for sql, rows in ((self.samples_sql, samples), (self.transitions_sql, transitions)):
            for row in rows:
                try:
                    with self.db.transaction() as cursor:
                        cursor.execute(sql, row)
                    self.counts.rows += 1
                except self.db.refused as error:
                    self.counts.failed += 1
                    self.log("error", "store_row_refused", row=repr(row)[:200],
                             reason=str(error)[:200])
        with self.db.transaction() as cursor:
            cursor.execute(self.progress_sql, (offset,))


def main() -> None:
    # a terminal's Ctrl-C is for the fleet, which stops this process by closing its input
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd_in, fd_out = os.dup(0), os.dup(1)
    os.dup2(2, 1)                      # stray prints go to stderr, never into a frame
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    channel = Channel(fd_in, fd_out)
    try:
        config, more = channel.read_first()
        writer = WriterProcess(channel, config)
        writer.take(more)
        writer.run()
    except (ParentGone, BrokenPipeError):
        os._exit(0)                    # the fleet is gone: nothing to write for (see above)


if __name__ == "__main__":
    main()
    sys.exit(0)
