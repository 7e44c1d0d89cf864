"""The wire format of docs/wire-format.md: exact round trips, the documented example bytes,
whole-batch failures (``IngestError``, nothing changes) versus per-sample rejections, the
outcome precedence, and fuzzing of ``Fleet.ingest`` with bytes."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from twin import (
    AssetView,
    Fleet,
    FleetModel,
    IngestError,
    IngestReport,
    Rollup,
    Sample,
    VirtualClock,
)
from twin.testing import assert_consistent
from twin.wire import MAX_BATCH_BYTES, VERSION, pack_batch, unpack_batch

DAY = 86400.0
T0 = 1767225600.0                      # any device time; whole-batch failures never read it
ASSETS = ("t-01", "b-01", "c-01", "t-02", "b-02")
DOC = Path(__file__).resolve().parent.parent / "docs" / "wire-format.md"

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                print_blob=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.filter_too_much])


def packed(*fields: Any) -> bytes:
    """Any value as msgpack, the way a sender with its own encoder would write it."""
    data: bytes = msgpack.packb(list(fields), use_bin_type=True)
    return data


FleetState = tuple[dict[str, Any], dict[str, Rollup], dict[str, AssetView]]


def state_of(fleet: Fleet) -> FleetState:
    """Everything a batch could change: counters, every roll-up, every asset's views."""
    return fleet.metrics(), fleet.rollups(), {a: fleet.asset(a) for a in ASSETS}


def warm_up(fleet: Fleet, now: float) -> None:
    """Some assets online with power, so 'nothing changed' has something to keep."""
    report = fleet.ingest(pack_batch([Sample("t-01", now - 10, {"power_kw": 700.0}),
                                      Sample("b-02", now - 10, {"power_kw": -3.0})]))
    assert report.accepted == 2


def errors_of(report: IngestReport) -> list[tuple[int, Any, str, str, str]]:
    """The report's errors in index order, values as repr (a NaN equals its repr only)."""
    return sorted((e.index, e.asset_id, e.field, repr(e.value), e.reason)
                  for e in report.errors)


# -- pack and unpack -----------------------------------------------------------------------

wire_ints = st.integers(-(2**63), 2**64 - 1)         # what msgpack's integer types hold
texts = st.text(max_size=12)
valid_samples = st.builds(
    Sample,
    asset_id=texts,
    ts=st.one_of(wire_ints, st.floats(allow_nan=False)),
    signals=st.dictionaries(texts, st.one_of(st.booleans(), wire_ints,
                                             st.floats(allow_nan=False)), max_size=5),
    seq=st.none() | wire_ints,
)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(samples=st.lists(valid_samples, max_size=8),
       source=st.text(st.characters(blacklist_characters="\x00"), max_size=12),
       sent_at=st.none() | st.floats(allow_nan=False, allow_infinity=False)
       | st.integers(-(2**53), 2**53))
def test_any_valid_batch_round_trips_exactly_through_pack_and_unpack(
        samples: list[Sample], source: str, sent_at: float | None) -> None:
    batch = unpack_batch(pack_batch(samples, source, sent_at))
    assert batch.samples == samples
    # repr tells 1 from 1.0 and True, -0.0 from 0.0, seq None from 0: exactly the same values
    assert repr(batch.samples) == repr(samples)
    assert (batch.indices, batch.errors, batch.size) == (list(range(len(samples))), [],
                                                         len(samples))
    assert batch.source == source
    if sent_at is None:
        assert batch.sent_at is None
    else:
        assert type(batch.sent_at) is float and batch.sent_at == float(sent_at)


def test_pack_batch_writes_the_documented_array_layout() -> None:
    payload = pack_batch([Sample("t-01", 17, {"power_kw": 1.5}, seq=3),
                          Sample("c-01", 18.5, {"session_active": False})],
                         source="gw", sent_at=19.0)
    assert msgpack.unpackb(payload) == [
        VERSION, "gw", 19.0, [["t-01", 17, 3, {"power_kw": 1.5}],
                              ["c-01", 18.5, None, {"session_active": False}]]]
    assert VERSION == 1


def test_the_example_in_the_specification_is_the_bytes_pack_batch_writes() -> None:
    dump = re.findall(r"^[0-9a-f]{4}  ((?:[0-9a-f]{2} ?)+)$", DOC.read_text(), flags=re.M)
    documented = bytes.fromhex("".join(dump))
    assert len(documented) == 103
    assert pack_batch([Sample("t-01", 1767225600, {"power_kw": 2150.5}, seq=42),
                       Sample("c-01", 1767225600.5,
                              {"power_kw": -120.0, "session_active": True})],
                      source="gw-alpha", sent_at=1767225601.25) == documented


def test_a_batch_may_arrive_as_bytes_bytearray_or_memoryview(fleet: Fleet, clock: VirtualClock
                                                              ) -> None:
    payload = pack_batch([Sample("t-01", clock.now(), {"power_kw": 5.0})])
    assert fleet.ingest(bytearray(payload)).accepted == 1
    assert fleet.ingest(memoryview(payload)).duplicate == 1
    assert fleet.ingest(payload).duplicate == 1
    assert fleet.metrics()["batches"] == 3


# -- whole-batch failures ------------------------------------------------------------------

Make = Callable[[list[Any]], bytes]


def batch_with(version: Any = VERSION, source: Any = "gw", sent_at: Any = T0) -> Make:
    return lambda rows: packed(version, source, sent_at, rows)


def case(make: Make, message: str, name: str) -> Any:
    return pytest.param(make, message, id=name)


NOT_MSGPACK = "batch is not valid msgpack"
NOT_A_BATCH = r"batch must be an array \[version, source, sent_at, samples\], got"
VERSION_REFUSED = r"batch format version .* is not supported \(this runtime reads version 1\)"
BAD_SOURCE = "batch field 'source' must be a string without NUL characters, got"
BAD_SENT_AT = "batch field 'sent_at' must be unix seconds or nil, got"
BAD_SAMPLES = "batch field 'samples' must be an array, got"

WHOLE_BATCH_FAILURES = [
    case(lambda rows: b"", NOT_MSGPACK, "empty-payload"),
    case(lambda rows: b"\xc1" + packed(1, "", None, rows), NOT_MSGPACK, "reserved-byte"),
    case(lambda rows: packed(1, "gw", T0, rows)[:-2], NOT_MSGPACK, "truncated"),
    case(lambda rows: packed(1, "gw", T0, rows) + b"\xc0", f"{NOT_MSGPACK} .*ExtraData",
         "bytes-after-the-batch"),
    case(lambda rows: b"\x94\x01\xa2\xff\xfe\xc0" + msgpack.packb(rows), NOT_MSGPACK,
         "source-invalid-utf-8"),
    # one sample whose signals map has an array as key: ["t-02", 1, nil, {[1]: true}]
    case(lambda rows: b"\x94\x01\xa2gw\xc0\x93" + b"".join(map(msgpack.packb, rows))
         + b"\x94\xa4t-02\x01\xc0\x81\x91\x01\xc3", NOT_MSGPACK, "array-as-map-key"),
    case(lambda rows: msgpack.packb({"version": 1, "samples": rows}), NOT_A_BATCH, "a-map"),
    case(lambda rows: msgpack.packb(7), NOT_A_BATCH, "an-int"),
    case(lambda rows: msgpack.packb(None), NOT_A_BATCH, "nil"),
    case(lambda rows: packed(1, "gw", rows), NOT_A_BATCH, "3-array"),
    case(lambda rows: packed(1, "gw", T0, rows, "extra"), NOT_A_BATCH, "5-array"),
    case(batch_with(version=2), VERSION_REFUSED, "version-2"),
    case(batch_with(version=0), VERSION_REFUSED, "version-0"),
    case(batch_with(version="1"), VERSION_REFUSED, "version-str"),
    case(batch_with(version=1.0), VERSION_REFUSED, "version-float"),
    case(batch_with(version=True), VERSION_REFUSED, "version-true"),
    case(batch_with(version=None), VERSION_REFUSED, "version-nil"),
    case(batch_with(source=7), BAD_SOURCE, "source-int"),
    case(batch_with(source=None), BAD_SOURCE, "source-nil"),
    case(batch_with(source=b"gw"), BAD_SOURCE, "source-bin"),
    case(batch_with(sent_at="now"), BAD_SENT_AT, "sent_at-str"),
    case(batch_with(sent_at=math.nan), BAD_SENT_AT, "sent_at-nan"),
    case(batch_with(sent_at=math.inf), BAD_SENT_AT, "sent_at-inf"),
    case(batch_with(sent_at=-math.inf), BAD_SENT_AT, "sent_at--inf"),
    case(batch_with(sent_at=True), BAD_SENT_AT, "sent_at-true"),
    case(batch_with(sent_at=[T0]), BAD_SENT_AT, "sent_at-array"),
    case(batch_with(sent_at=msgpack.Timestamp(int(T0))), BAD_SENT_AT, "sent_at-timestamp-ext"),
    case(lambda rows: packed(1, "gw", T0, {"0": rows[0]}), BAD_SAMPLES, "samples-map"),
    case(lambda rows: packed(1, "gw", T0, None), BAD_SAMPLES, "samples-nil"),
    case(lambda rows: packed(1, "gw", T0, "t-02"), BAD_SAMPLES + " 't-02'", "samples-str"),
]


@pytest.mark.parametrize(("make", "message"), WHOLE_BATCH_FAILURES)
def test_an_unreadable_batch_raises_ingest_error_naming_the_problem_and_changes_nothing(
        fleet: Fleet, clock: VirtualClock, make: Make, message: str) -> None:
    now = clock.now()
    warm_up(fleet, now)
    # samples that would all be accepted, were the batch readable
    rows = [["t-02", now, 1, {"power_kw": 500.0}], ["t-01", now, None, {"power_kw": 900.0}]]
    payload = make(rows)
    before = state_of(fleet)
    with pytest.raises(IngestError, match=message):
        fleet.ingest(payload)
    assert state_of(fleet) == before
    assert fleet.metrics()["batches"] == 1                     # the warm-up only
    with pytest.raises(IngestError, match=message):
        unpack_batch(payload)


@pytest.mark.parametrize("payload", ["[1, '', null, []]", None, [1, "", None, []], 42],
                         ids=["str", "none", "list", "int"])
def test_unpack_batch_refuses_anything_but_bytes_naming_the_type(payload: Any) -> None:
    with pytest.raises(IngestError, match=f"a batch is msgpack bytes, got "
                                          f"{type(payload).__name__}$"):
        unpack_batch(payload)


def test_a_batch_over_max_batch_bytes_is_refused_unread_and_one_at_the_limit_is_read(
        fleet: Fleet, clock: VirtualClock) -> None:
    overhead = len(packed(1, "x" * 2**16, None, [])) - 2**16       # str32 header and the rest
    at_limit = packed(1, "x" * (MAX_BATCH_BYTES - overhead), None, [])
    assert len(at_limit) == MAX_BATCH_BYTES == 64 * 2**20
    assert fleet.ingest(at_limit).total == 0
    before = state_of(fleet)
    over = packed(1, "x" * (MAX_BATCH_BYTES - overhead + 1), None, [])
    with pytest.raises(IngestError, match=r"batch of 67,108,865 bytes is over the limit of "
                                          r"67,108,864; split it"):
        fleet.ingest(over)
    assert state_of(fleet) == before
    assert fleet.metrics()["batches"] == 1


# -- per-sample rejections -----------------------------------------------------------------

MALFORMED_ROWS = [
    # (row, asset_id in the error, field, value in the error)
    pytest.param("t-02", None, "sample", "'t-02'", id="a-string"),
    pytest.param(None, None, "sample", None, id="nil"),
    pytest.param(["t-02", 5.0, None], None, "sample", "['t-02', 5.0, None]", id="3-array"),
    pytest.param(["t-02", 5.0, None, {}, 0], None, "sample", "['t-02', 5.0, None, {}, 0]",
                 id="5-array"),
    pytest.param({"asset_id": "t-02"}, None, "sample", "{'asset_id': 't-02'}", id="a-map"),
    pytest.param([7, 5.0, None, {"power_kw": 1.0}], 7, "asset_id", 7, id="asset_id-int"),
    pytest.param([None, 5.0, None, {"power_kw": 1.0}], None, "asset_id", None,
                 id="asset_id-nil"),
    pytest.param([b"t-02", 5.0, None, {"power_kw": 1.0}], "b't-02'", "asset_id", "b't-02'",
                 id="asset_id-bin"),
    pytest.param(["t-02", 5.0, 1.5, {"power_kw": 1.0}], "t-02", "seq", 1.5, id="seq-float"),
    pytest.param(["t-02", 5.0, "3", {"power_kw": 1.0}], "t-02", "seq", "'3'", id="seq-str"),
    pytest.param(["t-02", 5.0, True, {"power_kw": 1.0}], "t-02", "seq", True, id="seq-true"),
    pytest.param(["t-02", 5.0, None, [["power_kw", 1.0]]], "t-02", "signals",
                 "[['power_kw', 1.0]]", id="signals-array"),
    pytest.param(["t-02", 5.0, None, None], "t-02", "signals", None, id="signals-nil"),
    pytest.param(["t-02", 5.0, None, 2.0], "t-02", "signals", 2.0, id="signals-number"),
]


@pytest.mark.parametrize(("row", "asset_id", "field", "value"), MALFORMED_ROWS)
def test_a_malformed_sample_is_rejected_by_index_and_field_and_its_batch_mates_apply(
        fleet: Fleet, clock: VirtualClock, row: Any, asset_id: Any, field: str, value: Any
        ) -> None:
    now = clock.now()
    report = fleet.ingest(packed(1, "gw", now, [["t-01", now, 1, {"power_kw": 1000.0}], row,
                                                ["b-02", now, None, {"power_kw": 4.0}]]))
    assert (report.accepted, report.rejected, report.total) == (2, 1, 3)
    (error,) = report.errors
    assert (error.index, error.asset_id, error.field, error.value) == (1, asset_id, field, value)
    assert f"sample 1 (asset {asset_id!r}): {field}=" in str(error)
    assert fleet.asset("t-01").reported == {"power_kw": 1000.0}
    assert fleet.asset("t-02").state == "unknown"
    assert fleet.rollup("grid/ercot").power_kw == 1004.0
    assert fleet.metrics()["samples_rejected"] == 1
    assert_consistent(fleet)


def test_a_huge_malformed_value_is_quoted_short_in_its_error(fleet: Fleet, clock: VirtualClock
                                                             ) -> None:
    report = fleet.ingest(packed(1, "", None, [["t-01", clock.now(), None, ["x" * 10_000]]]))
    (error,) = report.errors
    assert (error.field, len(error.value)) == ("signals", 60)
    assert error.value.startswith("['xxx") and error.value.endswith("...")


def test_every_malformation_in_one_batch_is_reported_once_at_its_own_index(
        fleet: Fleet, clock: VirtualClock) -> None:
    now = clock.now()
    rows: list[Any] = [
        ["t-01", now, 1, {"power_kw": 1000.0}],
        "t-02",
        [7, now, None, {"power_kw": 1.0}],
        ["t-02", now, 1.5, {"power_kw": 1.0}],
        ["t-02", now, None, None],
        ["nope", now, None, {"power_kw": 1.0}],            # well-formed, unknown asset
        ["t-02", "now", None, {"power_kw": 1.0}],           # well-formed, ts not a number
        ["t-02", now, None, {"power_kw": "1"}],             # well-formed, value not a number
        ["b-02", now, 2**40, {"power_kw": 4.0}],
    ]
    report = fleet.ingest(packed(1, "gw", now, rows))
    assert (report.accepted, report.rejected, report.total) == (2, 7, 9)
    assert [(e.index, e.field) for e in sorted(report.errors, key=lambda e: e.index)] == [
        (1, "sample"), (2, "asset_id"), (3, "seq"), (4, "signals"), (5, "asset_id"),
        (6, "ts"), (7, "signals.power_kw")]
    assert fleet.rollup("grid/ercot").power_kw == 1004.0
    assert_consistent(fleet)


# -- outcome classes -----------------------------------------------------------------------

TOO_MUCH = {"power_kw": 1e9}      # anomalous for every built-in kind
PRECEDENCE = [
    # (device time relative to the newest accepted one, signals, the outcome that wins)
    pytest.param(1000.0, {"torque_nm": 1.0}, "rejected", id="rejected-over-future"),
    pytest.param(-31 * DAY, {"power_kw": True}, "rejected", id="rejected-over-stale"),
    pytest.param(1000.0, TOO_MUCH, "future", id="future-over-anomalous"),
    pytest.param(-31 * DAY, TOO_MUCH, "stale", id="stale-over-anomalous"),
    pytest.param(-31 * DAY, {"power_kw": 200.0}, "stale", id="stale-over-late"),
    pytest.param(0.0, TOO_MUCH, "duplicate", id="duplicate-over-anomalous"),
    pytest.param(-5.0, TOO_MUCH, "anomalous", id="anomalous-over-late"),
    pytest.param(-5.0, {"power_kw": 200.0}, "late", id="late"),
    pytest.param(5.0, TOO_MUCH, "anomalous", id="anomalous-and-newer"),
    pytest.param(5.0, {"power_kw": 200.0}, "accepted", id="accepted"),
]


@pytest.mark.parametrize(("offset", "signals", "outcome"), PRECEDENCE)
def test_a_sample_in_several_outcome_classes_gets_the_first_in_the_documented_order(
        fleet: Fleet, clock: VirtualClock, offset: float, signals: dict[str, Any], outcome: str
        ) -> None:
    now = clock.now()
    assert fleet.ingest(pack_batch([Sample("t-01", now, {"power_kw": 100.0})])).accepted == 1
    report = fleet.ingest(pack_batch([Sample("t-01", now + offset, signals)]))
    assert {k: v for k, v in report.counts().items() if v} == {outcome: 1}
    expected = {"power_kw": 200.0} if outcome == "accepted" else {"power_kw": 100.0}
    assert fleet.asset("t-01").reported == expected


# -- bytes and Sample objects are the same batch ---------------------------------------------

OFFSETS = (-31 * DAY, -29 * DAY, -10, -1, 0, 0, 1, 5, 299, 301, 3600)
device_times = st.one_of(
    st.tuples(st.sampled_from(OFFSETS), st.booleans()),
    st.sampled_from([math.nan, math.inf, None, "1767225600"]))
signal_sets = st.sampled_from([
    {"power_kw": 100.0}, {"power_kw": -5}, {"power_kw": 1e9}, {"power_kw": math.nan},
    {"power_kw": True}, {"soc_pct": 50}, {"soc_pct": 150.0}, {"session_active": True},
    {"session_active": 1}, {"torque_nm": 1.0}, {}, {"power_kw": 5, "wind_speed_ms": 7.5},
]).map(dict)
batches = st.lists(st.tuples(st.sampled_from((*ASSETS, "nope")), device_times, signal_sets,
                             st.none() | st.integers(0, 2**32)), max_size=12)


def as_samples(rows: list[tuple[str, Any, dict[str, Any], int | None]], now: float
               ) -> list[Sample]:
    out = []
    for asset_id, when, signals, seq in rows:
        ts = when
        if isinstance(when, tuple):
            offset, integral = when
            ts = int(now + offset) if integral else now + offset + 0.25
        out.append(Sample(asset_id, ts, signals, seq))
    return out


@FUZZ
@given(first=batches, second=batches)
def test_ingesting_bytes_gives_the_same_outcomes_as_ingesting_the_same_samples(
        example_dict: dict[str, Any], clock: VirtualClock, shards: int,
        first: list[Any], second: list[Any]) -> None:
    model = FleetModel.from_dict(example_dict)
    start = clock.now()
    with (Fleet(model, clock=VirtualClock(start=start), shards=shards) as objects,
          Fleet(model, clock=VirtualClock(start=start), shards=shards) as wire):
        for rows in (first, second):
            samples = as_samples(rows, objects.clock.now())
            by_objects = objects.ingest(samples)
            by_wire = wire.ingest(pack_batch(samples, "gw", wire.clock.now()))
            assert by_wire.counts() == by_objects.counts()
            assert by_wire.total == len(samples)
            assert errors_of(by_wire) == errors_of(by_objects)
            assert state_of(wire)[1:] == state_of(objects)[1:]
            objects.advance(2.0)
            wire.advance(2.0)
        assert_consistent(wire)


# -- fuzzing ---------------------------------------------------------------------------------

GOOD_PAYLOAD = packed(1, "gw", T0, [["t-01", T0, 1, {"power_kw": 10.0}],
                                    ["b-02", T0 + 0.5, None, {"power_kw": -2.5, "soc_pct": 40}],
                                    ["c-01", T0, 2, {"session_active": True}]])


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    """A good batch with a few bytes replaced, inserted, deleted, or cut off."""
    data = bytearray(GOOD_PAYLOAD)
    for _ in range(draw(st.integers(1, 2))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["replace"] * 4 + ["insert", "delete", "cut"]))
        byte = draw(st.integers(0, 255))
        if edit == "replace" and at < len(data):
            data[at] = byte
        elif edit == "insert":
            data.insert(at, byte)
        elif edit == "delete" and at < len(data):
            del data[at]
        elif edit == "cut":
            del data[at:]
    return bytes(data)


def check_report(fleet: Fleet, payload: bytes, batches_before: int) -> IngestReport | None:
    """Ingest ``payload``: an IngestError changes nothing; a report accounts for every sample
    the batch declared, each once. Any other exception fails the test."""
    try:
        report = fleet.ingest(payload)
    except IngestError:
        event("IngestError")
        assert fleet.metrics()["batches"] == batches_before
        return None
    event("read")
    declared = msgpack.unpackb(payload, strict_map_key=False)[3]
    assert report.total == len(declared), (report, declared)
    assert report.rejected == len(report.errors)
    indices = [e.index for e in report.errors]
    assert len(set(indices)) == len(indices)
    assert all(0 <= i < len(declared) for i in indices)
    assert fleet.metrics()["batches"] == batches_before + 1
    return report


@FUZZ
@given(payload=st.one_of(st.binary(max_size=64), mutated_payloads()))
def test_random_bytes_raise_ingest_error_or_account_for_every_declared_sample(
        fleet: Fleet, payload: bytes) -> None:
    check_report(fleet, payload, fleet.metrics()["batches"])


names = st.sampled_from(["t-01", "b-01", "c-01", "power_kw", "soc_pct", "session_active"])
scalars = st.one_of(st.none(), st.booleans(), wire_ints, st.floats(), st.text(max_size=8),
                    st.binary(max_size=8), names, st.just(T0))
keys = st.one_of(st.none(), st.booleans(), wire_ints, st.floats(allow_nan=False),
                 st.text(max_size=8), st.binary(max_size=8), names)
msgpack_objects = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]
           ) -> st.SearchStrategy[Any]:
    """``good`` three times in four, else ``bad``."""
    return st.integers(0, 3).flatmap(lambda n: good if n else bad)


batch_like = st.tuples(
    mostly(st.just(1), scalars),
    mostly(texts, msgpack_objects),
    mostly(st.none() | st.floats(allow_nan=False, allow_infinity=False), msgpack_objects),
    st.lists(mostly(st.lists(msgpack_objects, min_size=4, max_size=4), msgpack_objects),
             max_size=4),
).map(list)


@FUZZ
@given(obj=st.one_of(msgpack_objects, batch_like))
def test_any_msgpack_value_as_a_batch_raises_ingest_error_or_is_fully_reported(
        fleet: Fleet, obj: Any) -> None:
    check_report(fleet, msgpack.packb(obj, use_bin_type=True), fleet.metrics()["batches"])


HEADER = ("version", "source", "sent_at", "samples")
SAMPLE = ("sample", "asset_id", "ts", "seq", "signals", "signal name", "signal value")


@FUZZ
@given(obj=msgpack_objects, position=st.sampled_from(HEADER + SAMPLE))
def test_a_random_value_anywhere_in_a_sample_never_fails_the_batch_or_its_batch_mates(
        fleet: Fleet, clock: VirtualClock, obj: Any, position: str) -> None:
    fleet.advance(1.0)
    now = clock.now()
    junk = "not a sample"                      # rejected before the runtime sees the others
    mate = ["t-02", now, None, {"power_kw": 20.0}]
    row: list[Any] = ["t-01", now, 7, {"power_kw": 10.0}]
    batch: list[Any] = [VERSION, "gw", now, [junk, mate, row]]
    if position in HEADER:
        batch[HEADER.index(position)] = obj
    elif position == "sample":
        batch[3][2] = obj
    elif position == "signal name":
        assume(isinstance(obj, Hashable))
        row[3] = {obj: 10.0}
    elif position == "signal value":
        row[3] = {"power_kw": obj}
    else:
        row[SAMPLE.index(position) - 1] = obj
    before = fleet.metrics()["batches"]
    payload = msgpack.packb(batch, use_bin_type=True)
    if position in HEADER:
        check_report(fleet, payload, before)
        return
    report = check_report(fleet, payload, before)
    assert report is not None, "a bad value inside a sample failed the whole batch"
    assert report.accepted >= 1
    assert {(e.index, e.field) for e in report.errors if e.index != 2} == {(0, "sample")}
    view = fleet.asset("t-02")
    assert (view.last_sample_ts, view.reported) == (now, {"power_kw": 20.0})
    assert_consistent(fleet)


@pytest.mark.parametrize("payload", ["[1, '', null, []]", {"samples": []}])
def test_a_string_or_mapping_is_refused_as_a_whole_batch(fleet: Fleet, payload: Any) -> None:
    with pytest.raises(IngestError, match="msgpack bytes or a list of Sample objects"):
        fleet.ingest(payload)
    assert fleet.metrics()["batches"] == 0


def test_a_source_with_a_nul_character_is_refused_as_a_whole_batch(fleet: Fleet) -> None:
    payload = msgpack.packb([1, "gw\x00x", None, []])
    with pytest.raises(IngestError, match="without NUL characters"):
        fleet.ingest(payload)
