"""The live view's websocket: subscriptions, pushes of changed roll-ups to subscribers only,
asset drill-down, transitions, and clear errors for bad messages."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient
from pytest_aiohttp.plugin import AiohttpClient

from twin import Fleet, Sample, VirtualClock
from twin.web import create_app
from twin.web.server import STATE

ALPHA = "acme/north/alpha"
BETA = "acme/south/beta"


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, web_fleet: Fleet) -> TestClient:
    return await aiohttp_client(create_app(web_fleet, rate_hz=50.0, tick_s=0.05))


async def next_of(ws: ClientWebSocketResponse, kind: str,
                  where: Callable[[dict[str, Any]], bool] = lambda m: True,
                  seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The next message of ``kind`` that satisfies ``where`` (others are kept in ``seen``);
    messages that came in one ``batch`` frame are looked at one by one."""
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


_unread: dict[int, list[dict[str, Any]]] = {}     # messages of a batch not looked at yet


async def in_pool(fn: Callable[..., Any], *args: Any) -> Any:
    """Change the fleet from another thread, as an ingesting gateway would."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def test_a_new_client_gets_the_tree_then_the_rollups_it_subscribes_to(
        client: TestClient) -> None:
    ws = await client.ws_connect("/ws")
    tree = await next_of(ws, "tree")
    paths = [node["path"] for node in tree["nodes"]]
    assert paths[:3] == ["acme", "acme/north", ALPHA]
    assert {"path": "grid/ercot", "name": "grid/ercot", "level": "group",
            "parent": None} in tree["nodes"]
    await ws.send_json({"type": "subscribe", "paths": [ALPHA]})
    update = await next_of(ws, "rollup")
    assert update["rollup"]["path"] == ALPHA
    assert (update["rollup"]["reporting"], update["rollup"]["expected"]) == (0, 3)
    assert update["rollup"]["missing"] == ["b-01", "c-01", "t-01"]
    assert update["rollup"]["missing_count"] == 3
    await ws.close()


async def test_a_silent_asset_turns_its_site_row_n_minus_1_of_n_live(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    def everyone_reports(skip: str = "") -> None:
        web_fleet.ingest([Sample(a, clock.now(), {"power_kw": 1.0})
                          for a in ("t-01", "b-01", "c-01") if a != skip])

    await in_pool(everyone_reports)
    ws = await client.ws_connect("/ws")
    await next_of(ws, "tree")
    await ws.send_json({"type": "subscribe", "paths": [ALPHA]})
    full = await next_of(ws, "rollup")
    assert (full["rollup"]["reporting"], full["rollup"]["expected"]) == (3, 3)
    for _ in range(4):                      # c-01 falls silent; the others keep reporting
        await in_pool(web_fleet.advance, 10)
        await in_pool(everyone_reports, "c-01")
    seen: list[dict[str, Any]] = []
    short = await next_of(ws, "rollup", lambda m: m["rollup"]["reporting"] == 2, seen)
    assert short["rollup"]["expected"] == 3
    assert short["rollup"]["missing"] == ["c-01"]
    assert short["history"][-1][2:] == [2, 3]

    def went_offline(message: dict[str, Any]) -> bool:
        return message["type"] == "transitions" and bool(message["items"]) and \
            message["items"][0]["asset_id"] == "c-01" and message["items"][0]["new"] == "offline"

    # the transitions may have come before or after that roll-up
    if not any(went_offline(m) for m in seen):
        await next_of(ws, "transitions", went_offline)
    await ws.close()


async def test_only_subscribed_nodes_are_pushed(client: TestClient, web_fleet: Fleet,
                                                clock: VirtualClock) -> None:
    ws = await client.ws_connect("/ws")
    await next_of(ws, "tree")
    await ws.send_json({"type": "subscribe", "paths": [ALPHA]})
    await next_of(ws, "rollup")
    seen: list[dict[str, Any]] = []
    await in_pool(web_fleet.ingest, [Sample("b-02", clock.now(), {"power_kw": 2.0})])   # beta
    await in_pool(web_fleet.ingest, [Sample("t-01", clock.now(), {"power_kw": 5.0})])   # alpha
    await next_of(ws, "rollup", lambda m: m["rollup"]["power_kw"] == 5.0, seen)
    pushed = {m["rollup"]["path"] for m in seen if m["type"] == "rollup"}
    assert pushed == {ALPHA}
    await ws.send_json({"type": "unsubscribe", "paths": [ALPHA]})
    await ws.send_json({"type": "subscribe", "paths": [BETA]})
    beta = await next_of(ws, "rollup")
    assert beta["rollup"]["path"] == BETA and beta["rollup"]["power_kw"] == 2.0
    await ws.close()


async def test_drilling_into_a_site_lists_its_assets_with_never_for_the_unheard(
        client: TestClient, web_fleet: Fleet, clock: VirtualClock) -> None:
    await in_pool(web_fleet.ingest, [Sample("t-01", clock.now(), {"power_kw": 1200.0})])
    await in_pool(web_fleet.advance, 40)
    ws = await client.ws_connect("/ws")
    await next_of(ws, "tree")
    await ws.send_json({"type": "site", "path": ALPHA})
    message = await next_of(ws, "assets")
    by_id = {a["id"]: a for a in message["assets"]}
    assert list(by_id) == ["t-01", "b-01", "c-01"]
    assert by_id["t-01"]["state"] == "offline"
    assert by_id["t-01"]["reported"]["power_kw"] == 1200.0       # the last value, kept
    assert by_id["t-01"]["age_s"] == 40.0
    assert by_id["b-01"]["last_seen"] is None and by_id["b-01"]["state"] == "unknown"
    assert by_id["t-01"]["quality"]["accepted"] == 1
    await ws.close()


async def test_bad_messages_are_answered_with_errors_that_name_the_value(
        client: TestClient) -> None:
    ws = await client.ws_connect("/ws")
    await next_of(ws, "tree")
    await ws.send_json({"type": "subscribe", "paths": ["acme/west"]})
    assert "'acme/west'" in (await next_of(ws, "error"))["message"]
    await ws.send_json({"type": "subscribe", "paths": "acme"})
    assert "paths" in (await next_of(ws, "error"))["message"]
    await ws.send_json({"type": "site", "path": "acme/north"})
    assert "'acme/north' is not a site" in (await next_of(ws, "error"))["message"]
    await ws.send_json({"type": "dance"})
    assert "'dance'" in (await next_of(ws, "error"))["message"]
    await ws.send_str("{not json")
    assert "JSON" in (await next_of(ws, "error"))["message"]
    await ws.send_json({"type": "subscribe", "paths": [ALPHA]})    # still served afterwards
    assert (await next_of(ws, "rollup"))["rollup"]["path"] == ALPHA
    await ws.close()


async def test_the_fleet_clock_is_pushed_so_ages_move_on(client: TestClient, web_fleet: Fleet,
                                                         clock: VirtualClock) -> None:
    ws = await client.ws_connect("/ws")
    first = await next_of(ws, "clock")
    await in_pool(web_fleet.advance, 120)
    later = await next_of(ws, "clock", lambda m: m["now"] > first["now"])
    assert later["now"] == clock.now()
    await ws.close()


async def test_disconnecting_clients_leave_nothing_behind(client: TestClient) -> None:
    hub = client.app[STATE].hub
    for _ in range(3):
        ws = await client.ws_connect("/ws")
        await next_of(ws, "tree")
        await ws.send_json({"type": "subscribe", "paths": [ALPHA, BETA]})
        await next_of(ws, "rollup")
        await ws.close()
    async with asyncio.timeout(5):
        while hub.clients:
            await asyncio.sleep(0.01)
    assert hub.clients == set()
    assert hub._watchers == {}
