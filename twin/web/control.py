"""The control API over HTTP: commands to one asset, the command book, fleet dispatches.

=========  ==============================  ===================================================
POST       ``/api/assets/{id}/command``    ``{"desired": {...}, "ttl_s"?, "if_version"?}``
GET        ``/api/commands``               ``?asset=&state=&limit=``
POST       ``/api/dispatch``               ``{"path", "target_kw", "duration_s", ...}`` → 201
GET        ``/api/dispatch``               ``?active=true``: the dispatches of this run
GET        ``/api/dispatch/{id}``          its spec, status and latest report
PATCH      ``/api/dispatch/{id}``          ``{"target_kw"}``: a new target
DELETE     ``/api/dispatch/{id}``          cancel it; the final report
=========  ==============================  ===================================================

docs/live-view.md gives the answers. Refusals are JSON ``{"error": ..., "field"?, "value"?}``:
404 for an unknown asset, path or dispatch; 409 when the fleet's state says no (the asset is
not online, ``if_version`` is stale, the dispatch has ended or its assets are in another one);
400 for a bad request (the message names the field and the value); 503 when the store or a
shard cannot take it now (nothing was sent: try again).

Writes take only ``Content-Type: application/json``. A browser sends another site's
cross-origin request with that type only after a CORS preflight, which this server never
grants, so a page elsewhere cannot steer a fleet served on loopback without a token (the
auth middleware of :mod:`twin.web.server` guards everything under ``/api/`` as for the other
endpoints). Every fleet call runs on the server's pool, never on its event loop.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import structlog
from aiohttp import web

from twin.control.dispatch import STRATEGIES
from twin.core.errors import (
    AssetUnavailable,
    DispatchConflict,
    FleetClosed,
    ShardDown,
    UnknownAsset,
    UnknownCommand,
    UnknownPath,
    VersionConflict,
)
from twin.core.samples import brief, plain
from twin.fleet.dispatching import Dispatch
from twin.fleet.facade import Fleet
from twin.store.store import StoreBusy, StoreUnavailable
from twin.web.messages import jsonable

log = structlog.get_logger("twin.web")

Call = Callable[..., Awaitable[Any]]
Handler = Callable[[web.Request], Awaitable[web.Response]]

COMMANDS_LIMIT: Final = 1000          # commands listed unless ?limit= says otherwise
COMMANDS_LIMIT_MAX: Final = 100_000
DISPATCH_FIELDS: Final = {"path": True, "target_kw": True, "duration_s": True, "kinds": False,
                          "ramp_kw_per_s": False, "strategy": False, "lease_s": False,
                          "flip_threshold_kw": False}


class Refused(Exception):
    """A request answered with an error: its status, message and the fields that name the
    problem (``field``, ``value``, ``state``, ...)."""

    def __init__(self, http_status: int, message: str, *, retry_after: int = 0,
                 **fields: Any) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message
        self.retry_after = retry_after
        self.fields = fields

    def response(self) -> web.Response:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        return web.json_response({"error": self.message, **jsonable(self.fields)},
                                 status=self.http_status, headers=headers)


def refusal(error: Exception) -> Refused | None:
    """The answer to an error the fleet raised on purpose (``None``: a fault of ours)."""
    if isinstance(error, Refused):
        return error
    if isinstance(error, UnknownAsset):
        return Refused(404, str(error), asset_id=error.asset_id)
    if isinstance(error, UnknownPath):
        return Refused(404, str(error), field="path", value=error.path)
    if isinstance(error, UnknownCommand):
        return Refused(404, str(error), id=error.ident)
    if isinstance(error, AssetUnavailable):
        return Refused(409, str(error), asset_id=error.asset_id, state=error.state,
                       last_seen=error.last_seen)
    if isinstance(error, VersionConflict):
        return Refused(409, str(error), asset_id=error.asset_id, field="if_version",
                       value=error.expected, desired_version=error.actual)
    if isinstance(error, StoreBusy):
        return Refused(503, f"not accepted, retry: {error}", retry_after=1)
    if isinstance(error, StoreUnavailable | ShardDown):
        return Refused(503, f"not accepted: {error}", retry_after=5)
    if isinstance(error, FleetClosed):
        return Refused(503, str(error))
    if isinstance(error, DispatchConflict):   # overlapping, or already ended
        return Refused(409, str(error))
    if isinstance(error, ValueError):      # InvalidCommand, ModelError, a bad number
        return Refused(400, str(error))
    return None


def guarded(handler: Handler) -> Handler:
    """``handler`` with the fleet's refusals answered as :func:`refusal` says."""
    async def answer(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except Exception as error:
            refused = refusal(error)
            if refused is None:
                raise                      # aiohttp answers 500 and logs it
            return refused.response()
    return answer


class ControlApi:
    """The handlers of the control endpoints for one fleet; ``call`` runs a blocking fleet
    call on the server's pool."""

    def __init__(self, fleet: Fleet, call: Call) -> None:
        self.fleet = fleet
        self.call = call

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/api/assets/{asset_id}/command", guarded(self.command))
        router.add_get("/api/commands", guarded(self.commands))
        router.add_post("/api/dispatch", guarded(self.start_dispatch))
        router.add_get("/api/dispatch", guarded(self.list_dispatches))
        router.add_get("/api/dispatch/{dispatch_id}", guarded(self.get_dispatch))
        router.add_patch("/api/dispatch/{dispatch_id}", guarded(self.update_dispatch))
        router.add_delete("/api/dispatch/{dispatch_id}", guarded(self.cancel_dispatch))

    # -- commands -------------------------------------------------------------------------

    async def command(self, request: web.Request) -> web.Response:
        asset_id = request.match_info["asset_id"]
        body = await json_body(request, {"desired": True, "ttl_s": False, "if_version": False})
        desired = body["desired"]
        if not isinstance(desired, dict):
            raise Refused(400, f"desired: expected a JSON object of command fields "
                          f"(e.g. {{\"setpoint_kw\": 50}}), got {brief(desired)}",
                          field="desired", value=plain(desired))
        ttl_s = number(body, "ttl_s", positive=True)
        if_version = body.get("if_version")
        if if_version is not None and (type(if_version) is not int or if_version < 0):
            raise Refused(400, f"if_version: expected the asset's desired version (an integer "
                          f">= 0), got {brief(if_version)}", field="if_version",
                          value=plain(if_version))

        def issue() -> dict[str, Any]:
            receipt = self.fleet.command(asset_id, desired, ttl_s=ttl_s, if_version=if_version)
            return dict(jsonable(receipt.to_dict()))

        answer = await self.call(issue)
        log.info("command_issued", asset_id=asset_id, command_id=answer["command_id"],
                 desired=brief(answer["desired"], 200), ttl_s=ttl_s, remote=request.remote)
        return web.json_response(answer)

    async def commands(self, request: web.Request) -> web.Response:
        query = request.query
        asset = query.get("asset") or None
        state = query.get("state") or None
        limit = _int_query(query, "limit", COMMANDS_LIMIT, 1, COMMANDS_LIMIT_MAX)

        def listed() -> tuple[int, str]:
            records = self.fleet.commands(asset, state)
            shown = records[-limit:]          # the newest (the list is oldest first)
            return len(records), json.dumps([jsonable(r.to_dict()) for r in shown])

        total, text = await self.call(listed)
        return web.Response(text=text, content_type="application/json",
                            headers={"X-Total-Count": str(total)})

    # -- dispatches -----------------------------------------------------------------------

    async def start_dispatch(self, request: web.Request) -> web.Response:
        body = await json_body(request, DISPATCH_FIELDS)
        path = body["path"]
        if not isinstance(path, str) or not path:
            raise Refused(400, f"path: expected a node's path (owner/region/site or a group), "
                          f"got {brief(path)}", field="path", value=plain(path))
        kinds = body.get("kinds", ["battery"])
        if (not isinstance(kinds, list) or not kinds
                or not all(isinstance(k, str) for k in kinds)):
            raise Refused(400, f"kinds: expected a non-empty list of kind names, got "
                          f"{brief(kinds)}", field="kinds", value=plain(kinds))
        strategy = body.get("strategy", "headroom")
        if strategy not in STRATEGIES:
            raise Refused(400, f"strategy: expected one of {', '.join(STRATEGIES)}, got "
                          f"{brief(strategy)}", field="strategy", value=plain(strategy))
        target_kw = number(body, "target_kw")
        duration_s = number(body, "duration_s", positive=True)
        lease_s = number(body, "lease_s", positive=True)
        ramp = number(body, "ramp_kw_per_s", positive=True)
        flip = number(body, "flip_threshold_kw", minimum=0.0)
        assert target_kw is not None and duration_s is not None     # required: json_body

        def start() -> dict[str, Any]:
            dispatch = self.fleet.dispatch(
                path, target_kw, kinds=tuple(kinds), duration_s=duration_s,
                ramp_kw_per_s=ramp, strategy=strategy,
                lease_s=3.0 if lease_s is None else lease_s, flip_threshold_kw=flip)
            return dispatch_dict(dispatch)

        answer = await self.call(start)
        log.info("dispatch_started", dispatch_id=answer["id"], path=path, target_kw=target_kw,
                 duration_s=duration_s, remote=request.remote)
        return web.json_response(answer, status=201,
                                 headers={"Location": f"/api/dispatch/{answer['id']}"})

    async def list_dispatches(self, request: web.Request) -> web.Response:
        active = request.query.get("active", "false")
        if active not in ("true", "false"):
            raise Refused(400, f"active: expected true or false, got {brief(active)}",
                          field="active", value=plain(active))

        def listed() -> list[dict[str, Any]]:
            return [dispatch_dict(d) for d in
                    self.fleet.dispatches(active_only=active == "true")]

        return web.json_response(await self.call(listed))

    async def get_dispatch(self, request: web.Request) -> web.Response:
        dispatch_id = request.match_info["dispatch_id"]
        return web.json_response(await self.call(
            lambda: dispatch_dict(self.fleet.get_dispatch(dispatch_id))))

    async def update_dispatch(self, request: web.Request) -> web.Response:
        dispatch_id = request.match_info["dispatch_id"]
        body = await json_body(request, {"target_kw": True})
        target_kw = number(body, "target_kw")
        assert target_kw is not None

        def update() -> dict[str, Any]:
            dispatch = self.fleet.get_dispatch(dispatch_id)
            _while_active(dispatch, lambda: dispatch.update(target_kw))
            return dispatch_dict(dispatch)

        answer = await self.call(update)
        log.info("dispatch_updated", dispatch_id=dispatch_id, target_kw=target_kw,
                 remote=request.remote)
        return web.json_response(answer)

    async def cancel_dispatch(self, request: web.Request) -> web.Response:
        dispatch_id = request.match_info["dispatch_id"]

        def cancel() -> dict[str, Any]:
            dispatch = self.fleet.get_dispatch(dispatch_id)
            _while_active(dispatch, dispatch.cancel)
            return dispatch_dict(dispatch)

        answer = await self.call(cancel)
        log.info("dispatch_cancelled", dispatch_id=dispatch_id, remote=request.remote)
        return web.json_response(answer)


def dispatch_dict(dispatch: Dispatch) -> dict[str, Any]:
    """A dispatch as the API answers it (blocking: run it on the pool)."""
    report = dispatch.report()
    return {"id": dispatch.id, "status": dispatch.status,
            "spec": jsonable(dispatch.spec.to_dict()),
            "report": None if report is None else jsonable(report.to_dict())}


def _while_active(dispatch: Dispatch, change: Callable[[], object]) -> None:
    """Run ``change``; a dispatch that has ended by then is a conflict (409)."""
    try:
        change()
    except DispatchConflict as error:
        raise Refused(409, str(error), id=dispatch.id, status=dispatch.status) from None


# -- reading requests -----------------------------------------------------------------------

async def json_body(request: web.Request, fields: Mapping[str, bool]) -> dict[str, Any]:
    """The request's JSON object, with only ``fields`` (name → required) in it."""
    if request.content_type != "application/json":
        raise Refused(415, f"Content-Type: {brief(request.content_type)} is not JSON (send "
                      "application/json)")
    raw = await request.read()
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except ValueError as error:           # UnicodeDecodeError and JSONDecodeError too
        raise Refused(400, f"the body is not JSON: {brief(error, 120)}") from None
    if not isinstance(data, dict):
        raise Refused(400, f"the body is a JSON object, got {brief(data)}")
    valid = ", ".join(fields)
    for name in data:
        if name not in fields:
            raise Refused(400, f"{brief(name, 60)}: unknown field (valid: {valid})",
                          field=plain(name, 60))
    for name, required in fields.items():
        if required and name not in data:
            raise Refused(400, f"{name}: required (fields: {valid})", field=name)
    return data


def number(body: Mapping[str, Any], name: str, *, positive: bool = False,
           minimum: float | None = None) -> float | None:
    """``body[name]`` as a finite number (``None`` if absent or null)."""
    value = body.get(name)
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise Refused(400, f"{name}: expected a finite number, got {brief(value)}",
                      field=name, value=plain(value))
    if positive and value <= 0:
        raise Refused(400, f"{name}: must be positive, got {value!r}", field=name, value=value)
    if minimum is not None and value < minimum:
        raise Refused(400, f"{name}: must be >= {minimum:g}, got {value!r}", field=name,
                      value=value)
    return float(value)


def _int_query(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise Refused(400, f"{name}: expected an integer in {low}..{high}, got {brief(text)}",
                      field=name, value=plain(text))
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
