"""The live view's REST endpoints and probes, through aiohttp's test client."""

from __future__ import annotations

import asyncio
import threading

import msgpack
from aiohttp.test_utils import TestClient

from twin import Fleet, Rollup, Sample, VirtualClock
from twin.web.server import STATE
from twin.wire import pack_batch


async def test_rollup_counts_expected_assets_and_names_the_missing(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    web_fleet.ingest([Sample("t-01", clock.now(), {"power_kw": 2100.0})])
    response = await client.get("/api/rollups/acme/north/alpha")
    assert response.status == 200
    body = await response.json()
    assert (body["expected"], body["reporting"], body["unknown"]) == (3, 1, 2)
    assert body["power_kw"] == 2100.0
    assert body["missing"] == ["b-01", "c-01"]
    assert body["history"][-1][1:] == [2100.0, 1, 3]


async def test_rollups_lists_every_node_of_a_level(client: TestClient) -> None:
    body = await (await client.get("/api/rollups?level=site")).json()
    assert sorted(body) == ["acme/north/alpha", "acme/north/gamma", "acme/south/beta"]
    bad = await client.get("/api/rollups?level=planet")
    assert bad.status == 400
    assert "planet" in (await bad.json())["error"]


async def test_an_unknown_path_is_404_and_named(client: TestClient) -> None:
    response = await client.get("/api/rollups/acme/west")
    assert response.status == 404
    assert "acme/west" in (await response.json())["error"]


async def test_an_asset_never_heard_from_has_no_last_seen_not_zero(client: TestClient) -> None:
    body = await (await client.get("/api/assets/b-01")).json()
    assert body["state"] == "unknown"
    assert body["last_seen"] is None and body["age_s"] is None
    assert body["expected"]["rated_kw"] == 5000.0
    missing = await client.get("/api/assets/x-99")
    assert missing.status == 404
    assert "x-99" in (await missing.json())["error"]


async def test_an_offline_asset_keeps_its_last_value_and_its_age(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    web_fleet.ingest([Sample("t-01", clock.now(), {"power_kw": 1500.0})])
    web_fleet.advance(45)
    body = await (await client.get("/api/assets/t-01")).json()
    assert body["state"] == "offline"
    assert body["reported"]["power_kw"] == 1500.0
    assert body["age_s"] == 45.0


async def test_ingest_takes_a_msgpack_batch_and_reports_per_sample(
        client: TestClient, clock: VirtualClock) -> None:
    payload = pack_batch([Sample("t-01", clock.now(), {"power_kw": 900.0}),
                          Sample("nope", clock.now(), {"power_kw": 1.0})], source="gw-1")
    response = await client.post("/api/ingest", data=payload,
                                 headers={"Content-Type": "application/msgpack"})
    assert response.status == 200
    report = await response.json()
    assert (report["total"], report["accepted"], report["rejected"]) == (2, 1, 1)
    assert report["errors"][0]["index"] == 1 and report["errors"][0]["field"] == "asset_id"
    assert "nope" in report["errors"][0]["message"]
    rollup = await (await client.get("/api/rollups/acme")).json()
    assert rollup["power_kw"] == 900.0


async def test_ingest_refuses_what_is_not_a_batch(client: TestClient) -> None:
    unreadable = await client.post("/api/ingest", data=b"\xc1garbage",
                                    headers={"Content-Type": "application/msgpack"})
    assert unreadable.status == 400
    assert (await unreadable.json())["error"]
    wrong_version = await client.post("/api/ingest", data=msgpack.packb([99, "", None, []]),
                                      headers={"Content-Type": "application/msgpack"})
    assert wrong_version.status == 400
    as_json = await client.post("/api/ingest", json={"samples": []})
    assert as_json.status == 415
    assert "application/json" in (await as_json.json())["error"]


async def test_metrics_expose_the_fleet_and_the_live_view(client: TestClient, web_fleet: Fleet,
                                                          clock: VirtualClock) -> None:
    web_fleet.ingest([Sample("t-01", clock.now(), {"power_kw": 1.0})])
    response = await client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    assert 'twin_samples_total{outcome="accepted"} 1.0' in text
    # states by the names used everywhere else: one turbine online, the others never heard of
    unknown = web_fleet.metrics()["assets"] - 1
    assert 'twin_assets_by_state{state="online"} 1.0' in text
    assert f'twin_assets_by_state{{state="unknown"}} {unknown:.1f}' in text
    assert 'state="reporting"' not in text
    assert "twin_web_clients 0.0" in text
    assert "twin_web_auth_failures_total 0.0" in text


async def test_healthz_and_readyz_answer_when_the_server_runs(client: TestClient) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["status"] == "ready"


async def test_readyz_answers_at_once_while_the_fleet_is_busy(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    # a subscriber that blocks holds the fleet's lock, as a slow store would during ingest
    release, holding = threading.Event(), threading.Event()

    def slow(_: Rollup) -> None:
        holding.set()
        release.wait(10)

    web_fleet.subscribe("acme", slow)
    busy = threading.Thread(target=web_fleet.ingest,
                            args=([Sample("t-01", clock.now(), {"power_kw": 1.0})],))
    busy.start()
    try:
        assert await asyncio.get_running_loop().run_in_executor(None, holding.wait, 10)
        ready = await asyncio.wait_for(client.get("/readyz"), timeout=2)
        assert ready.status == 200
        alive = await asyncio.wait_for(client.get("/healthz"), timeout=2)
        assert alive.status == 200
    finally:
        release.set()
        busy.join()


async def test_readyz_fails_once_the_fleet_is_closed(client: TestClient, web_fleet: Fleet
                                                     ) -> None:
    web_fleet.close()
    await client.app[STATE].hub.probe()
    response = await client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["reason"] == "the fleet is closed"
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/api/rollups/acme")).status == 503
