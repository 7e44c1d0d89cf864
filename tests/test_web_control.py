"""The control API over HTTP (commands, the command book, dispatches) and control in the live
view's websocket (dispatch reports, roll-ups that count assets not following), through
aiohttp's test client on a fleet in virtual time whose transport acknowledges at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import ClientResponse, ClientWebSocketResponse
from aiohttp.test_utils import TestClient
from pytest_aiohttp.plugin import AiohttpClient

from twin import Fleet, FleetModel, Sample, VirtualClock
from twin.control.dispatch import DispatchReport
from twin.control.transport import RecordingTransport
from twin.core.errors import FleetClosed, ShardDown
from twin.store.store import StoreBusy, StoreUnavailable
from twin.web import create_app
from twin.web.control import refusal
from twin.web.dispatches import DispatchBook

ALPHA = "acme/north/alpha"
TOKEN = "s3cret-token-0123456789abcdef"


@pytest.fixture
def web_fleet(model: FleetModel, clock: VirtualClock) -> Iterator[Fleet]:
    """The example fleet (batteries b-01 of 5000 kW in alpha, b-02 of 10 kW in beta) with a
    transport that acknowledges every delivery at once."""
    with Fleet(model, clock=clock, transport=RecordingTransport(auto_ack=True)) as running:
        yield running


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, web_fleet: Fleet) -> TestClient:
    return await aiohttp_client(create_app(web_fleet, rate_hz=50.0, tick_s=0.05))


def everyone_reports(fleet: Fleet, clock: VirtualClock, b01_kw: float = 0.0) -> None:
    now = clock.now()
    fleet.ingest([Sample("t-01", now, {"power_kw": 1000.0}),
                  Sample("b-01", now, {"power_kw": b01_kw, "soc_pct": 50.0}),
                  Sample("c-01", now, {"power_kw": 20.0}),
                  Sample("t-02", now, {"power_kw": 500.0}),
                  Sample("b-02", now, {"power_kw": 0.0, "soc_pct": 50.0})])


async def in_pool(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def refused(response: ClientResponse, status: int, *words: str) -> dict[str, Any]:
    """The error body of a refusal with ``status`` whose message holds every one of
    ``words``."""
    body: dict[str, Any] = await response.json()
    assert response.status == status, body
    for word in words:
        assert word in body["error"], body
    return body


# -- POST /api/assets/{id}/command ----------------------------------------------------------

async def test_a_command_to_an_online_battery_answers_its_receipt(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    everyone_reports(web_fleet, clock)
    response = await client.post("/api/assets/b-01/command",
                                 json={"desired": {"setpoint_kw": 250}, "ttl_s": 30})
    assert response.status == 200
    receipt = await response.json()
    assert receipt["asset_id"] == "b-01"
    assert receipt["desired"]["setpoint_kw"] == 250.0
    assert receipt["expires_at"] == clock.now() + 30
    assert receipt["state"] == "delivered"            # the transport acknowledged at once
    assert receipt["command_id"] == str(receipt["desired_version"])
    view = await (await client.get("/api/assets/b-01")).json()
    assert view["desired"]["setpoint_kw"] == 250.0
    assert view["desired_version"] == receipt["desired_version"]


async def test_a_command_to_an_unknown_asset_is_404_and_names_it(client: TestClient) -> None:
    body = await refused(await client.post("/api/assets/x-99/command",
                                           json={"desired": {"setpoint_kw": 1}}), 404, "'x-99'")
    assert body["asset_id"] == "x-99"


async def test_a_command_to_an_asset_not_online_is_409_with_its_state(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    never = await refused(await client.post("/api/assets/b-01/command",
                                            json={"desired": {"setpoint_kw": 1}}),
                          409, "never reported", "commands need it online")
    assert (never["asset_id"], never["state"], never["last_seen"]) == ("b-01", "unknown", None)
    everyone_reports(web_fleet, clock)
    web_fleet.advance(45)
    gone = await refused(await client.post("/api/assets/b-01/command",
                                           json={"desired": {"setpoint_kw": 1}}), 409)
    assert (gone["state"], gone["last_seen"]) == ("offline", clock.now() - 45)


async def test_a_stale_if_version_is_409_and_changes_nothing(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    everyone_reports(web_fleet, clock)
    first = await (await client.post("/api/assets/b-01/command",
                                     json={"desired": {"setpoint_kw": 100}})).json()
    version = first["desired_version"]
    body = await refused(await client.post(
        "/api/assets/b-01/command",
        json={"desired": {"setpoint_kw": 200}, "if_version": version - 1}),
        409, f"if_version={version - 1}", f"desired version {version}")
    assert (body["field"], body["value"], body["desired_version"]) == (
        "if_version", version - 1, version)
    assert web_fleet.asset("b-01").desired["setpoint_kw"] == 100.0
    matching = await client.post("/api/assets/b-01/command",
                                 json={"desired": {"setpoint_kw": 200}, "if_version": version})
    assert matching.status == 200


async def test_an_invalid_command_is_400_naming_the_field_and_the_value(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    everyone_reports(web_fleet, clock)
    url = "/api/assets/b-01/command"
    await refused(await client.post(url, json={"desired": {"setpoint_kw": 1e9}}), 400,
                  "'setpoint_kw'", "outside [-5000, 5000] kW")
    await refused(await client.post(url, json={"desired": {"spin": 1}}), 400,
                  "'spin'", "valid: setpoint_kw")
    await refused(await client.post(url, json={"desired": {}}), 400, "non-empty")
    body = await refused(await client.post(url, json={"desired": [50]}), 400, "desired")
    assert (body["field"], body["value"]) == ("desired", "[50]")     # a container: its repr
    assert web_fleet.commands("b-01") == []


async def test_a_bad_ttl_or_if_version_is_400_naming_it(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    everyone_reports(web_fleet, clock)
    url = "/api/assets/b-01/command"
    for ttl in (-1, 0, "30", True):
        body = await refused(await client.post(url, json={"desired": {"setpoint_kw": 1},
                                                          "ttl_s": ttl}), 400, "ttl_s")
        assert (body["field"], body["value"]) == ("ttl_s", ttl)
    await refused(await client.post(url, data='{"desired": {"setpoint_kw": 1}, "ttl_s": NaN}',
                                    headers={"Content-Type": "application/json"}), 400,
                  "not JSON", "NaN")
    for version in (1.5, -1, "3", False):
        await refused(await client.post(url, json={"desired": {"setpoint_kw": 1},
                                                   "if_version": version}), 400, "if_version")
    assert web_fleet.commands("b-01") == []


async def test_a_command_body_is_a_json_object_of_known_fields(client: TestClient) -> None:
    url = "/api/assets/b-01/command"
    await refused(await client.post(url, data="{nope", headers={"Content-Type":
                                                                "application/json"}),
                  400, "not JSON")
    await refused(await client.post(url, json=[1, 2]), 400, "a JSON object")
    body = await refused(await client.post(url, json={"desired": {"setpoint_kw": 1},
                                                      "ttl": 5}),
                         400, "'ttl': unknown field", "valid: desired, ttl_s, if_version")
    assert body["field"] == "ttl"
    await refused(await client.post(url, json={"setpoint_kw": 1}), 400, "unknown field")
    await refused(await client.post(url, json={}), 400, "desired: required")


async def test_writes_take_only_json_so_other_sites_cannot_post_them(
        client: TestClient) -> None:
    # text/plain and forms are what another site's page may send without a CORS preflight
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = await client.post("/api/assets/b-01/command",
                                     data='{"desired": {"setpoint_kw": 1}}',
                                     headers={"Content-Type": content_type})
        await refused(response, 415, content_type, "application/json")
    await refused(await client.post("/api/dispatch", data="path=acme",
                                    headers={"Content-Type": "text/plain"}), 415)


# -- GET /api/commands ----------------------------------------------------------------------

async def test_commands_are_listed_by_asset_and_by_state(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    everyone_reports(web_fleet, clock)
    for kw in (100, 200):
        await client.post("/api/assets/b-01/command", json={"desired": {"setpoint_kw": kw}})
    await client.post("/api/assets/b-02/command", json={"desired": {"setpoint_kw": 5}})
    every = await client.get("/api/commands")
    records = await every.json()
    assert [(r["asset_id"], r["desired"]["setpoint_kw"]) for r in records] == [
        ("b-01", 100.0), ("b-01", 200.0), ("b-02", 5.0)]
    assert every.headers["X-Total-Count"] == "3"
    mine = await (await client.get("/api/commands?asset=b-01")).json()
    assert [r["state"] for r in mine] == ["superseded", "delivered"]
    superseded = await (await client.get("/api/commands?state=superseded")).json()
    assert [r["desired"]["setpoint_kw"] for r in superseded] == [100.0]
    newest = await client.get("/api/commands?limit=1")
    assert [r["asset_id"] for r in await newest.json()] == ["b-02"]
    assert newest.headers["X-Total-Count"] == "3"


async def test_commands_refuse_an_unknown_state_naming_the_valid_ones(
        client: TestClient) -> None:
    await refused(await client.get("/api/commands?state=lost"), 400, "'lost'",
                  "valid: sent, delivered, applied, not_followed")
    await refused(await client.get("/api/commands?asset=x-99"), 404, "'x-99'")
    await refused(await client.get("/api/commands?limit=0"), 400, "limit")
    await refused(await client.get("/api/commands?limit=many"), 400, "'many'")


# -- dispatches -------------------------------------------------------------------------------

async def start(client: TestClient, **fields: Any) -> dict[str, Any]:
    response = await client.post("/api/dispatch", json={"path": "acme", "target_kw": 1000,
                                                        "duration_s": 600, **fields})
    body: dict[str, Any] = await response.json()
    assert response.status == 201, body
    return body


async def test_posting_a_dispatch_answers_201_with_its_first_report(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    everyone_reports(web_fleet, clock)
    response = await client.post("/api/dispatch", json={
        "path": "acme", "target_kw": 1000, "duration_s": 600, "strategy": "soc",
        "lease_s": 5, "kinds": ["battery"]})
    assert response.status == 201
    body = await response.json()
    assert response.headers["Location"] == f"/api/dispatch/{body['id']}"
    assert body["status"] == "active"
    assert body["spec"]["path"] == "acme" and body["spec"]["strategy"] == "soc"
    assert body["spec"]["end"] == clock.now() + 600
    report = body["report"]
    assert (report["dispatch_id"], report["target_kw"], report["members"]) == (
        body["id"], 1000.0, 2)
    assert report["allocated_kw"] == pytest.approx(1000.0)
    assert report["ok"] is True
    assert web_fleet.get_dispatch(body["id"]).report() is not None


async def test_dispatch_fields_are_checked_and_named(client: TestClient) -> None:
    ok: dict[str, Any] = {"path": "acme", "target_kw": 1000, "duration_s": 600}
    bad: list[tuple[dict[str, Any], str, Any]] = [
        ({"target_kw": "lots"}, "target_kw", "lots"),
        ({"duration_s": -5}, "duration_s", -5),
        ({"duration_s": 0}, "duration_s", 0),
        ({"lease_s": 0}, "lease_s", 0),
        ({"ramp_kw_per_s": -1}, "ramp_kw_per_s", -1),
        ({"flip_threshold_kw": -1}, "flip_threshold_kw", -1),
        ({"strategy": "max"}, "strategy", "max"),
        ({"kinds": "battery"}, "kinds", "battery"),
        ({"kinds": []}, "kinds", "[]"),
        ({"path": 7}, "path", 7)]
    for change, field, value in bad:
        body = await refused(await client.post("/api/dispatch", json={**ok, **change}), 400,
                             field)
        assert (body["field"], body["value"]) == (field, value)
    missing = await refused(await client.post("/api/dispatch", json={"path": "acme"}), 400,
                            "target_kw: required")
    assert missing["field"] == "target_kw"
    await refused(await client.post("/api/dispatch", json={**ok, "colour": "red"}), 400,
                  "'colour': unknown field")
    # the fleet's own checks come back as 400 too, naming what it refused
    await refused(await client.post("/api/dispatch", json={**ok, "kinds": ["turbine"]}), 400,
                  "kind 'turbine' cannot be dispatched")
    await refused(await client.post("/api/dispatch", json={**ok, "kinds": ["zeppelin"]}), 400,
                  "unknown kind 'zeppelin'")
    assert (await (await client.get("/api/dispatch")).json()) == []


async def test_a_dispatch_to_an_unknown_path_is_404(client: TestClient) -> None:
    body = await refused(await client.post("/api/dispatch", json={
        "path": "acme/west", "target_kw": 10, "duration_s": 60}), 404, "'acme/west'")
    assert (body["field"], body["value"]) == ("path", "acme/west")


async def test_a_dispatch_over_assets_already_dispatched_is_409(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    everyone_reports(web_fleet, clock)
    first = await start(client)
    await refused(await client.post("/api/dispatch", json={
        "path": ALPHA, "target_kw": 10, "duration_s": 60}), 409,
        f"b-01 (in {first['id']})")


async def test_a_dispatch_is_read_with_its_spec_status_and_latest_report(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    everyone_reports(web_fleet, clock)
    started = await start(client)
    await in_pool(web_fleet.advance, 3)
    body = await (await client.get(f"/api/dispatch/{started['id']}")).json()
    assert (body["id"], body["status"]) == (started["id"], "active")
    assert body["spec"] == started["spec"]
    assert body["report"]["at"] == clock.now()
    listed = await (await client.get("/api/dispatch")).json()
    assert [d["id"] for d in listed] == [started["id"]]
    await refused(await client.get("/api/dispatch/d-99"), 404, "unknown dispatch 'd-99'")
    await refused(await client.get("/api/dispatch?active=yes"), 400, "active", "'yes'")


async def test_patch_sets_a_new_target_at_once(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    everyone_reports(web_fleet, clock)
    started = await start(client)
    response = await client.patch(f"/api/dispatch/{started['id']}", json={"target_kw": -400})
    assert response.status == 200
    body = await response.json()
    assert body["spec"]["target_kw"] == -400.0
    assert body["report"]["target_kw"] == -400.0
    assert body["report"]["allocated_kw"] == pytest.approx(-400.0)
    await refused(await client.patch(f"/api/dispatch/{started['id']}",
                                     json={"target_kw": "less"}), 400, "target_kw", "'less'")
    await refused(await client.patch(f"/api/dispatch/{started['id']}", json={}), 400,
                  "target_kw: required")
    await refused(await client.patch("/api/dispatch/d-99", json={"target_kw": 1}), 404)


async def test_delete_cancels_with_the_final_report_and_an_ended_dispatch_is_409(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    everyone_reports(web_fleet, clock)
    started = await start(client)
    response = await client.delete(f"/api/dispatch/{started['id']}")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "cancelled"
    assert (body["report"]["status"], body["report"]["reason"]) == (
        "cancelled", "cancelled by a caller")
    assert web_fleet.asset("b-01").desired["setpoint_kw"] == 0.0     # back at the default
    again = await refused(await client.delete(f"/api/dispatch/{started['id']}"), 409,
                          "is cancelled")
    assert again["status"] == "cancelled"
    await refused(await client.patch(f"/api/dispatch/{started['id']}", json={"target_kw": 1}),
                  409, "start a new one")
    await refused(await client.delete("/api/dispatch/d-99"), 404)
    assert (await (await client.get("/api/dispatch?active=true")).json()) == []
    assert len(await (await client.get("/api/dispatch")).json()) == 1


async def test_a_dispatch_that_ran_its_course_cannot_be_cancelled(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    everyone_reports(web_fleet, clock)
    started = await start(client, duration_s=2)
    await in_pool(web_fleet.advance, 3)
    assert (await (await client.get(f"/api/dispatch/{started['id']}")).json())[
        "status"] == "ended"
    await refused(await client.delete(f"/api/dispatch/{started['id']}"), 409, "is ended")


async def test_a_closed_fleet_answers_503(client: TestClient, web_fleet: Fleet) -> None:
    web_fleet.close()
    await refused(await client.post("/api/assets/b-01/command",
                                    json={"desired": {"setpoint_kw": 1}}), 503)
    await refused(await client.post("/api/dispatch", json={
        "path": "acme", "target_kw": 1, "duration_s": 60}), 503)
    await refused(await client.get("/api/commands"), 503)


def test_store_and_shard_trouble_is_503_with_a_retry_after() -> None:
    busy = refusal(StoreBusy("the store's queue is full"))
    down = refusal(StoreUnavailable("connection refused"))
    shard = refusal(ShardDown(1, "down", "killed"))
    closed = refusal(FleetClosed("the fleet is closed"))
    assert busy is not None and down is not None and shard is not None and closed is not None
    assert (busy.http_status, busy.retry_after) == (503, 1)
    assert (down.http_status, down.retry_after) == (503, 5)
    assert (shard.http_status, shard.retry_after) == (503, 5)
    assert closed.http_status == 503
    assert refusal(RuntimeError("a bug")) is None            # a fault of ours: a 500


async def test_control_endpoints_need_the_bearer_token_like_the_rest(
        aiohttp_client: AiohttpClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    client = await aiohttp_client(create_app(web_fleet, token=TOKEN, host="0.0.0.0"))
    everyone_reports(web_fleet, clock)
    calls = [("POST", "/api/assets/b-01/command", {"desired": {"setpoint_kw": 1}}),
             ("GET", "/api/commands", None),
             ("POST", "/api/dispatch", {"path": "acme", "target_kw": 1, "duration_s": 60}),
             ("GET", "/api/dispatch", None), ("GET", "/api/dispatch/d-1", None),
             ("PATCH", "/api/dispatch/d-1", {"target_kw": 2}),
             ("DELETE", "/api/dispatch/d-1", None)]
    for method, url, body in calls:
        response = await client.request(method, url, json=body)
        assert response.status == 401, (method, url)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert web_fleet.commands() == [] and web_fleet.dispatches() == []
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    answers = [(await client.request(method, url, json=body, headers=bearer)).status
               for method, url, body in calls]
    assert answers == [200, 200, 201, 200, 200, 200, 200]


# -- the websocket ----------------------------------------------------------------------------

_unread: dict[int, list[dict[str, Any]]] = {}


async def next_of(ws: ClientWebSocketResponse, kind: str,
                  where: Callable[[dict[str, Any]], bool] = lambda m: True,
                  seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The next message of ``kind`` that satisfies ``where`` (all are kept in ``seen``)."""
    unread = _unread.setdefault(id(ws), [])
    async with asyncio.timeout(5):
        while True:
            if not unread:
                frame: dict[str, Any] = await ws.receive_json()
                unread.extend(frame["messages"] if frame["type"] == "batch" else [frame])
            message = unread.pop(0)
            if seen is not None:
                seen.append(message)
            if message["type"] == kind and where(message):
                return message


async def test_dispatch_reports_reach_live_view_clients_until_it_ends(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    everyone_reports(web_fleet, clock)
    ws = await client.ws_connect("/ws")
    assert (await next_of(ws, "dispatches"))["items"] == []          # on connect: none
    started = await start(client, target_kw=800)
    shown = await next_of(ws, "dispatches", lambda m: bool(m["items"]))
    item = shown["items"][0]
    assert (item["dispatch_id"], item["path"], item["target_kw"]) == (started["id"], "acme",
                                                                      800.0)
    assert (item["eligible"], item["members"]) == (2, 2)
    await in_pool(web_fleet.advance, 1)
    await in_pool(everyone_reports, web_fleet, clock, 790.0)
    await in_pool(web_fleet.advance, 1)
    later = await next_of(ws, "dispatches", lambda m: m["items"] and
                          m["items"][0]["at"] == clock.now())
    assert later["items"][0]["achieved_kw"] == 790.0
    await client.delete(f"/api/dispatch/{started['id']}")
    assert (await next_of(ws, "dispatches", lambda m: not m["items"]))["items"] == []
    await ws.close()


async def test_a_client_connecting_mid_dispatch_sees_it_at_once(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    everyone_reports(web_fleet, clock)
    started = await start(client)
    ws = await client.ws_connect("/ws")
    first = await next_of(ws, "dispatches")
    assert [d["dispatch_id"] for d in first["items"]] == [started["id"]]
    await ws.close()


async def test_a_burst_of_dispatch_ticks_reaches_a_client_coalesced(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    everyone_reports(web_fleet, clock)
    await start(client, duration_s=3600)
    ws = await client.ws_connect("/ws")
    await next_of(ws, "dispatches", lambda m: bool(m["items"]))
    reports: list[DispatchReport] = []
    web_fleet.subscribe_dispatches(reports.append)
    seen: list[dict[str, Any]] = []
    for _ in range(50):
        # 50 control ticks on the loop's own thread: the hub cannot drain before they end
        web_fleet.advance(1)
        everyone_reports(web_fleet, clock)
    await next_of(ws, "dispatches", lambda m: m["items"][0]["at"] == clock.now(), seen)
    assert len(reports) == 50
    pushed = [m for m in seen if m["type"] == "dispatches"]
    assert len(pushed) == 1       # one slot for the dispatches: the latest, not 50 in a queue
    await ws.close()


async def test_rollups_count_and_name_the_batteries_not_following(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    everyone_reports(web_fleet, clock)
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "subscribe", "paths": [ALPHA, "acme"]})
    first = await next_of(ws, "rollup", lambda m: m["rollup"]["path"] == ALPHA)
    assert (first["rollup"]["not_following"], first["rollup"]["not_following_ids"]) == (0, [])
    web_fleet.command("b-01", {"setpoint_kw": 1000})
    for _ in range(12):            # b-01 stays at 0 kW beyond its dead time and settle time
        await in_pool(web_fleet.advance, 1)
        await in_pool(everyone_reports, web_fleet, clock)
    flagged = await next_of(ws, "rollup", lambda m: m["rollup"]["path"] == "acme" and
                            m["rollup"]["not_following"] == 1)
    assert flagged["rollup"]["not_following_ids"] == ["b-01"]
    site = await (await client.get(f"/api/rollups/{ALPHA}")).json()
    assert (site["not_following"], site["not_following_ids"]) == (1, ["b-01"])
    await ws.close()


# -- the panel's book -------------------------------------------------------------------------

def report(dispatch_id: str, at: float, status: str = "active") -> DispatchReport:
    return DispatchReport(dispatch_id, "acme", at, status, 100.0, 100.0, 100.0, 100.0, 0.0,
                          90.0, -10.0, "none", 2, 2, 2)


def test_the_book_never_replaces_a_report_with_an_older_one() -> None:
    book = DispatchBook()
    assert book.apply(report("d-1", 10.0))
    assert not book.apply(report("d-1", 9.0))
    assert book.latest["d-1"].at == 10.0
    assert book.apply(report("d-1", 11.0))


def test_the_book_forgets_an_ended_dispatch_for_good() -> None:
    book = DispatchBook()
    book.apply(report("d-1", 10.0))
    book.apply(report("d-2", 10.0))
    assert book.apply(report("d-1", 11.0, "cancelled"))
    assert not book.apply(report("d-1", 12.0))          # a late report of the ended one
    assert list(book.latest) == ["d-2"]
    assert '"dispatch_id":"d-1"' not in book.text()


def test_the_book_encodes_its_message_once_per_change() -> None:
    book = DispatchBook()
    book.apply(report("d-1", 10.0))
    text = book.text()
    assert book.text() is text
    book.apply(report("d-1", 11.0))
    assert book.text() is not text and '"at":11.0' in book.text()
