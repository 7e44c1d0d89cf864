"""Hostile values in a batch (issue 10, defect 1): nested a thousand levels deep, huge, cyclic,
or with a ``__repr__`` that raises. A batch that cannot be read raises ``IngestError`` and
changes nothing; such a value inside one sample rejects that sample alone, with an error that
names its index and field and quotes the value briefly; every report equals the change it made
to ``fleet.metrics()``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from twin import Fleet, FleetModel, IngestError, IngestReport, Sample, VirtualClock
from twin.core.samples import SHOWN_CHARS, SampleError, brief, plain
from twin.testing import assert_consistent

OUTCOME_KEYS = ("samples_accepted", "samples_duplicate", "samples_late", "samples_future",
                "samples_stale", "samples_anomalous", "samples_rejected", "samples_deferred",
                "samples_quarantined", "batches")
MESSAGE_CHARS = 600                  # an error message quotes at most this much of a batch


def enc(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def nested(depth: int, leaf: bytes = b"\xc0", level: bytes = b"\x91") -> bytes:
    """msgpack bytes of ``leaf`` inside ``depth`` containers (each level's header is
    ``level``: an array of one by default), written directly: msgpack's encoder refuses to
    go this deep, and a sender's need not."""
    return level * depth + leaf


def batch(version: bytes = b"\x01", source: bytes = b"\xa2gw", sent_at: bytes = b"\xc0",
          rows: list[bytes] | bytes = ()) -> bytes:
    samples = rows if isinstance(rows, bytes) else (
        bytes([0x90 | len(rows)]) + b"".join(rows))
    return b"\x94" + version + source + sent_at + samples


def row(asset_id: bytes, ts: bytes, seq: bytes = b"\xc0", signals: bytes | None = None,
        value: bytes = b"\xcb" + enc(10.0)[1:]) -> bytes:
    signals = signals if signals is not None else b"\x81" + enc("power_kw") + value
    return b"\x94" + asset_id + ts + seq + signals


def counters(fleet: Fleet) -> dict[str, int]:
    metrics = fleet.metrics()
    return {key: metrics[key] for key in OUTCOME_KEYS}


def assert_report_equals_counters(before: dict[str, int], report: IngestReport,
                                  after: dict[str, int]) -> None:
    delta = {key: after[key] - before[key] for key in OUTCOME_KEYS}
    assert delta == {**{f"samples_{k}": v for k, v in report.counts().items()}, "batches": 1}


def assert_small(error: SampleError) -> None:
    """An error never carries more of the batch than a bounded quote."""
    for value in (error.asset_id, error.value):
        assert not isinstance(value, list | dict | tuple | bytes)
        assert not isinstance(value, str) or len(value) <= SHOWN_CHARS
    assert len(str(error)) <= MESSAGE_CHARS


# -- the reproduction ----------------------------------------------------------------

@pytest.mark.parametrize("payload", [
    pytest.param(nested(1000), id="issue-1000-arrays"),
    pytest.param(nested(1000, level=b"\x81\xa1k"), id="1000-maps"),
    pytest.param(nested(1025), id="past-msgpacks-stack"),
    pytest.param(nested(100_000), id="100k-arrays"),
    pytest.param(batch(version=nested(1000)), id="version"),
    pytest.param(batch(source=nested(1000)), id="source"),
    pytest.param(batch(sent_at=nested(1000)), id="sent_at"),
    pytest.param(batch(rows=b"\x81\xa1k" + nested(1000)), id="samples-a-map"),
    pytest.param(batch(rows=[row(b"\xa4t-01", nested(1030))]), id="ts-past-msgpacks-stack"),
])
def test_a_deeply_nested_batch_raises_ingest_error_and_changes_nothing(
        fleet: Fleet, payload: bytes) -> None:
    before = counters(fleet)
    with pytest.raises(IngestError) as refused:
        fleet.ingest(payload)
    assert len(str(refused.value)) <= MESSAGE_CHARS
    assert counters(fleet) == before


def test_nesting_in_any_field_of_a_sample_rejects_that_sample_alone(
        fleet: Fleet, clock: VirtualClock) -> None:
    deep = nested(1000, b"\xcb" + enc(1.0)[1:])
    now = b"\xcb" + enc(clock.now())[1:]
    cases = {                      # field in the error: the sample at index 1
        "sample": deep,
        "asset_id": row(deep, now),
        "ts": row(b"\xa4t-02", deep),
        "seq": row(b"\xa4t-02", now, seq=deep),
        "signals": row(b"\xa4t-02", now, signals=deep),
        "signals.power_kw": row(b"\xa4t-02", now, value=deep),
    }
    for field, bad in cases.items():
        fleet.advance(1.0)
        now = b"\xcb" + enc(clock.now())[1:]
        before = counters(fleet)
        report = fleet.ingest(batch(rows=[row(b"\xa4t-01", now), bad, row(b"\xa4b-02", now)]))
        assert (report.accepted, report.rejected, report.total) == (2, 1, 3), field
        (error,) = report.errors
        assert (error.index, error.field) == (1, field)
        assert error.value == "[[[[[...]]]]]" or (field == "sample" and
                                                  error.value.startswith("[[[["))
        assert_small(error)
        assert_report_equals_counters(before, report, counters(fleet))
        assert fleet.asset("t-01").last_sample_ts == clock.now()
        assert fleet.asset("b-02").last_sample_ts == clock.now()
    assert_consistent(fleet)


def test_a_huge_signal_name_is_quoted_short(fleet: Fleet, clock: VirtualClock) -> None:
    name = "x" * 1_000_000
    report = fleet.ingest([Sample("t-01", clock.now(), {name: 1.0}),
                           Sample("t-02", clock.now(), {"power_kw": 1.0})])
    (error,) = report.errors
    assert error.field.startswith("signals.xxx") and len(error.field) <= 80
    assert_small(error)
    assert report.accepted == 1


# -- values made in Python: deeper than the interpreter's recursion limit, cyclic, hostile ----

class Hostile:
    """An object every generic operation on which raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")

    def __hash__(self) -> int:
        raise RuntimeError("no hash")


class HostileAssetId:
    """Not a Sample, and reading its asset_id raises."""

    @property
    def asset_id(self) -> str:
        raise RuntimeError("no asset id")


def deep_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def cyclic() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


HOSTILE_SAMPLES = [
    pytest.param(lambda now: Sample("t-02", now, {"power_kw": deep_list(5000)}), "signals.power_kw",
                 id="value-5000-deep"),
    pytest.param(lambda now: Sample("t-02", deep_list(5000), {"power_kw": 1.0}), "ts",
                 id="ts-5000-deep"),
    pytest.param(lambda now: Sample("t-02", now, {"power_kw": cyclic()}), "signals.power_kw",
                 id="value-cyclic"),
    pytest.param(lambda now: Sample(deep_list(5000), now, {"power_kw": 1.0}),  # type: ignore
                 "asset_id", id="asset_id-5000-deep"),
    pytest.param(lambda now: Sample("t-02", now, {"power_kw": 1.0}, cyclic()),  # type: ignore
                 "seq", id="seq-cyclic"),
    pytest.param(lambda now: Sample("t-02", now, {"power_kw": Hostile()}), "signals.power_kw",
                 id="value-hostile"),
    pytest.param(lambda now: Sample(Hostile(), now, {"power_kw": 1.0}),  # type: ignore
                 "asset_id", id="asset_id-hostile"),
    pytest.param(lambda now: Sample("t-02", now, {"power_kw": 10**5000}), "signals.power_kw",
                 id="value-huge-int"),
    pytest.param(lambda now: HostileAssetId(), "sample", id="not-a-sample-hostile"),
]


@pytest.mark.parametrize("store", [False, True], ids=["no-store", "sqlite"])
@pytest.mark.parametrize(("make", "field"), HOSTILE_SAMPLES)
def test_a_hostile_value_made_in_python_rejects_its_sample_alone(
        model: FleetModel, clock: VirtualClock, tmp_path: Path, store: bool, make: Any,
        field: str) -> None:
    url = f"sqlite:///{tmp_path / 'twin.db'}" if store else None
    with Fleet(model, clock=clock, store=url) as fleet:
        now = clock.now()
        before = counters(fleet)
        report = fleet.ingest([Sample("t-01", now, {"power_kw": 10.0}), make(now),
                               Sample("b-02", now, {"power_kw": 1.0})])
        assert (report.accepted, report.rejected) == (2, 1)
        (error,) = report.errors
        assert (error.index, error.field) == (1, field)
        assert_small(error)
        assert_report_equals_counters(before, report, counters(fleet))


# -- the renderer ----------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    deep_list(100_000), cyclic(), ["x" * 10_000_000], list(range(1_000_000)),
    {i: [i] for i in range(100_000)}, b"\xff" * 1_000_000, bytearray(1_000_000), 10**100_000,
    Hostile(), msgpack.ExtType(5, b"z" * 1_000_000), msgpack.unpackb(nested(1024)),
], ids=["deep", "cyclic", "long-str", "long-list", "big-map", "bytes", "bytearray",
        "huge-int", "hostile", "ext", "msgpack-1024-deep"])
def test_brief_is_bounded_for_any_value(value: Any) -> None:
    text = brief(value)
    assert isinstance(text, str) and len(text) <= SHOWN_CHARS
    assert isinstance(plain(value), str)


def test_plain_keeps_small_plain_values_as_themselves() -> None:
    for value in (None, True, -7, 2**64 - 1, 1.5, "t-01"):
        assert plain(value) == value
    assert brief([1, [2, [3, [4, [5]]]]]) == "[1, [2, [3, [4, [...]]]]]"
    assert brief("x" * 100).endswith("...") and brief({"a": b"b"}) == "{'a': b'b'}"


# -- Hypothesis: random nesting anywhere -----------------------------------------------------

NESTING = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                   print_blob=False, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                            HealthCheck.too_slow])
wire_ints = st.integers(-(2**63), 2**64 - 1)
scalars = st.one_of(st.none(), st.booleans(), wire_ints, st.floats(), st.text(max_size=6),
                    st.binary(max_size=6), st.sampled_from(["t-01", "power_kw"])).map(enc)
shallow = st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=4),
                       lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                       max_leaves=8).map(enc)
# the header of one level: an array of 1 or 2, a map of 1 under a scalar key, or a map whose
# key is the rest (a container as a map key makes a batch unreadable as a whole)
LEVELS = [b"\x91", b"\x92\xc0", b"\x81\xa1k", b"\x81\xc0", b"\x82\xc0\xc0\xa1k"]


@st.composite
def nested_values(draw: st.DrawFn) -> bytes:
    depth = draw(st.one_of(st.integers(0, 6),
                           st.sampled_from([100, 600, 1000, 1017, 1018, 1020, 1024, 1025, 3000])))
    pattern = draw(st.lists(st.sampled_from(LEVELS), min_size=1, max_size=3))
    leaf = draw(st.one_of(scalars, shallow))
    return b"".join(pattern[i % len(pattern)] for i in range(depth)) + leaf


HEADER = ("version", "source", "sent_at", "samples")
SAMPLE = ("sample", "asset_id", "ts", "seq", "signals", "signal name", "signal value")


@NESTING
@given(value=nested_values(), position=st.sampled_from(HEADER + SAMPLE))
def test_random_nesting_anywhere_gives_ingest_error_or_per_sample_rejections_and_reports_equal_counters(  # noqa: E501
        fleet: Fleet, clock: VirtualClock, value: bytes, position: str) -> None:
    fleet.advance(1.0)
    now = b"\xcb" + enc(clock.now())[1:]
    mate = row(b"\xa4t-02", now)
    parts = {"asset_id": b"\xa4t-01", "ts": now, "seq": b"\x07"}
    fields = {key: value if key == position else part for key, part in parts.items()}
    if position == "signals":
        bad = row(fields["asset_id"], fields["ts"], fields["seq"], signals=value)
    elif position == "signal name":
        bad = row(fields["asset_id"], fields["ts"], fields["seq"],
                  signals=b"\x81" + value + enc(1.0))
    elif position == "signal value":
        bad = row(fields["asset_id"], fields["ts"], fields["seq"], value=value)
    else:
        bad = value if position == "sample" else row(fields["asset_id"], fields["ts"],
                                                     fields["seq"])
    header = {"version": b"\x01", "source": b"\xa2gw", "sent_at": now,
              "samples": b"\x92" + mate + bad}
    if position in HEADER:
        header[position] = value
    payload = batch(header["version"], header["source"], header["sent_at"], header["samples"])
    before = counters(fleet)
    try:
        report = fleet.ingest(payload)
    except IngestError as error:
        event("IngestError")
        assert len(str(error)) <= MESSAGE_CHARS
        assert counters(fleet) == before
        return
    event(f"report: {report.rejected} rejected")
    declared = msgpack.unpackb(payload, strict_map_key=False)[3]
    assert report.total == len(declared)
    assert report.rejected == len(report.errors)
    for error in report.errors:
        assert_small(error)
    assert_report_equals_counters(before, report, counters(fleet))
    if position in SAMPLE:
        assert [e.index for e in report.errors] in ([], [1])
        assert fleet.asset("t-02").last_sample_ts == clock.now()
