"""Live roll-ups for websocket clients: subscriptions, coalescing, bounded memory.

The data path, and why each hop is bounded:

1. The fleet calls :meth:`LiveHub._on_change` on whichever thread changed it, under its
   lock. It records the sparkline point and puts the roll-up in a latest-value slot per path
   (``_incoming``); only the first change since the last drain schedules a drain on the
   server's loop (``call_soon_threadsafe``), so a busy fleet cannot flood the loop.
2. On the loop, :meth:`LiveHub._drain` hands each changed roll-up to the clients watching
   its path, and to nobody else. Dispatch reports travel the same way (``_on_report``, a
   slot per dispatch) into a :class:`~twin.web.dispatches.DispatchBook`, whose one message
   every client gets.
3. Each client has a :class:`Coalescer`: latest-value slots flushed by the client's own task,
   at most ``rate_hz`` times per second per slot. A slow client (its socket's buffer full)
   holds up only its own task; meanwhile newer values replace older ones in its slots, so it
   gets the latest state when it catches up, never a queue.

Blocking fleet calls (asset views, transitions, the probe behind ``/readyz``) run on a
thread pool, never on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import structlog

from twin.control.dispatch import DispatchReport
from twin.core.errors import FleetClosed, TwinError
from twin.core.rollup import Rollup
from twin.core.states import Transition
from twin.fleet.facade import Fleet
from twin.fleet.subscriptions import StreamSubscription, Subscription
from twin.web.coalesce import Coalescer
from twin.web.dispatches import DispatchBook
from twin.web.history import History
from twin.web.messages import asset_views, encode, rollup_dict, tree_nodes

log = structlog.get_logger("twin.web")

T = TypeVar("T")

MAX_PATHS_PER_CLIENT = 5000


class LiveClient:
    """One websocket client: the paths it shows, the site it drilled into, its slots."""

    def __init__(self, hub: LiveHub, send_text: Callable[[str], Awaitable[None]]) -> None:
        self.hub = hub
        self._send_text = send_text
        self.paths: set[str] = set()
        self.site: str | None = None
        self.slots = Coalescer(self._flush, hub.min_interval_s)
        self.bytes_sent = 0

    async def _flush(self, batch: list[tuple[str, Any]]) -> None:
        texts: list[str] = []
        for key, value in batch:
            if key.startswith("rollup:"):
                texts.append(self.hub.rollup_text(value))
            elif key == "dispatches":
                texts.append(self.hub.dispatches.text())
            else:
                message = await self.hub.render(self, key, value)
                if message is not None:
                    texts.append(encode(message))
        if not texts:
            return
        # several messages travel as one frame: {"type": "batch", "messages": [...]}
        text = texts[0] if len(texts) == 1 else (
            '{"type":"batch","messages":[' + ",".join(texts) + "]}")
        self.bytes_sent += len(text)
        await self._send_text(text)


class LiveHub:
    """Everything the websocket clients of one fleet share: its subscriptions, the latest
    roll-up of every node, the sparkline history, recent transitions, the active
    dispatches, readiness."""

    def __init__(self, fleet: Fleet, executor: Executor, *, history: History | None = None,
                 rate_hz: float = 4.0, tick_s: float = 1.0, missing_shown: int = 50,
                 transitions_shown: int = 50) -> None:
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz!r}")
        self.fleet = fleet
        self.executor = executor
        self.history = history if history is not None else History()
        self.min_interval_s = 1.0 / rate_hz
        self.tick_s = tick_s
        self.missing_shown = missing_shown
        self.transitions_shown = transitions_shown
        self.latest: dict[str, Rollup] = {}
        self.tree: list[dict[str, Any]] = []
        self.clients: set[LiveClient] = set()
        self.ready = False
        self.not_ready_reason = "starting"
        self._watchers: dict[str, set[LiveClient]] = {}
        self._subs: dict[str, Subscription] = {}
        self._model_version = -1
        self._transitions: list[Transition] = []
        self._incoming: dict[str, Rollup] = {}
        self._incoming_reports: dict[str, DispatchReport] = {}
        self.dispatches = DispatchBook()
        self._dispatch_sub: StreamSubscription | None = None
        self._incoming_lock = threading.Lock()
        self._drain_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._transitions_due = asyncio.Event()
        self._probe: asyncio.Task[None] | None = None
        self._encoded: dict[str, tuple[Rollup, float, str]] = {}
        self.updates_in = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._attach()
        await self._watch_dispatches()
        self._transitions_due.set()
        self._tasks = [asyncio.create_task(self._transitions_loop(), name="twin-web-transitions"),
                       asyncio.create_task(self._tick_loop(), name="twin-web-tick")]
        self.ready, self.not_ready_reason = True, ""

    async def stop(self) -> None:
        self.ready, self.not_ready_reason = False, "stopping"
        for task in [*self._tasks, *([self._probe] if self._probe else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        subs: list[Subscription | StreamSubscription] = list(self._subs.values())
        if self._dispatch_sub is not None:
            subs.append(self._dispatch_sub)
        self._subs, self._dispatch_sub = {}, None
        # cancelling takes the fleet's lock: off the loop (safe after the fleet closed too)
        await self.call(_cancel_all, subs)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking fleet call on the pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _attach(self) -> None:
        """Subscribe to every node of the current model (again after a model change)."""
        version, tree, rollups = await self.call(self._subscribe_all)
        self._model_version = version
        self.tree = tree
        for path in set(self.latest) - set(rollups):
            self.latest.pop(path, None)
            self._encoded.pop(path, None)
            self.history.forget(path)
            for client in self._watchers.pop(path, set()):
                client.paths.discard(path)
                client.slots.discard(f"rollup:{path}")
        self.latest.update(rollups)

    async def _watch_dispatches(self) -> None:
        """Stream dispatch reports, then look at the dispatches already running (the book
        keeps the newer of the two when they cross)."""
        self._dispatch_sub = await self.call(self.fleet.subscribe_dispatches, self._on_report)
        for report in await self.call(_active_reports, self.fleet):
            self.dispatches.apply(report)

    def _subscribe_all(self) -> tuple[int, list[dict[str, Any]], dict[str, Rollup]]:
        fleet = self.fleet
        version = fleet.model.version
        rollups = fleet.rollups()
        now = fleet.clock.now()
        for path in set(self._subs) - set(rollups):
            self._subs.pop(path).cancel()
        for path, rollup in rollups.items():
            if path not in self._subs:
                self._subs[path] = fleet.subscribe(path, self._on_change)
                self.history.record(rollup, at=now)
        return version, tree_nodes(fleet.model, rollups), rollups

    # -- from the fleet's thread ------------------------------------------------------------

    def _on_change(self, rollup: Rollup) -> None:
        self.history.record(rollup)
        with self._incoming_lock:
            self._incoming[rollup.path] = rollup
            schedule = not self._drain_scheduled
            self._drain_scheduled = True
        if schedule:
            self._schedule_drain()

    def _on_report(self, report: DispatchReport) -> None:
        with self._incoming_lock:
            self._incoming_reports[report.dispatch_id] = report   # the stream is in order
            schedule = not self._drain_scheduled
            self._drain_scheduled = True
        if schedule:
            self._schedule_drain()

    def _schedule_drain(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):   # the loop is gone: nobody to tell
                self._loop.call_soon_threadsafe(self._drain)

    # -- on the loop ------------------------------------------------------------------------

    def _drain(self) -> None:
        with self._incoming_lock:
            incoming, self._incoming = self._incoming, {}
            reports, self._incoming_reports = self._incoming_reports, {}
            self._drain_scheduled = False
        changed = [self.dispatches.apply(report) for report in reports.values()]
        if any(changed):
            for client in self.clients:
                client.slots.put("dispatches", None)     # the book holds the message
        self.updates_in += len(incoming)
        for path, rollup in incoming.items():
            self.latest[path] = rollup
            for client in self._watchers.get(path, ()):
                client.slots.put(f"rollup:{path}", rollup)
                if client.site == path:
                    client.slots.put("assets", path)
        if incoming:
            self._transitions_due.set()

    def connect(self, send_text: Callable[[str], Awaitable[None]]) -> LiveClient:
        client = LiveClient(self, send_text)
        self.clients.add(client)
        client.slots.put("clock", self.fleet.clock.now())
        client.slots.put("tree", self.tree)
        client.slots.put("transitions", self._transitions)
        client.slots.put("dispatches", None)
        return client

    def disconnect(self, client: LiveClient) -> None:
        self.clients.discard(client)
        for path in client.paths:
            watchers = self._watchers.get(path)
            if watchers is not None:
                watchers.discard(client)
                if not watchers:
                    del self._watchers[path]
        client.paths.clear()

    def handle(self, client: LiveClient, message: Any) -> None:
        """Apply one message from a client; a bad one is answered with an ``error`` message
        that names the field and the value."""
        try:
            self._handle(client, message)
        except ValueError as error:
            client.slots.put("error", str(error))

    def _handle(self, client: LiveClient, message: Any) -> None:
        if not isinstance(message, dict):
            raise ValueError(f"a message is a JSON object, got {_short(message)}")
        kind = message.get("type")
        if kind == "subscribe":
            paths = _paths(message)
            unknown = [p for p in paths if p not in self.latest]
            if unknown:
                raise ValueError(f"subscribe: paths: unknown path {unknown[0]!r}")
            if len(client.paths | set(paths)) > MAX_PATHS_PER_CLIENT:
                raise ValueError(f"subscribe: paths: more than {MAX_PATHS_PER_CLIENT} paths "
                                 "for one client")
            for path in paths:
                client.paths.add(path)
                self._watchers.setdefault(path, set()).add(client)
                client.slots.put(f"rollup:{path}", self.latest[path])
        elif kind == "unsubscribe":
            for path in _paths(message):
                client.paths.discard(path)
                client.slots.discard(f"rollup:{path}")
                watchers = self._watchers.get(path)
                if watchers is not None:
                    watchers.discard(client)
                    if not watchers:
                        del self._watchers[path]
        elif kind == "site":
            site = message.get("path")
            if site is None:
                client.site = None
                client.slots.discard("assets")
                return
            rollup = self.latest.get(site) if isinstance(site, str) else None
            if rollup is None or rollup.level != "site":
                raise ValueError(f"site: path: {_short(site)} is not a site's path "
                                 "(owner/region/site)")
            client.site = rollup.path
            client.slots.put("assets", rollup.path)
        else:
            raise ValueError(f"type: unknown message type {_short(kind)} "
                             "(valid: subscribe, unsubscribe, site)")

    def rollup_text(self, rollup: Rollup) -> str:
        """A roll-up's message, encoded once for all the clients that get it within one
        history bucket (its sparkline cannot differ within a bucket)."""
        now = self.fleet.clock.now()
        bucket = self.history.bucket(now)
        cached = self._encoded.get(rollup.path)
        if cached is not None and cached[0] is rollup and cached[1] == bucket:
            return cached[2]
        text = encode({"type": "rollup", "now": now,
                       "rollup": rollup_dict(rollup, self.missing_shown),
                       "history": [list(p) for p in self.history.series(rollup.path, now)]})
        self._encoded[rollup.path] = (rollup, bucket, text)
        return text

    async def render(self, client: LiveClient, key: str, value: Any) -> dict[str, Any] | None:
        """The message for one flushed slot other than a roll-up (``None``: nothing to send
        any more)."""
        now = self.fleet.clock.now()
        if key == "assets":
            if client.site != value:
                return None
            try:
                views = await self.call(asset_views, self.fleet, value)
            except (TwinError, ValueError) as error:     # the site moved or the fleet closed
                return {"type": "error", "message": f"site {value!r}: {error}"}
            return {"type": "assets", "site": value, "now": now, "assets": views}
        if key == "transitions":
            return {"type": "transitions", "now": now,
                    "items": [t._asdict() for t in reversed(value)]}
        if key == "clock":
            return {"type": "clock", "now": value}
        if key == "tree":
            return {"type": "tree", "now": now, "nodes": value,
                    "rate_hz": round(1.0 / self.min_interval_s, 3)}
        return {"type": "error", "message": str(value)}

    async def _transitions_loop(self) -> None:
        while True:
            await self._transitions_due.wait()
            self._transitions_due.clear()
            try:
                items = await self.call(self.fleet.transitions, self.transitions_shown)
            except FleetClosed:
                return
            if items != self._transitions:
                self._transitions = items
                for client in self.clients:
                    client.slots.put("transitions", items)
            await asyncio.sleep(self.min_interval_s)        # coalesce bursts of changes

    async def _tick_loop(self) -> None:
        """Once a ``tick_s``: the fleet's time to every client (ages move on), fresh asset
        views for drilled-down sites, the model's version, and the readiness probe."""
        while True:
            await asyncio.sleep(self.tick_s)
            now = self.fleet.clock.now()
            for client in self.clients:
                client.slots.put("clock", now)
                if client.site is not None:
                    client.slots.put("assets", client.site)
            if self._probe is None or self._probe.done():
                self._probe = asyncio.create_task(self.probe())
            if self.fleet.model.version != self._model_version:
                try:
                    await self._attach()
                except FleetClosed:
                    continue
                except Exception:           # e.g. the model changed again meanwhile: retry
                    log.exception("live_view_reattach_failed")
                    continue
                for client in self.clients:
                    client.slots.put("tree", self.tree)

    async def probe(self) -> None:
        """Readiness from in-process state: the fleet answers and is open. A slow answer
        (the fleet busy on a slow store) leaves the last verdict standing."""
        try:
            await self.call(self.fleet.rollups, "owner")
        except FleetClosed:
            self.ready, self.not_ready_reason = False, "the fleet is closed"
        except Exception as error:        # a bug: report it on /readyz, keep serving
            self.ready, self.not_ready_reason = False, f"fleet probe failed: {error!r}"
        else:
            self.ready, self.not_ready_reason = True, ""


def _cancel_all(subs: list[Subscription | StreamSubscription]) -> None:
    for sub in subs:
        sub.cancel()


def _active_reports(fleet: Fleet) -> list[DispatchReport]:
    return [report for d in fleet.dispatches(active_only=True)
            if (report := d.report()) is not None]


def _paths(message: dict[str, Any]) -> list[str]:
    paths = message.get("paths")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ValueError(f"{message.get('type')}: paths: expected a list of path strings, "
                         f"got {_short(paths)}")
    return paths


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
