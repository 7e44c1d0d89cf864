"""The live view's aiohttp application: page, websocket, REST, metrics, probes (the control
endpoints are in :mod:`twin.web.control`).

``create_app(fleet)`` builds the application (tests drive it with aiohttp's test client);
:class:`LiveServer` runs it on a thread of its own, with its own event loop, beside a running
fleet (``twin serve``, ``twin sim --serve``, the browser test).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import TracebackType

import structlog
from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry, generate_latest

from twin.core.errors import FleetClosed, IngestError, UnknownAsset, UnknownPath
from twin.core.samples import brief
from twin.fleet.facade import Fleet
from twin.store.store import StoreBusy, StoreUnavailable
from twin.web.auth import (
    WS_PROTOCOL,
    FailureLimiter,
    bearer_from,
    check_token,
    token_matches,
)
from twin.web.control import ControlApi
from twin.web.history import History
from twin.web.live import LiveHub
from twin.web.messages import jsonable, report_body
from twin.web.metrics import WebCollector
from twin.wire import MAX_BATCH_BYTES

log = structlog.get_logger("twin.web")

STATIC_DIR = Path(str(resources.files("twin.web") / "static"))
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/favicon.ico"})
INGEST_TYPES = frozenset({"application/msgpack", "application/x-msgpack", "application/vnd.msgpack",
                          "application/octet-stream"})
WS_MAX_MESSAGE_BYTES = 64 * 1024


@dataclass
class WebState:
    """What the handlers of one application share."""

    fleet: Fleet
    hub: LiveHub
    token: str | None
    limiter: FailureLimiter
    executor: ThreadPoolExecutor
    sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)
    counters: dict[str, int] = field(default_factory=lambda: {
        "auth_failures": 0, "auth_rate_limited": 0, "ws_connections": 0,
        "ws_updates_sent": 0, "ws_updates_superseded": 0, "ws_bytes_sent": 0})


STATE = web.AppKey("twin_web_state", WebState)


def create_app(fleet: Fleet, *, token: str | None = None, host: str = "127.0.0.1",
               rate_hz: float = 4.0, history: History | None = None,
               limiter: FailureLimiter | None = None, tick_s: float = 1.0) -> web.Application:
    """The live view for ``fleet``. ``host`` is where it will be bound: anything but
    loopback requires ``token`` (see :mod:`twin.web.auth`)."""
    token = check_token(token, host)
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="twin-web")
    hub = LiveHub(fleet, executor, history=history, rate_hz=rate_hz, tick_s=tick_s)
    state = WebState(fleet, hub, token, limiter if limiter is not None else FailureLimiter(),
                     executor)
    app = web.Application(middlewares=[_auth_middleware], client_max_size=MAX_BATCH_BYTES)
    app[STATE] = state
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/api/rollups", _rollups)
    app.router.add_get("/api/rollups/{path:.+}", _rollup)
    app.router.add_get("/api/assets/{asset_id}", _asset)
    app.router.add_post("/api/ingest", _ingest)
    ControlApi(fleet, hub.call).add_routes(app.router)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.on_startup.append(_start_hub)
    app.on_shutdown.append(_close_sockets)
    app.on_cleanup.append(_stop_hub)
    return app


# -- lifecycle ----------------------------------------------------------------------------

async def _start_hub(app: web.Application) -> None:
    await app[STATE].hub.start()


async def _close_sockets(app: web.Application) -> None:
    for ws in list(app[STATE].sockets):
        await ws.close(code=1001, message=b"server shutting down")


async def _stop_hub(app: web.Application) -> None:
    state = app[STATE]
    await state.hub.stop()
    state.executor.shutdown(wait=False, cancel_futures=True)


# -- auth ---------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    if (state.token is None or request.path in PUBLIC_PATHS
            or request.path.startswith("/static/")):
        return await handler(request)
    address = request.remote or "unknown"
    wait = state.limiter.retry_after(address)
    if wait:
        state.counters["auth_rate_limited"] += 1
        return _error(429, f"too many failed authentication attempts from {address}; "
                           f"retry in {wait} s", headers={"Retry-After": str(wait)})
    presented = bearer_from(request.headers.get("Authorization"),
                            request.headers.get("Sec-WebSocket-Protocol"))
    if presented is None or not token_matches(presented, state.token):
        state.limiter.failed(address)
        state.counters["auth_failures"] += 1
        reason = ("missing bearer token: send the header 'Authorization: Bearer <token>' "
                  "(websockets: the subprotocol 'twin.bearer.<token>')" if presented is None
                  else "invalid bearer token")
        return _error(401, reason, headers={"WWW-Authenticate": 'Bearer realm="twin"'})
    return await handler(request)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


# -- page and probes ----------------------------------------------------------------------

async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html",
                            headers={"Cache-Control": "no-cache"})


async def _healthz(request: web.Request) -> web.Response:
    """Alive: this handler ran on the server's loop. Nothing else is checked."""
    return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
    """Ready: the hub is started, the last fleet probe found it open, and we are not
    shutting down. Answered from memory: a slow store can never make it fail."""
    hub = request.app[STATE].hub
    if hub.ready:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready", "reason": hub.not_ready_reason},
                             status=503)


# -- REST ---------------------------------------------------------------------------------

async def _rollups(request: web.Request) -> web.Response:
    state = request.app[STATE]
    level = request.query.get("level")
    if level not in (None, "owner", "region", "site", "group"):
        return _error(400, f"level: unknown level {level!r} (valid: owner, region, site, group)")
    try:
        rollups = await state.hub.call(state.fleet.rollups, level)
    except FleetClosed as error:
        return _error(503, str(error))
    return web.json_response({path: r.to_dict(with_missing=False)
                              for path, r in rollups.items()})


async def _rollup(request: web.Request) -> web.Response:
    state = request.app[STATE]
    path = request.match_info["path"]
    try:
        rollup = await state.hub.call(state.fleet.rollup, path)
    except UnknownPath as error:
        return _error(404, str(error))
    except FleetClosed as error:
        return _error(503, str(error))
    out = rollup.to_dict()
    out["history"] = [list(p) for p in state.hub.history.series(path, state.fleet.clock.now())]
    return web.json_response(out)


async def _asset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        view = await state.hub.call(state.fleet.asset, request.match_info["asset_id"])
    except UnknownAsset as error:
        return _error(404, str(error))
    except FleetClosed as error:
        return _error(503, str(error))
    return web.json_response(jsonable(view.to_dict()))


async def _ingest(request: web.Request) -> web.Response:
    """A msgpack batch in the wire format; the ingest report as JSON.

    Once the fleet has applied a batch the answer is its 200 report, whatever the batch held
    (:func:`report_body` cannot fail): a client that retries on 5xx never sends an applied
    batch twice. A refused batch gets one log line and an answer naming the problem."""
    state = request.app[STATE]
    if request.content_type not in INGEST_TYPES:
        return _refused(request, 415, f"Content-Type: {brief(request.content_type)} is not a "
                        "msgpack batch (send application/msgpack, the wire format of "
                        "docs/wire-format.md)")
    body = await request.read()
    try:
        report = await state.hub.call(state.fleet.ingest, body)
    except IngestError as error:
        return _refused(request, 400, str(error))
    except StoreBusy as error:
        return _refused(request, 503, f"not accepted, retry: {error}", retry_after=1)
    except (StoreUnavailable, FleetClosed) as error:
        return _refused(request, 503, f"not accepted: {error}", retry_after=5)
    except Exception as error:   # a fault of ours: answered and logged once, like the rest
        return _refused(request, 500, f"not accepted: internal error ({type(error).__name__})",
                        detail=brief(error, 200))
    return web.Response(body=report_body(report), content_type="application/json")


def _refused(request: web.Request, status: int, message: str, *, retry_after: int = 0,
             detail: str = "") -> web.Response:
    """The answer to a refused batch, and its one log line (never a traceback: a stream of
    bad requests must not become a stream of multi-kilobyte log entries)."""
    level = log.error if status >= 500 else log.warning
    level("ingest_refused", status=status, reason=message[:300], remote=request.remote,
          size=request.content_length, **({"detail": detail} if detail else {}))
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return _error(status, message, headers=headers)


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        fleet_text = await state.hub.call(state.fleet.metrics_text)
    except FleetClosed as error:
        return _error(503, str(error))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WebCollector(state))
    return web.Response(body=fleet_text + generate_latest(registry),
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


# -- websocket ----------------------------------------------------------------------------

async def _websocket(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    ws = web.WebSocketResponse(protocols=(WS_PROTOCOL,), heartbeat=30.0,
                               max_msg_size=WS_MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    state.sockets.add(ws)
    state.counters["ws_connections"] += 1
    client = state.hub.connect(ws.send_str)
    flusher = asyncio.create_task(client.slots.run(), name="twin-web-client")
    flusher.add_done_callback(lambda _: asyncio.ensure_future(ws.close()) if not ws.closed
                              else None)
    try:
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(message.data)
            except ValueError:
                client.slots.put("error", f"a message is JSON text, got {message.data[:80]!r}")
                continue
            state.hub.handle(client, data)
    finally:
        state.hub.disconnect(client)
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        state.counters["ws_updates_sent"] += client.slots.flushed
        state.counters["ws_updates_superseded"] += client.slots.superseded
        state.counters["ws_bytes_sent"] += client.bytes_sent
    return ws


# -- embedding ----------------------------------------------------------------------------

class LiveServer:
    """The live view on a background thread with its own event loop.

    ``LiveServer(fleet, port=0).start()`` returns once the socket is bound (``port`` then
    holds the real port, ``url`` the address); ``stop()`` closes websockets and the hub and
    joins the thread. The fleet is not closed: it belongs to the caller.
    """

    def __init__(self, fleet: Fleet, *, host: str = "127.0.0.1", port: int = 8080,
                 token: str | None = None, rate_hz: float = 4.0,
                 history: History | None = None) -> None:
        self._token = check_token(token, host)     # refuse unsafe settings before starting
        if not (isinstance(port, int) and 0 <= port <= 65535):
            raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
        self.fleet = fleet
        self.host = host
        self.port = port
        self.rate_hz = rate_hz
        self.history = history if history is not None else History()
        self.app: web.Application | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout: float = 15.0) -> LiveServer:
        if self._thread is not None:
            raise RuntimeError("this LiveServer was already started")
        self._thread = threading.Thread(target=self._run, name="twin-web-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"the live view did not start within {timeout:g} s")
        if self._failure is not None:
            self._thread.join()
            raise self._failure
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:       # reported to start(); never silently lost
            self._failure = error
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self.app = create_app(self.fleet, token=self._token, host=self.host,
                              rate_hz=self.rate_hz, history=self.history)
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            self.port = int(runner.addresses[0][1])
            self._started.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    def stop(self, timeout: float = 15.0) -> None:
        """Close the server and join its thread; safe to call twice."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or not thread.is_alive():
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):    # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the live view did not stop within {timeout:g} s")

    def __enter__(self) -> LiveServer:
        return self.start() if self._thread is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:                 # never shows the token
        auth = "token required" if self._token else "no token"
        return f"<LiveServer {self.url} ({auth})>"
