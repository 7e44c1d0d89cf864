"""Property tests of ingestion: random streams against a reference classifier.

A stream is built from a small pool of valid (asset, device time) keys, so the same key comes
back with the same or other values (duplicates, late re-sends), plus samples whose device time
is relative to the clock at their ingest: beyond the allowed skew (future), within it, exactly
at it, and older than the retention (stale replays) or exactly at it. Values are in bounds,
out of bounds or NaN/infinite (anomalous); garbage has an unknown or non-string asset id, a
device time that is not a finite number, signals that are not a map, empty, unknown or of the
wrong type, a sequence number that is not an integer, or is no ``Sample`` at all. The stream
is shuffled, split into batches at random, each batch ingested as ``Sample`` objects or as
wire-format bytes, the clock advancing a little before each batch (never enough for an asset
to go offline).

The reference (``_Reference``) follows ``AssetActor.on_sample`` and docs/wire-format.md: a
sample is valid if it is well-formed, its device time is finite, not beyond ``now +
allowed_skew_s`` and not before ``now - retention_s`` (``now``: the clock at its ingest), its
values are in bounds, and it is newer than the newest sample accepted before it. Rows of
twin_samples are keyed by the table's primary key; the first sample with a key keeps it.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from twin import OUTCOMES, Fleet, FleetModel, IngestReport, Sample, Store, VirtualClock
from twin.store import schema
from twin.testing import assert_consistent, fleet_dict
from twin.wire import pack_batch, unpack_batch

START = 1767225600.0            # 2026-01-01T00:00:00Z
MODEL = fleet_dict(owners=1, regions=1, sites=2, assets=2, seed=1)   # turbines, charger, battery
SKEW_S = 300.0                  # Defaults.allowed_skew_s
RETENTION_S = 30 * 86400.0      # Defaults.retention_s
OFFLINE_AFTER_S = 30.0          # fleet_dict's default
MAX_BATCHES = 8
ADVANCES = (0.0, 0.25, 1.0, 3.0)   # clock steps before a batch: 8 x 3 s < OFFLINE_AFTER_S
MAX_DRIFT_S = MAX_BATCHES * max(ADVANCES)
STORED_OUTCOMES = frozenset(("accepted", "late", "anomalous"))      # rows in twin_samples
SAMPLE_KEY = tuple(column.name for column in schema.samples.primary_key.columns)

OK, ODD, BAD, JUNK = "ok", "anomalous", "garbage", "junk"


def _model() -> FleetModel:
    return FleetModel.from_dict(MODEL)


_SPECS = {spec.id: spec for spec in _model().assets.values()}
IDS = tuple(sorted(_SPECS))


# -- what a stream is made of --------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One element of a stream. ``ts`` is absolute, or (``relative``) an offset from the clock
    when its batch is ingested. ``tag`` says what it is whatever its time: ``OK`` (in bounds),
    ``ODD`` (out of bounds), ``BAD`` (malformed: rejected) or ``JUNK`` (not a ``Sample``:
    ``junk`` is what is ingested)."""

    asset: Any
    ts: Any
    signals: Any
    tag: str
    relative: bool = False
    seq: Any = None
    junk: Any = None

    def at(self, now: float) -> Any:
        """What is ingested when the clock reads ``now``."""
        if self.tag == JUNK:
            return self.junk
        return Sample(self.asset, now + self.ts if self.relative else self.ts, self.signals,
                      self.seq)


@dataclass(frozen=True)
class Batch:
    advance: float               # the clock moves this much first
    wire: bool                   # ingested as wire-format bytes (else as Sample objects)
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Scenario:
    batches: tuple[Batch, ...]

    @property
    def size(self) -> int:
        return sum(len(b.items) for b in self.batches)


def _power(asset_id: str, frac: float) -> float:
    """An in-bounds power for ``frac`` in [0, 1] (chargers draw, batteries go both ways)."""
    spec = _SPECS[asset_id]
    if spec.kind == "charger":
        return -frac * spec.rated_kw
    if spec.kind == "battery":
        return (2 * frac - 1) * spec.rated_kw
    return frac * spec.rated_kw


_EXTRA = {"turbine": ("rotor_rpm", (0.0, 12.5), 99.0),
          "battery": ("soc_pct", (10.0, 90.0), 150.0),
          "charger": ("session_energy_kwh", (0.0, 40.0), -1.0)}


@st.composite
def valid_signals(draw: st.DrawFn, asset_id: str) -> dict[str, Any]:
    kind = _SPECS[asset_id].kind
    name, values, _ = _EXTRA[kind]
    power = _power(asset_id, draw(st.sampled_from((0.0, 0.5, 1.0))))
    shape = draw(st.sampled_from(("power", "power+extra", "extra", "int-power")))
    if shape == "power":
        return {"power_kw": power}
    if shape == "int-power":
        return {"power_kw": 0}
    extra = {name: draw(st.sampled_from(values))}
    if kind == "charger" and draw(st.booleans()):
        extra = {"session_active": draw(st.booleans())}
    return extra if shape == "extra" else {"power_kw": power, **extra}


@st.composite
def odd_signals(draw: st.DrawFn, asset_id: str) -> dict[str, Any]:
    """Well-formed, but a value outside the kind's bounds, NaN or infinite."""
    rated = _SPECS[asset_id].rated_kw
    name, _, wild = _EXTRA[_SPECS[asset_id].kind]
    return draw(st.sampled_from((
        {"power_kw": 5.0 * rated}, {"power_kw": -5.0 * rated}, {"power_kw": math.nan},
        {"power_kw": math.inf}, {"power_kw": _power(asset_id, 0.5), name: wild},
        {name: math.nan})))


def signals_for(asset_id: str) -> st.SearchStrategy[tuple[dict[str, Any], str]]:
    return st.one_of(valid_signals(asset_id).map(lambda s: (s, OK)),
                     odd_signals(asset_id).map(lambda s: (s, ODD)))


@st.composite
def pool_item(draw: st.DrawFn, pool: Sequence[tuple[str, int]]) -> Item:
    """A sample for one of the pool's (asset, device time) keys; keys repeat, values vary."""
    asset_id, offset = draw(st.sampled_from(pool))
    signals, tag = draw(signals_for(asset_id))
    ts: float | int = START + offset
    if draw(st.booleans()):
        ts = int(ts)                         # device time as an integer is as good
    return Item(asset_id, ts, signals, tag, seq=draw(st.none() | st.integers(0, 2**31)))


@st.composite
def timed_item(draw: st.DrawFn, future_excess: Sequence[float]) -> Item:
    """A sample whose device time is relative to the clock when it is ingested."""
    asset_id = draw(st.sampled_from(IDS))
    signals, tag = draw(signals_for(asset_id))
    offset = draw(st.sampled_from((
        *(SKEW_S + e for e in future_excess),          # beyond the allowed skew: future
        SKEW_S, 1.0, 120.0,                            # ahead of us, but allowed
        -RETENTION_S,                                  # at the retention horizon: allowed
        -RETENTION_S - 1.0, -RETENTION_S - 86400.0,    # older: stale replays
    )))
    return Item(asset_id, offset, signals, tag, relative=True)


@st.composite
def garbage_item(draw: st.DrawFn) -> Item:
    """Malformed: rejected whatever its time."""
    asset_id = draw(st.sampled_from(IDS))
    now_ish = START - 1.0
    return draw(st.sampled_from((
        Item("no-such-asset", now_ish, {"power_kw": 0.0}, BAD),
        Item(42, now_ish, {"power_kw": 0.0}, BAD),
        Item(["not", "hashable"], now_ish, {"power_kw": 0.0}, BAD),
        Item(asset_id, "yesterday", {"power_kw": 0.0}, BAD),
        Item(asset_id, None, {"power_kw": 0.0}, BAD),
        Item(asset_id, True, {"power_kw": 0.0}, BAD),
        Item(asset_id, math.nan, {"power_kw": 0.0}, BAD),
        Item(asset_id, math.inf, {"power_kw": 0.0}, BAD),
        Item(asset_id, now_ish, {}, BAD),
        Item(asset_id, now_ish, [["power_kw", 0.0]], BAD),
        Item(asset_id, now_ish, "power_kw=0", BAD),
        Item(asset_id, now_ish, {"bogus": 1.0}, BAD),
        Item(asset_id, now_ish, {"power_kw": 0.0, "bogus": 1.0}, BAD),
        Item(asset_id, now_ish, {"power_kw": "high"}, BAD),
        Item(asset_id, now_ish, {"power_kw": True}, BAD),
        Item(asset_id, now_ish, {1: 0.0}, BAD),
        Item(asset_id, now_ish, {"power_kw": 0.0}, BAD, seq="7"),
        Item(asset_id, now_ish, {"power_kw": 0.0}, BAD, seq=1.5),
    )))


JUNK_ITEMS = (Item(None, None, None, JUNK, junk=None), Item(None, None, None, JUNK, junk="junk"),
              Item(None, None, None, JUNK, junk=(IDS[0], START, {"power_kw": 0.0})),
              Item(None, None, None, JUNK, junk={"asset_id": IDS[0], "ts": START}))


@st.composite
def scenarios(draw: st.DrawFn, *,
              future_excess: Sequence[float] = (1e-3, 1.0, 3600.0)) -> Scenario:
    """A shuffled stream with repeats, split into batches with clock steps between them.
    ``future_excess``: how far beyond the allowed skew future samples lie."""
    pool = draw(st.lists(st.tuples(st.sampled_from(IDS), st.integers(-60, 0)),
                         min_size=1, max_size=6, unique=True))
    kinds = [pool_item(pool), pool_item(pool), timed_item(future_excess), garbage_item(),
             st.sampled_from(JUNK_ITEMS)]
    items = draw(st.lists(st.one_of(kinds), min_size=1, max_size=30))
    repeats = draw(st.lists(st.sampled_from(items), max_size=10))    # the very same items
    stream = draw(st.permutations(items + repeats))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(stream) - 1)),
                               max_size=min(MAX_BATCHES - 1, len(stream) - 1))))
    bounds = [0, *cuts, len(stream)]
    batches = []
    for lo, hi in itertools.pairwise(bounds):
        part = tuple(stream[lo:hi])
        batches.append(Batch(draw(st.sampled_from(ADVANCES)), draw(st.booleans()), part))
    return Scenario(tuple(batches))


# -- the reference ---------------------------------------------------------------------------


def _row_key(sample: Sample, outcome: str) -> tuple[Any, ...]:
    """The twin_samples primary key of a stored sample (an unknown key column fails here)."""
    values = {"ts": float(sample.ts), "asset_id": sample.asset_id}
    return tuple(values[name] for name in SAMPLE_KEY)


@dataclass
class Shadow:
    reported: dict[str, Any] = field(default_factory=dict)
    last_ts: float | None = None
    last_seen: float | None = None


class _Reference:
    """What a fleet must make of a stream (see the module docstring)."""

    def __init__(self) -> None:
        self.assets = {asset_id: Shadow() for asset_id in IDS}
        self.rows: dict[tuple[Any, ...], int] = {}      # twin_samples: key -> outcome code

    def outcome(self, item: Item, sample: Any, now: float) -> str:
        if item.tag in (BAD, JUNK):
            return "rejected"
        shadow = self.assets[item.asset]
        ts = sample.ts
        if ts > now + SKEW_S:
            return "future"
        if ts < now - RETENTION_S:
            return "stale"
        if shadow.last_ts is not None and ts <= shadow.last_ts:
            if ts == shadow.last_ts:
                return "duplicate"
            return "anomalous" if item.tag == ODD else "late"
        if item.tag == ODD:
            return "anomalous"
        shadow.reported.update(sample.signals)
        shadow.last_ts = ts
        shadow.last_seen = now
        return "accepted"

    def batch(self, items: Sequence[Item], given: Sequence[Any], now: float) -> Counter[str]:
        counts: Counter[str] = Counter()
        for item, sample in zip(items, given, strict=True):
            outcome = self.outcome(item, sample, now)
            counts[outcome] += 1
            if outcome in STORED_OUTCOMES:
                # one row per (ts, asset): the first wins, except that a clean sample
                # replaces a flagged (anomalous) one of the same time
                key, code = _row_key(sample, outcome), OUTCOMES.index(outcome)
                held = self.rows.get(key)
                if held is None or (held == OUTCOMES.index("anomalous") and outcome != "anomalous"):
                    self.rows[key] = code
        return counts

    def state(self, asset_id: str, now: float) -> str:
        shadow = self.assets[asset_id]
        if shadow.last_seen is None:
            return "unknown"
        return "offline" if shadow.last_seen + OFFLINE_AFTER_S <= now else "online"


# -- running a scenario ----------------------------------------------------------------------


@dataclass
class Run:
    reference: _Reference = field(default_factory=_Reference)
    times: list[float] = field(default_factory=list)       # the clock at each batch
    given: list[list[Any]] = field(default_factory=list)   # each batch, times resolved
    payloads: list[bytes | None] = field(default_factory=list)   # as sent, if sent as bytes


def _payload(batch: Batch, given: Sequence[Any], now: float) -> bytes | None:
    return pack_batch(given, source="prop", sent_at=now) if batch.wire else None


def _ingest(fleet: Fleet, given: Sequence[Any], payload: bytes | None) -> IngestReport:
    return fleet.ingest(list(given) if payload is None else payload)


def _run(fleet: Fleet, scenario: Scenario) -> Run:
    run = Run()
    for batch in scenario.batches:
        now = fleet.advance(batch.advance)
        given = [item.at(now) for item in batch.items]
        payload = _payload(batch, given, now)
        run.times.append(now)
        run.given.append(given)
        run.payloads.append(payload)
        report = _ingest(fleet, given, payload)
        expected = run.reference.batch(batch.items, given, now)
        assert report.total == len(given), f"{report} for {len(given)} samples"
        assert report.counts() == {name: expected[name] for name in OUTCOMES}, (
            f"batch of {len(given)} at {now}")
        assert len(report.errors) == report.rejected
        for name, n in expected.items():
            if n:
                event(f"outcome {name}")
    return run


def _views(fleet: Fleet) -> dict[str, tuple[Any, ...]]:
    out = {}
    for asset_id in IDS:
        view = fleet.asset(asset_id)
        out[asset_id] = (view.state, view.reported, view.last_sample_ts, view.last_seen)
    return out


@contextmanager
def _stored_fleet() -> Iterator[tuple[Fleet, Path]]:
    """A fleet with an SQLite store in a fresh temporary directory (one per example)."""
    with tempfile.TemporaryDirectory(prefix="twin-prop-") as directory:
        database = Path(directory) / "fleet.db"
        store = Store(f"sqlite:///{database}", flush_interval_s=0.0)
        with Fleet(_model(), clock=VirtualClock(START), store=store) as fleet:
            yield fleet, database


def _query(database: Path, sql: str) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(database)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def _sample_rows(database: Path) -> dict[tuple[Any, ...], tuple[int, int]]:
    """twin_samples: primary key -> (outcome code, log offset)."""
    rows = _query(database, f"SELECT {', '.join(SAMPLE_KEY)}, outcome, log_offset "
                            "FROM twin_samples")
    n = len(SAMPLE_KEY)
    return {tuple(row[:n]): (int(row[n]), int(row[n + 1])) for row in rows}


def _examples(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- properties ------------------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 2])
@_examples(120)
@given(scenario=scenarios())
def test_each_asset_ends_at_the_newest_sample_that_was_valid_when_it_arrived(
        shards: int, scenario: Scenario) -> None:
    with Fleet(_model(), clock=VirtualClock(START), shards=shards) as fleet:
        run = _run(fleet, scenario)        # each report: counts sum to its batch, as expected
        now = fleet.clock.now()
        for asset_id in IDS:
            view = fleet.asset(asset_id)
            shadow = run.reference.assets[asset_id]
            assert view.reported == shadow.reported, asset_id
            assert view.last_sample_ts == shadow.last_ts, asset_id
            assert view.last_seen == shadow.last_seen, asset_id
            assert view.state == run.reference.state(asset_id, now), asset_id
        assert_consistent(fleet)


# A bytes batch whose second sample fails at the wire layer (its asset id is not a string).
_WIRE_REJECT = Scenario((Batch(0.0, True, (
    Item(IDS[0], START - 1.0, {"power_kw": 0.0}, OK),
    Item(42, START - 1.0, {"power_kw": 0.0}, BAD))),))


@_examples(40)
@example(scenario=_WIRE_REJECT)
@given(scenario=scenarios())
def test_the_raw_log_holds_every_sample_that_was_given_in_order(scenario: Scenario) -> None:
    with _stored_fleet() as (fleet, database):
        run = _run(fleet, scenario)
        fleet.flush()
        log = _query(database, 'SELECT received_at, samples, payload FROM twin_log '
                               'ORDER BY "offset"')
    assert len(log) == len(scenario.batches)
    assert sum(samples for _, samples, _ in log) == scenario.size
    assert sum(unpack_batch(payload).size for _, _, payload in log) == scenario.size
    for (received_at, samples, payload), now, sent, sent_bytes in zip(
            log, run.times, run.given, run.payloads, strict=True):
        assert received_at == now
        if sent_bytes is not None:
            assert payload == sent_bytes, "a wire batch is logged verbatim"
        decoded = unpack_batch(payload)
        assert samples == decoded.size == len(sent)
        assert len(decoded.samples) + len(decoded.errors) == len(sent)
        # repr: NaN equals NaN; samples malformed at the wire layer are not decoded
        assert [repr(s) for s in decoded.samples] == [repr(sent[i]) for i in decoded.indices]


@_examples(40)
@given(scenario=scenarios())
def test_after_a_flush_each_clean_late_and_anomalous_sample_has_its_row(
        scenario: Scenario) -> None:
    with _stored_fleet() as (fleet, database):
        run = _run(fleet, scenario)
        fleet.flush()
        rows = _sample_rows(database)
    assert {key: outcome for key, (outcome, _) in rows.items()} == run.reference.rows


@dataclass(frozen=True)
class Seen:
    """What re-ingesting must not change."""

    views: dict[str, tuple[Any, ...]]
    rollups: dict[str, Any]
    rows: dict[tuple[Any, ...], tuple[int, int]]


def _ingested_twice(scenario: Scenario) -> tuple[Seen, Seen]:
    """Run ``scenario`` on a stored fleet, then ingest every batch again, as it was sent."""
    with _stored_fleet() as (fleet, database):
        run = _run(fleet, scenario)
        fleet.flush()
        first = Seen(_views(fleet), fleet.rollups(), _sample_rows(database))
        for sent, payload in zip(run.given, run.payloads, strict=True):
            again = _ingest(fleet, sent, payload)
            assert again.accepted == 0, again
            assert again.total == len(sent)
        fleet.flush()
        assert_consistent(fleet)
        return first, Seen(_views(fleet), fleet.rollups(), _sample_rows(database))


# Future samples lie further ahead than the clock moves in all, so none becomes valid later.
_LATER_STILL_FUTURE = scenarios(future_excess=(MAX_DRIFT_S + 1.0, 3600.0))


@_examples(40)
@given(scenario=_LATER_STILL_FUTURE)
def test_ingesting_everything_again_changes_no_asset_and_no_rollup(scenario: Scenario) -> None:
    first, second = _ingested_twice(scenario)
    assert second.views == first.views
    assert second.rollups == first.rollups


# An anomalous sample with the device time of an accepted one is a duplicate; once a newer
# sample was accepted, the same sample again is anomalous, and gets a flagged row of its own.
_DUPLICATE_TURNS_ANOMALOUS = Scenario((Batch(0.0, False, (
    Item(IDS[0], START - 1.0, {"power_kw": 0.0}, OK),
    Item(IDS[0], START - 1.0, {"power_kw": 1e9}, ODD),
    Item(IDS[0], START, {"power_kw": 0.0}, OK))),))


@_examples(40)
@example(scenario=_DUPLICATE_TURNS_ANOMALOUS)
@given(scenario=_LATER_STILL_FUTURE)
def test_ingesting_everything_again_adds_no_sample_rows(scenario: Scenario) -> None:
    first, second = _ingested_twice(scenario)
    assert second.rows == first.rows


@_examples(30)
@given(scenario=scenarios())
def test_a_fleet_reopened_on_its_store_replays_to_the_same_assets_and_rollups(
        scenario: Scenario) -> None:
    with tempfile.TemporaryDirectory(prefix="twin-prop-") as directory:
        url = f"sqlite:///{Path(directory) / 'fleet.db'}"
        clock = VirtualClock(START)
        with Fleet(_model(), clock=clock, store=Store(url, flush_interval_s=0.0)) as fleet:
            _run(fleet, scenario)
            before = {a: fleet.asset(a) for a in IDS}
            rollups = fleet.rollups()
        with Fleet(_model(), clock=VirtualClock(clock.now()),
                   store=Store(url, flush_interval_s=0.0)) as reopened:
            assert {a: reopened.asset(a) for a in IDS} == before
            assert reopened.rollups() == rollups


# -- samples at the edges of what the log can encode ------------------------------------------


@pytest.mark.parametrize("sample", [
    Sample(IDS[0], START - 1.0, {"power_kw": 0.0}, "7"),                # type: ignore[arg-type]
    Sample(IDS[0], START - 1.0, [["power_kw", 0.0]]),                   # type: ignore[arg-type]
], ids=["string-seq", "signals-as-pairs"])
def test_a_batch_of_sample_objects_replays_after_a_restart_as_it_was_applied_live(
        sample: Sample) -> None:
    with tempfile.TemporaryDirectory(prefix="twin-prop-") as directory:
        url = f"sqlite:///{Path(directory) / 'fleet.db'}"
        with Fleet(_model(), clock=VirtualClock(START), store=url) as fleet:
            fleet.ingest([sample])
            before = fleet.asset(IDS[0])
        with Fleet(_model(), clock=VirtualClock(START), store=url) as reopened:
            after = reopened.asset(IDS[0])
    assert after == before


@pytest.mark.parametrize("bad", [
    Sample(IDS[1], START, {"power_kw": {1, 2}}),
    Sample(IDS[1], START, object()),                   # type: ignore[arg-type]
    Sample(IDS[1], 2**70, {"power_kw": 0.0}),
], ids=["set-value", "object-signals", "huge-int-ts"])
def test_a_sample_the_log_cannot_encode_does_not_take_its_batch_mates_down(bad: Sample) -> None:
    good = Sample(IDS[0], START - 1.0, {"power_kw": 0.0})
    with _stored_fleet() as (fleet, _):
        report = fleet.ingest([good, bad])
        assert report.accepted == 1
        assert report.total == 2
        assert report.rejected + report.future == 1
        assert fleet.asset(IDS[0]).last_sample_ts == good.ts


@pytest.mark.parametrize("sample", [
    pytest.param(Sample(IDS[0], START - 1.0, {"power_kw": 0.0}, "7"),  # type: ignore[arg-type]
                 id="string-seq"),
    pytest.param(Sample(IDS[0], START - 1.0, object()),                # type: ignore[arg-type]
                 id="object-signals"),
    pytest.param(Sample(IDS[0], START - 1.0, {"bogus": 1.0}), id="unknown-signal"),
    pytest.param(Sample(IDS[0], 2**70, {"power_kw": 0.0}), id="huge-int-ts"),
    pytest.param(Sample(IDS[0], START - 1.0, {"power_kw": 2**70}), id="huge-int-value"),
    pytest.param(Sample(IDS[0], START - 1.0, {"power_kw": {1, 2}}), id="set-value"),
])
def test_a_fleet_classifies_a_sample_the_same_with_a_store_as_without_one(
        sample: Sample) -> None:
    with Fleet(_model(), clock=VirtualClock(START)) as fleet:
        without = (fleet.ingest([sample]).counts(), fleet.asset(IDS[0]))
    with _stored_fleet() as (fleet, _):
        stored = (fleet.ingest([sample]).counts(), fleet.asset(IDS[0]))
    assert stored == without
