"""Coalescing and slow clients: at most a few updates per second per node, and a slow
client gets the latest state, never a growing queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from twin import Fleet, FleetModel, Sample, VirtualClock
from twin.testing import fleet_dict
from twin.web import Coalescer, LiveHub
from twin.web.live import LiveClient


async def test_a_burst_of_changes_to_one_node_is_sent_at_most_twice() -> None:
    sent: list[tuple[str, Any]] = []

    async def flush(batch: list[tuple[str, Any]]) -> None:
        sent.extend(batch)

    slots = Coalescer(flush, min_interval_s=0.2)
    runner = asyncio.create_task(slots.run())
    for n in range(1000):
        slots.put("rollup:a", n)
        if n % 100 == 0:
            await asyncio.sleep(0)          # let the flusher run now and then
    async with asyncio.timeout(2):
        while not sent or sent[-1][1] != 999:
            await asyncio.sleep(0.01)
    runner.cancel()
    assert len(sent) <= 2                   # the first change at once, then the latest
    assert sent[-1] == ("rollup:a", 999)
    assert slots.superseded >= 997


async def test_a_slow_client_holds_one_value_per_node_and_gets_the_latest() -> None:
    sent: list[Any] = []
    unblock = asyncio.Event()

    async def stuck_socket(batch: list[tuple[str, Any]]) -> None:
        await unblock.wait()                # the client's socket buffer is full
        sent.extend(value for _, value in batch)

    slots = Coalescer(stuck_socket, min_interval_s=0.0)
    runner = asyncio.create_task(slots.run())
    slots.put("rollup:a", -1)
    await asyncio.sleep(0)                  # the flusher is now stuck sending -1
    for n in range(10_000):
        slots.put("rollup:a", n)
        slots.put("rollup:b", n)
    assert slots.pending == 2               # two slots, not 20,000 queued messages
    unblock.set()
    async with asyncio.timeout(2):
        while slots.pending:
            await asyncio.sleep(0.01)
    runner.cancel()
    assert sent == [-1, 9999, 9999]


async def test_each_key_is_rate_limited_on_its_own() -> None:
    times: dict[str, list[float]] = {"a": [], "b": []}
    loop = asyncio.get_running_loop()

    async def flush(batch: list[tuple[str, Any]]) -> None:
        for key, _ in batch:
            times[key].append(loop.time())

    slots = Coalescer(flush, min_interval_s=0.1)
    runner = asyncio.create_task(slots.run())
    end = loop.time() + 0.35
    while loop.time() < end:
        slots.put("a", 1)
        slots.put("b", 1)
        await asyncio.sleep(0.005)
    runner.cancel()
    for key in "ab":
        gaps = [later - earlier for earlier, later in zip(times[key], times[key][1:],
                                                          strict=False)]
        assert 2 <= len(times[key]) <= 5, times[key]
        assert all(gap >= 0.095 for gap in gaps), gaps


@pytest.fixture
def big_fleet(clock: VirtualClock) -> Iterator[Fleet]:
    model = FleetModel.from_dict(fleet_dict(owners=2, regions=2, sites=5, assets=10))
    with Fleet(model, clock=clock) as fleet:
        yield fleet


async def test_a_fleet_changing_on_another_thread_reaches_only_the_subscribers(
        big_fleet: Fleet, clock: VirtualClock) -> None:
    from concurrent.futures import ThreadPoolExecutor

    executor = ThreadPoolExecutor(2)
    hub = LiveHub(big_fleet, executor, rate_hz=20.0, tick_s=3600)
    await hub.start()
    received: dict[str, list[dict[str, Any]]] = {"site": [], "owner": []}
    done = asyncio.Event()

    def client_sending_to(name: str) -> LiveClient:
        async def send_text(text: str) -> None:
            frame = json.loads(text)
            for message in frame["messages"] if frame["type"] == "batch" else [frame]:
                if message["type"] == "rollup":
                    received[name].append(message["rollup"])
                    if message["rollup"]["reporting"] == 100:
                        done.set()
        return hub.connect(send_text)

    site_client, owner_client = client_sending_to("site"), client_sending_to("owner")
    hub.handle(site_client, {"type": "subscribe", "paths": ["o0/r0/o0-r0-s0"]})
    hub.handle(owner_client, {"type": "subscribe", "paths": ["o0"]})
    runners = [asyncio.create_task(c.slots.run()) for c in (site_client, owner_client)]
    assets = sorted(a for a in big_fleet.model.assets if a.startswith("o0-"))

    def gateway() -> None:                   # 100 single-sample batches: 100 changes of o0
        for asset_id in assets:
            big_fleet.ingest([Sample(asset_id, clock.now(), {"power_kw": 1.0})])

    feeder = threading.Thread(target=gateway)
    feeder.start()
    await asyncio.get_running_loop().run_in_executor(None, feeder.join)
    async with asyncio.timeout(5):
        await done.wait()
    for runner in runners:
        runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*runners)
    await hub.stop()
    executor.shutdown()
    assert {r["path"] for r in received["site"]} == {"o0/r0/o0-r0-s0"}
    assert {r["path"] for r in received["owner"]} == {"o0"}
    assert len(received["owner"]) < 100           # coalesced, not one per change
    assert received["owner"][-1]["reporting"] == 100
    assert hub.updates_in >= 1
