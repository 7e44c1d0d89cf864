"""Crash recovery: a real child process is killed with SIGKILL mid-ingest, and a new fleet on
the same store finds everything it acknowledged.

The child (``tests/_crash_child.py``) ingests deterministic wire-format batches into a fleet
with an SQLite store (``sqlite:///…/fleet.db``) and a ``VirtualClock``, snapshotting every few
batches. It prints ``ack`` once ``ingest`` returned, and ``in`` from inside ``ingest`` (a
roll-up subscriber, after the batch was committed to the log), and waits for the parent's
``go`` after each line. So the parent, reading line by line (no sleeps; a watchdog kills the
child and fails the test after 60 s), knows where the child is when it sends SIGKILL, to this
child's pid only, in one of two scenarios, once enough batches and snapshots are behind it:

* ``between-batches``: right after an acknowledgement: the log holds exactly the
  acknowledged batches;
* ``inside-ingest``: inside the next ``ingest``, after its log commit, before it returned:
  the log holds one batch more than was acknowledged, and recovery must reflect it in full.

The store's files are kept as the kill left them, and each test recovers a fleet from a fresh
copy of them, its clock at the newest logged batch. The expectations come from a reference
classifier written here, and, independently, from a fleet without a store that was fed the
same batches and never crashed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from twin import OUTCOMES, Fleet, FleetModel, Sample, VirtualClock
from twin.store import schema
from twin.testing import assert_consistent
from twin.wire import unpack_batch

ROOT = Path(__file__).resolve().parent.parent
CHILD_PATH = Path(__file__).with_name("_crash_child.py")
MIN_ACKED = 30                  # batches the child must acknowledge before it is killed
MIN_SNAPSHOTS = 2               # ... and snapshots it must have taken
AFTER_SNAPSHOT = 3              # ... at least this many of them after the newest snapshot
WATCHDOG_S = 60.0               # the child is killed and the test fails after this long
BETWEEN_BATCHES = "between-batches"   # killed after an ack, before the next ingest
INSIDE_INGEST = "inside-ingest"       # killed inside ingest, after the log commit

STORED = frozenset(("accepted", "late", "anomalous"))     # outcomes with a twin_samples row
SAMPLE_KEY = tuple(column.name for column in schema.samples.primary_key.columns)


def _load_child() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_crash_child", CHILD_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


child = _load_child()


# -- running and killing the child ------------------------------------------------------------


@dataclass(frozen=True)
class LogRow:
    offset: int
    received_at: float
    source: str
    samples: int
    payload: bytes


@dataclass(frozen=True)
class Crash:
    """What a killed child left behind."""

    scenario: str
    directory: Path                        # the store's files, as the kill left them
    acked: list[int]                       # batch numbers acknowledged, in order
    digests: dict[int, str]                # batch number -> sha256 of the acknowledged payload
    snapshots: int                         # snapshots taken, per the last acknowledgement
    killed_inside: int | None              # the batch whose ingest the kill interrupted
    after_kill: list[str]                  # lines the child wrote after the kill (none)
    returncode: int | None
    stderr: str
    log: list[LogRow] = field(default_factory=list)

    @property
    def last(self) -> int:
        """The number of the newest batch in the log."""
        return len(self.log) - 1


def _copy_store(source: Path, target: Path) -> Path:
    """Copy the SQLite database and its write-ahead log (not the shared-memory index, which
    SQLite rebuilds from the WAL), so each test recovers from the state the kill left."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("fleet.db", "fleet.db-wal"):
        if (source / name).exists():
            shutil.copyfile(source / name, target / name)
    return target / "fleet.db"


def _read_log(database: Path) -> list[LogRow]:
    connection = sqlite3.connect(database)
    try:
        rows = connection.execute('SELECT "offset", received_at, source, samples, payload '
                                  'FROM twin_log ORDER BY "offset"').fetchall()
    finally:
        connection.close()
    return [LogRow(int(o), float(r), str(s), int(n), bytes(p)) for o, r, s, n, p in rows]


def _run_child_until_killed(directory: Path, scenario: str) -> Crash:
    """Run the child in lockstep and SIGKILL it where ``scenario`` says (see the module doc of
    ``_crash_child``): once it acknowledged ``MIN_ACKED`` batches and ``MIN_SNAPSHOTS``
    snapshots, at least ``AFTER_SNAPSHOT`` batches after the newest snapshot (so the recovery
    has a log to replay), it is killed either between two batches or inside the next
    ``ingest``, after that batch was committed to the log."""
    directory.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{directory / 'fleet.db'}"
    stderr_path = directory / "child.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, str(CHILD_PATH), url], cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
    timed_out = threading.Event()

    def watchdog() -> None:
        timed_out.set()
        proc.kill()                        # this child only, by its pid

    timer = threading.Timer(WATCHDOG_S, watchdog)
    timer.start()
    acked: list[int] = []
    digests: dict[int, str] = {}
    snapshots = since_snapshot = 0
    killed_inside: int | None = None
    after_kill: list[str] = []
    ready = killed = False
    try:
        assert proc.stdout is not None and proc.stdin is not None
        for raw in proc.stdout:            # ends at EOF: the child is dead
            line = raw.decode()
            if killed:
                after_kill.append(line)
                continue
            word, batch, *rest = line.split()
            if word == "ack":
                acked.append(int(batch))
                digests[int(batch)] = rest[0]
                since_snapshot = 0 if int(rest[1]) != snapshots else since_snapshot + 1
                snapshots = int(rest[1])
                ready = (len(acked) >= MIN_ACKED and snapshots >= MIN_SNAPSHOTS and
                         since_snapshot >= AFTER_SNAPSHOT)
                killed = ready and scenario == BETWEEN_BATCHES
            elif word == "in":
                killed = ready and scenario == INSIDE_INGEST
                killed_inside = int(batch) if killed else None
            else:
                pytest.fail(f"the child wrote {line!r}")
            if killed:
                os.kill(proc.pid, signal.SIGKILL)     # it is waiting for our "go"
            else:
                proc.stdin.write(b"go\n")
                proc.stdin.flush()
        returncode = proc.wait(timeout=WATCHDOG_S)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
    stderr_text = stderr_path.read_text(errors="replace")
    if timed_out.is_set():
        pytest.fail(f"the child did not get far enough within {WATCHDOG_S:g}s "
                    f"({len(acked)} batches acknowledged); its stderr:\n{stderr_text}")
    pristine = directory / "pristine"
    _copy_store(directory, pristine)
    log = _read_log(_copy_store(pristine, directory / "log-reader"))
    return Crash(scenario, pristine, acked, digests, snapshots, killed_inside, after_kill,
                 returncode, stderr_text, log)


@pytest.fixture(scope="module", params=[BETWEEN_BATCHES, INSIDE_INGEST])
def crash(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Crash:
    return _run_child_until_killed(tmp_path_factory.mktemp("crash"), str(request.param))


@pytest.fixture
def recovered(crash: Crash, tmp_path: Path) -> Iterator[Fleet]:
    """A fleet recovered from a copy of the crashed store, its clock at the newest batch."""
    database = _copy_store(crash.directory, tmp_path / "store")
    clock = VirtualClock(child.batch_time(max(crash.last, 0)))
    with Fleet(child.new_model(), store=f"sqlite:///{database}", clock=clock,
               snapshot_every_batches=child.SNAPSHOT_EVERY_BATCHES) as fleet:
        fleet.flush()
        yield fleet


@pytest.fixture
def control(crash: Crash) -> Iterator[Fleet]:
    """A fleet without a store, fed the logged batches at the same times: it never crashed."""
    model = child.new_model()
    clock = VirtualClock(child.START)
    with Fleet(model, clock=clock) as fleet:
        for k in range(len(crash.log)):
            fleet.advance(child.batch_time(k) - clock.now())
            fleet.ingest(child.payload(model, k))
        yield fleet


# -- the reference: what the logged batches imply ----------------------------------------------


@dataclass
class Shadow:
    """One asset as the reference sees it."""

    reported: dict[str, Any] | None = None
    last_ts: float | None = None
    last_seen: float | None = None


@dataclass
class Expected:
    assets: dict[str, Shadow]
    rows: dict[tuple[Any, ...], tuple[int, int]]   # primary key -> (outcome code, log offset)
    now: float


def _row_key(sample: Sample, outcome: str) -> tuple[Any, ...]:
    """The twin_samples primary key of a stored sample (an unknown key column fails here)."""
    values = {"ts": float(sample.ts), "asset_id": sample.asset_id,
              "flagged": int(outcome == "anomalous")}
    return tuple(values[name] for name in SAMPLE_KEY)


def _outcome(sample: Sample, tag: str, now: float, shadow: Shadow | None,
             skew_s: float, retention_s: float) -> str:
    """How ``on_sample`` classifies a sample (docs/wire-format.md, "Outcome classes")."""
    if tag == child.BAD or shadow is None:
        return "rejected"
    ts = sample.ts
    if ts > now + skew_s:
        return "future"
    if ts < now - retention_s:
        return "stale"
    if shadow.last_ts is not None and ts <= shadow.last_ts:
        if ts == shadow.last_ts:
            return "duplicate"
        return "anomalous" if tag == child.ODD else "late"
    return "anomalous" if tag == child.ODD else "accepted"


def _expected(crash: Crash) -> Expected:
    model = child.new_model()
    defaults = model.defaults
    assets = {asset_id: Shadow() for asset_id in model.assets}
    rows: dict[tuple[float, str], tuple[int, int]] = {}
    for k, entry in enumerate(crash.log):
        now = child.batch_time(k)
        for sample, tag in child.make_batch(model, k):
            shadow = assets.get(sample.asset_id) if isinstance(sample.asset_id, str) else None
            outcome = _outcome(sample, tag, now, shadow, defaults.allowed_skew_s,
                               defaults.retention_s)
            if outcome == "accepted":
                assert shadow is not None
                shadow.reported = {**(shadow.reported or {}), **sample.signals}
                shadow.last_ts = sample.ts
                shadow.last_seen = now
            if outcome in STORED:
                # the first sample with a key keeps its row: later ones conflict
                rows.setdefault(_row_key(sample, outcome),
                                (OUTCOMES.index(outcome), entry.offset))
    return Expected(assets, rows, child.batch_time(max(crash.last, 0)))


def _expected_state(model: FleetModel, shadow: Shadow, now: float) -> str:
    if shadow.last_seen is None:
        return "unknown"
    deadline = shadow.last_seen + model.defaults.offline_after_s
    return "offline" if deadline <= now else "online"


def _sample_rows(database: Path) -> dict[tuple[Any, ...], tuple[int, int]]:
    """twin_samples: primary key -> (outcome code, log offset)."""
    connection = sqlite3.connect(database)
    try:
        rows = connection.execute(f"SELECT {', '.join(SAMPLE_KEY)}, outcome, log_offset "
                                  "FROM twin_samples").fetchall()
    finally:
        connection.close()
    n = len(SAMPLE_KEY)
    return {tuple(row[:n]): (int(row[n]), int(row[n + 1])) for row in rows}


def _store_path(fleet: Fleet) -> Path:
    assert fleet.store is not None
    return Path(fleet.store.url.removeprefix("sqlite:///"))


# -- tests ------------------------------------------------------------------------------------


def test_the_child_is_killed_by_sigkill_after_acknowledging_batches_and_taking_snapshots(
        crash: Crash) -> None:
    assert crash.returncode == -signal.SIGKILL, crash.stderr
    assert crash.after_kill == []
    assert crash.acked == list(range(len(crash.acked))), "batches are acknowledged in order"
    assert len(crash.acked) >= MIN_ACKED
    assert crash.snapshots >= MIN_SNAPSHOTS
    assert "Traceback" not in crash.stderr
    if crash.scenario == INSIDE_INGEST:
        assert crash.killed_inside == len(crash.acked), "killed inside the next batch"
    else:
        assert crash.killed_inside is None


def test_every_acknowledged_batch_is_in_the_raw_log_in_order_and_at_most_one_more(
        crash: Crash) -> None:
    model = child.new_model()
    acked = len(crash.acked)
    assert acked <= len(crash.log) <= acked + 1, (
        f"{acked} batches acknowledged, {len(crash.log)} in the log")
    # killed inside ingest, the batch was committed to the log before the kill
    assert len(crash.log) == acked + (crash.scenario == INSIDE_INGEST)
    offsets = [row.offset for row in crash.log]
    assert offsets == sorted(set(offsets)), "log offsets grow strictly"
    for k, row in enumerate(crash.log):
        assert row.payload == child.payload(model, k), f"log entry {k} is batch {k}, verbatim"
        if k in crash.digests:
            assert hashlib.sha256(row.payload).hexdigest() == crash.digests[k]
        assert row.received_at == child.batch_time(k)
        assert row.source == child.SOURCE
        decoded = unpack_batch(row.payload)
        given = [sample for sample, _ in child.make_batch(model, k)]
        assert row.samples == decoded.size == len(given)
        # repr compares NaN equal to NaN; samples with a non-string id fail at the wire layer
        assert [repr(s) for s in decoded.samples] == [
            repr(s) for s in given if isinstance(s.asset_id, str)]


def test_after_a_flush_every_clean_late_and_anomalous_logged_sample_has_exactly_its_row(
        crash: Crash, recovered: Fleet) -> None:
    expected = _expected(crash)
    acknowledged = {
        key for key, (_, offset) in expected.rows.items()
        if offset <= crash.log[len(crash.acked) - 1].offset}
    rows = _sample_rows(_store_path(recovered))
    assert acknowledged <= set(rows), "an acknowledged sample lost its twin_samples row"
    assert rows == expected.rows
    codes = {code for code, _ in rows.values()}
    assert {OUTCOMES.index(name) for name in STORED} <= codes, "the stream makes all three"


def test_each_asset_recovers_the_state_its_logged_samples_imply(
        crash: Crash, recovered: Fleet) -> None:
    expected = _expected(crash)
    model = recovered.model
    states: set[str] = set()
    for asset_id, shadow in expected.assets.items():
        view = recovered.asset(asset_id)
        assert view.reported == (shadow.reported or {}), asset_id
        assert view.last_sample_ts == shadow.last_ts, asset_id
        assert view.last_seen == shadow.last_seen, asset_id
        assert view.state == _expected_state(model, shadow, expected.now), asset_id
        states.add(view.state)
    # the stream is built to exercise all three: online, silent (offline), never valid
    assert states == {"online", "offline", "unknown"}


def test_recovered_rollups_equal_their_recount_and_those_of_a_fleet_that_never_crashed(
        recovered: Fleet, control: Fleet) -> None:
    assert recovered.clock.now() == control.clock.now()
    assert_consistent(recovered)
    assert recovered.rollups() == control.rollups()
    for asset_id in sorted(control.model.assets):
        assert recovered.asset(asset_id) == control.asset(asset_id)


def test_recovery_loads_the_newest_snapshot_and_replays_only_the_log_after_it(
        crash: Crash, recovered: Fleet) -> None:
    connection = sqlite3.connect(_store_path(recovered))
    try:
        snapshots = connection.execute("SELECT log_offset FROM twin_snapshots").fetchall()
    finally:
        connection.close()
    assert len(snapshots) == 1, "older snapshots are dropped"
    offsets = [row.offset for row in crash.log]
    snapshot_batch = offsets.index(int(snapshots[0][0]))
    # a snapshot follows at least every SNAPSHOT_EVERY_BATCHES batches (timer transitions
    # between batches count towards it too, so it may come sooner)
    assert snapshot_batch >= len(crash.log) - 1 - child.SNAPSHOT_EVERY_BATCHES
    metrics = recovered.metrics()
    assert metrics["replayed_batches"] == len(crash.log) - 1 - snapshot_batch


def test_every_transition_of_the_logged_batches_is_in_twin_transitions(
        recovered: Fleet, control: Fleet) -> None:
    connection = sqlite3.connect(_store_path(recovered))
    try:
        stored = set(connection.execute(
            "SELECT at, asset_id, old, new, reason FROM twin_transitions").fetchall())
    finally:
        connection.close()
    happened = {tuple(t) for t in control.transitions()}
    assert len(happened) < 1000, "the control fleet keeps every transition"
    assert stored == happened
    assert {t[3] for t in stored} == {"online", "offline"}


def test_a_recovered_fleet_takes_the_next_batch_like_a_fleet_that_never_crashed(
        crash: Crash, recovered: Fleet, control: Fleet) -> None:
    model = recovered.model
    for k in range(len(crash.log), len(crash.log) + 3):
        for fleet in (recovered, control):
            fleet.advance(child.batch_time(k) - fleet.clock.now())
        after_crash = recovered.ingest(child.payload(model, k))
        never_crashed = control.ingest(child.payload(model, k))
        assert after_crash.counts() == never_crashed.counts(), k
    assert_consistent(recovered)
    assert recovered.rollups() == control.rollups()
    for asset_id in sorted(model.assets):
        assert recovered.asset(asset_id) == control.asset(asset_id)


def test_the_reference_agrees_with_a_fleet_that_never_crashed(
        crash: Crash, control: Fleet) -> None:
    """Guards the reference itself: if it drifted from the product's rules, the tests above
    would compare against the wrong thing."""
    expected = _expected(crash)
    for asset_id, shadow in expected.assets.items():
        view = control.asset(asset_id)
        assert (view.reported, view.last_sample_ts, view.last_seen) == (
            shadow.reported or {}, shadow.last_ts, shadow.last_seen), asset_id
    assert not any(math.isnan(key[SAMPLE_KEY.index("ts")]) for key in expected.rows)
