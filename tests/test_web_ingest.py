"""POST /api/ingest under hostile bodies (issue 10, defect 1): a body the fleet cannot read is
a 4xx naming the problem, one log line and no traceback; a body the fleet applied is always its
200 report, so a client retrying on 5xx never sends an applied batch twice, and the reports it
received add up to the fleet's counters."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import msgpack
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp.plugin import AiohttpClient

from twin import Fleet, FleetModel, IngestReport, VirtualClock
from twin.testing import capture_logs
from twin.web import create_app
from twin.web.messages import report_body
from twin.wire import pack_batch

MSGPACK = {"Content-Type": "application/msgpack"}
OUTCOMES = ("accepted", "duplicate", "late", "future", "stale", "anomalous", "rejected",
            "deferred", "quarantined")


def f64(value: float) -> bytes:
    return b"\xcb" + msgpack.packb(float(value))[1:]


def body(now: float, bad: bytes) -> bytes:
    """A batch of a good sample of t-01 and ``bad`` (the bytes of a sample)."""
    good = b"\x94\xa4t-01" + f64(now) + b"\xc0\x81\xa8power_kw" + f64(10.0)
    return b"\x94\x01\xa2gw\xc0\x92" + good + bad


DEEP = b"\x91" * 1000 + b"\xc0"


def bodies(now: float) -> list[tuple[str, bytes, int]]:
    """(name, body, status): the issue's body and the nesting in each field of a sample."""
    row = b"\x94\xa4t-02"
    return [
        ("issue", DEEP, 400),
        ("past-msgpacks-stack", b"\x91" * 2000 + b"\xc0", 400),
        ("source", b"\x94\x01" + DEEP + b"\xc0\x90", 400),
        ("sample", body(now, DEEP), 200),
        ("asset_id", body(now, b"\x94" + DEEP + f64(now) + b"\xc0\x81\xa8power_kw\x01"), 200),
        ("ts", body(now, row + DEEP + b"\xc0\x81\xa8power_kw\x01"), 200),
        ("seq", body(now, row + f64(now) + DEEP + b"\x81\xa8power_kw\x01"), 200),
        ("signals", body(now, row + f64(now) + b"\xc0" + DEEP), 200),
        ("signal value", body(now, row + f64(now) + b"\xc0\x81\xa8power_kw" + DEEP), 200),
    ]


async def test_a_nested_body_is_a_4xx_or_its_200_report_with_one_log_line_at_most(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock,
        caplog: pytest.LogCaptureFixture) -> None:
    received = dict.fromkeys(OUTCOMES, 0)
    for case in range(len(bodies(0.0))):
        clock.advance(1.0)                     # each batch's good sample is a new one
        name, payload, status = bodies(clock.now())[case]
        caplog.clear()
        with capture_logs() as entries:
            response = await client.post("/api/ingest", data=payload, headers=MSGPACK)
            answer = await response.json()
        assert response.status == status, (name, answer)
        if status == 200:
            assert (answer["accepted"], answer["rejected"]) == (1, 1), name
            (error,) = answer["errors"]
            assert error["index"] == 1 and len(error["message"]) < 600
            assert "[[[[" in error["value"] and len(error["value"]) <= 60
            assert entries == []
            for outcome in OUTCOMES:
                received[outcome] += answer[outcome]
        else:
            assert "nests" in answer["error"] or "[[[[[...]]]]]" in answer["error"], name
            assert len(answer["error"]) < 600
            assert [e["event"] for e in entries] == ["ingest_refused"]
            assert entries[0]["status"] == status
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == [], name
    metrics = web_fleet.metrics()
    assert {o: metrics[f"samples_{o}"] for o in OUTCOMES} == received
    assert metrics["batches"] == sum(1 for *_, status in bodies(0.0) if status == 200)


async def test_refusals_name_the_problem_once_each(client: TestClient, web_fleet: Fleet
                                                   ) -> None:
    cases = [(b"\xc1garbage", "application/msgpack", 400, "not valid msgpack"),
             (msgpack.packb([99, "", None, []]), "application/msgpack", 400, "version 99"),
             (b"{}", "application/json", 415, "application/json")]
    for payload, content_type, status, words in cases:
        with capture_logs() as entries:
            response = await client.post("/api/ingest", data=payload,
                                         headers={"Content-Type": content_type})
        assert response.status == status
        assert words in (await response.json())["error"]
        assert [(e["event"], e["status"]) for e in entries] == [("ingest_refused", status)]
    assert web_fleet.metrics()["batches"] == 0


async def test_a_clean_batch_answers_its_report_without_logging(
        client: TestClient, clock: VirtualClock) -> None:
    from twin import Sample

    with capture_logs() as entries:
        response = await client.post("/api/ingest", headers=MSGPACK, data=pack_batch(
            [Sample("t-01", clock.now(), {"power_kw": 5.0})]))
    assert response.status == 200 and (await response.json())["accepted"] == 1
    assert entries == []


def test_a_report_always_renders_as_json_even_with_odd_values() -> None:
    from twin import SampleError

    report = IngestReport(rejected=3, errors=[
        SampleError(0, float("nan"), "asset_id", float("inf"), "expected a string"),
        SampleError(1, "t-01", "signals.x", [[[[[[1]]]]]] * 1000, "r" * 10_000),
        SampleError(2, b"\xff", "sample", 2**200, "expected an array"),
    ])
    import json

    rendered = json.loads(report_body(report))
    assert rendered["rejected"] == 3 and len(rendered["errors"]) == 3
    assert all(len(json.dumps(e)) < 1500 for e in rendered["errors"])


# -- applied means reported ------------------------------------------------------------------

def refuse_snapshots(url: str) -> None:
    """Make the store refuse every snapshot (a real SQLite trigger), while the log and the
    derived rows keep working: a failure that comes after a batch was applied."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON twin_snapshots "
                   "BEGIN SELECT RAISE(ABORT, 'snapshots refused'); END")


async def test_a_batch_applied_is_its_200_report_even_if_the_snapshot_after_it_fails(
        aiohttp_client: AiohttpClient, model: FleetModel, clock: VirtualClock,
        tmp_path: Path) -> None:
    from twin import Sample

    url = f"sqlite:///{tmp_path / 'twin.db'}"
    with Fleet(model, clock=clock, store=url, snapshot_every_batches=1) as fleet:
        refuse_snapshots(url)
        client = await aiohttp_client(create_app(fleet, tick_s=0.05))
        received = 0
        with capture_logs() as entries:
            for n in range(3):
                clock.advance(1.0)
                response = await client.post("/api/ingest", headers=MSGPACK, data=pack_batch(
                    [Sample("t-01", clock.now(), {"power_kw": 5.0 + n})]))
                assert response.status == 200
                received += (await response.json())["accepted"]
        report = fleet.ingest([Sample("t-01", clock.now() + 1, {"power_kw": 9.0})])
        metrics = fleet.metrics()
        assert (report.accepted, received) == (1, 3)
        assert (metrics["batches"], metrics["samples_accepted"], metrics["snapshots"]) == (4, 4, 0)
        assert {e["event"] for e in entries} == {"snapshot_failed"}
        assert fleet.asset("t-01").reported == {"power_kw": 9.0}
