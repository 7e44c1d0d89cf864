"""Asyncio applications use a fleet through twin.aio without blocking their loop."""

from __future__ import annotations

import asyncio
import contextlib

from twin import Fleet, Sample, VirtualClock
from twin.aio import AsyncFleet


def test_async_ingest_and_watch_see_the_latest_rollup(fleet: Fleet, clock: VirtualClock
                                                     ) -> None:
    async def scenario() -> list[tuple[int, float]]:
        seen: list[tuple[int, float]] = []
        async with AsyncFleet(fleet) as afleet:
            watch = afleet.watch("acme/north/alpha")
            first = await anext(watch)
            seen.append((first.reporting, first.power_kw))
            await afleet.ingest([Sample("t-01", clock.now(), {"power_kw": 7.0})])
            second = await anext(watch)
            seen.append((second.reporting, second.power_kw))
            await afleet.advance(31)
            third = await anext(watch)
            seen.append((third.reporting, third.power_kw))
            await watch.aclose()
        return seen

    assert asyncio.run(scenario()) == [(0, 0.0), (1, 7.0), (0, 0.0)]
    assert fleet.metrics()["subscriptions"] == 0


def test_a_slow_watcher_gets_the_latest_value_not_a_backlog(fleet: Fleet, clock: VirtualClock
                                                           ) -> None:
    async def scenario() -> tuple[float, bool]:
        async with AsyncFleet(fleet) as afleet:
            watch = afleet.watch("acme")
            await anext(watch)
            for kw in (1.0, 2.0, 3.0, 4.0):
                clock.advance(1)
                await afleet.ingest([Sample("t-01", clock.now(), {"power_kw": kw})])
            latest = await anext(watch)
            # nothing else is waiting: the three stale values were dropped
            pending = asyncio.ensure_future(anext(watch))
            await asyncio.sleep(0)
            waiting = not pending.done()
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
            await watch.aclose()
            return latest.power_kw, waiting

    assert asyncio.run(scenario()) == (4.0, True)


def test_async_ingest_takes_wire_bytes_as_they_are(fleet: Fleet, clock: VirtualClock) -> None:
    from twin.wire import pack_batch

    payload = pack_batch([Sample("t-01", clock.now(), {"power_kw": 7.0}),
                          Sample("t-02", clock.now(), {"power_kw": 1.0})], "gateway")

    async def scenario() -> int:
        async with AsyncFleet(fleet) as afleet:
            return (await afleet.ingest(payload)).accepted

    assert asyncio.run(scenario()) == 2


def test_closed_says_whether_the_fleet_was_closed(fleet: Fleet) -> None:
    assert not fleet.closed
    fleet.close()
    assert fleet.closed


def test_async_ingest_refuses_what_fleet_ingest_refuses_as_a_whole(fleet: Fleet) -> None:
    from twin import IngestError

    async def scenario() -> list[str]:
        refused = []
        async with AsyncFleet(fleet) as afleet:
            # a str or a mapping is not read as a list of characters or keys; a nested body
            # is an IngestError, not a RecursionError
            for batch in ("[1, '', null, []]", {"samples": []}, b"\x91" * 1000 + b"\xc0"):
                try:
                    await afleet.ingest(batch)  # type: ignore[arg-type]
                except IngestError as error:
                    refused.append(str(error)[:20])
        return refused

    assert len(asyncio.run(scenario())) == 3
    assert fleet.metrics()["batches"] == 0
