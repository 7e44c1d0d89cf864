"""Using a fleet from asyncio without blocking the event loop.

Fleet methods take the fleet's lock and can run for milliseconds (a batch of samples), so an
asyncio application calls them through :class:`AsyncFleet`, which runs them on one worker
thread (so they keep their order) and awaits the result. Live roll-ups arrive through
:meth:`AsyncFleet.watch`: an async iterator that always yields the *latest* roll-up; a slow
consumer skips stale intermediate values instead of queueing them without bound.

    async with AsyncFleet(fleet) as afleet:
        report = await afleet.ingest(samples)
        async for rollup in afleet.watch("acme/north"):
            print(rollup)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

from twin.core.rollup import Rollup
from twin.core.samples import IngestReport, Sample
from twin.core.views import AssetView, CommandReceipt
from twin.fleet.facade import Fleet

T = TypeVar("T")


class AsyncFleet:
    """An asyncio face for a :class:`Fleet` (which it does not own or close)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twin-aio")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def ingest(self, samples: Iterable[Sample] | bytes) -> IngestReport:
        """A batch: Sample objects, or msgpack bytes in the wire format (kept as they are).
        Raises what :meth:`Fleet.ingest` raises (:class:`twin.IngestError` for a batch that
        cannot be read as a whole: nothing of it applied)."""
        # an iterable is read here, on the caller's side; bytes, and a str or a mapping (which
        # Fleet.ingest refuses whole rather than as a list of characters or keys), go as is
        batch = (samples if isinstance(samples, bytes | bytearray | memoryview | str | Mapping)
                 else list(samples))
        return await self._run(self.fleet.ingest, batch)

    async def rollup(self, path: str) -> Rollup:
        return await self._run(self.fleet.rollup, path)

    async def asset(self, asset_id: str) -> AssetView:
        return await self._run(self.fleet.asset, asset_id)

    async def command(self, asset_id: str, payload: Mapping[str, Any]) -> CommandReceipt:
        return await self._run(self.fleet.command, asset_id, payload)

    async def advance(self, seconds: float) -> float:
        return await self._run(self.fleet.advance, seconds)

    async def watch(self, path: str) -> AsyncIterator[Rollup]:
        """Yield the roll-up at ``path`` now, then after each change (latest value wins)."""
        loop = asyncio.get_running_loop()
        latest: list[Rollup] = []
        wake = asyncio.Event()

        def deliver(rollup: Rollup) -> None:       # on the fleet's thread
            loop.call_soon_threadsafe(_keep_latest, latest, wake, rollup)

        subscription = await self._run(self.fleet.subscribe, path, deliver)
        try:
            yield await self.rollup(path)
            while True:
                await wake.wait()
                wake.clear()
                rollup = latest.pop()
                yield rollup
        finally:
            subscription.cancel()

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def __aenter__(self) -> AsyncFleet:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()


def _keep_latest(latest: list[Rollup], wake: asyncio.Event, rollup: Rollup) -> None:
    latest[:] = [rollup]
    wake.set()
