"""The live view's JSON: roll-ups, asset views, dispatch reports and the tree as the page and
the API get them."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import structlog

from twin.control.dispatch import DispatchReport
from twin.core.model import FleetModel
from twin.core.rollup import Rollup
from twin.core.samples import IngestReport, brief
from twin.fleet.facade import Fleet

log = structlog.get_logger("twin.web")


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def rollup_dict(rollup: Rollup, missing_shown: int) -> dict[str, Any]:
    """A roll-up as JSON, its lists of missing and of not-following ids cut to
    ``missing_shown`` (the counts, ``missing_count`` and ``not_following``, stay whole)."""
    out = rollup.to_dict(with_missing=False)
    missing = rollup.missing
    out["missing"] = list(missing[:missing_shown])
    out["missing_count"] = len(missing)
    out["not_following_ids"] = list(rollup.not_following[:missing_shown])
    return out


def dispatches_message(reports: Iterable[DispatchReport]) -> dict[str, Any]:
    """The active dispatches' latest reports, as the page's panel shows them."""
    return {"type": "dispatches", "items": [jsonable(r.to_dict()) for r in reports]}


def asset_views(fleet: Fleet, site_path: str) -> list[dict[str, Any]]:
    """Every asset of a site as JSON (blocking: run it on the pool)."""
    site = fleet.model.site(site_path)
    return [jsonable(fleet.asset(asset_id).to_dict()) for asset_id in list(site.assets)]


def tree_nodes(model: FleetModel, rollups: dict[str, Rollup]) -> list[dict[str, Any]]:
    """The hierarchy (parents first) and the extra groups, as the page draws them."""
    nodes: list[dict[str, Any]] = []
    for path in model.node_paths():
        parent, _, name = path.rpartition("/")
        level = rollups[path].level if path in rollups else ("owner", "region", "site")[
            path.count("/")]
        nodes.append({"path": path, "name": name, "level": level, "parent": parent or None})
    for name in sorted(model.groups):
        nodes.append({"path": name, "name": name, "level": "group", "parent": None})
    return nodes


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` (browsers cannot parse NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def report_body(report: IngestReport) -> bytes:
    """The ingest report as JSON. Never raises: should an error entry not render, the counts
    (plain ints) are sent without the entries, which say so."""
    counts = {"total": report.total, **report.counts()}
    try:
        errors = [{"index": e.index, "asset_id": _plain(e.asset_id), "field": _plain(e.field),
                   "value": _plain(e.value), "reason": _plain(e.reason, 400),
                   "message": _plain(str(e), 1000)} for e in report.errors]
        return json.dumps({**counts, "errors": errors}).encode()
    except Exception as error:
        log.error("ingest_report_unrendered", reason=brief(error, 200))
        return json.dumps({**counts, "errors": [], "errors_unrendered": len(report.errors)}
                          ).encode()


def _plain(value: Any, limit: int = 200) -> Any:
    """A JSON-safe form of a rejected sample's value (a bounded repr if it is not plain)."""
    if value is None or isinstance(value, bool) or (type(value) is int and
                                                    value.bit_length() <= 64):
        return value
    if type(value) is str and len(value) <= limit:
        return value
    if type(value) is float and math.isfinite(value):
        return value
    return brief(value, limit)
