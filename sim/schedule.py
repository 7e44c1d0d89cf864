"""The dispatch schedule: fleet dispatches the simulator starts during a run.

A dispatch comes from ``--dispatch PATH:KW@START-END`` (e.g. ``acme:1500@10m-40m``; a
negative power charges), from the ``dispatch`` list of a scenario file (``--scenario``), or,
when neither is given, from the default schedule: the first region with batteries at 40 % of
their rated power, from a tenth of the run to nine tenths. ``--dispatch none`` runs none. The
runner calls ``fleet.dispatch(path, target_kw, duration_s=END-START)`` at START; the fleet
ends it itself at END. Every error names where the value came from and the value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.config import SimConfigError
from twin import FleetModel

STRATEGIES = ("headroom", "soc")
DEFAULT_SHARE = 0.4                    # of the owner's batteries' rated power
DEFAULT_WINDOW = (0.1, 0.9)            # of the run

_POWER = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*(kw|mw)?\s*$", re.IGNORECASE)
_OFFSET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_UNIT_S = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, slots=True)
class ScheduledDispatch:
    """``target_kw`` for the batteries under ``path`` from ``start_s`` to ``end_s`` (seconds
    into the run). ``source`` says where it was given, for error messages."""

    path: str
    target_kw: float
    start_s: float
    end_s: float
    strategy: str = "headroom"
    ramp_kw_per_s: float | None = None
    source: str = "default"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "target_kw": self.target_kw, "start_s": self.start_s,
                "end_s": self.end_s, "strategy": self.strategy,
                "ramp_kw_per_s": self.ramp_kw_per_s, "source": self.source}


def parse_dispatch(text: str) -> ScheduledDispatch:
    """``PATH:KW@START-END``: ``acme:1500@10m-40m``, ``acme/north:-2MW@0-1h``."""
    where = f"--dispatch {text!r}"
    path, colon, rest = text.rpartition(":")
    power, at, window = rest.partition("@")
    start, dash, end = window.partition("-")
    if not colon or not path.strip() or not at or not dash:
        raise SimConfigError(f"{where}: expected PATH:KW@START-END (example: "
                             f"acme:1500@10m-40m)")
    return _checked(ScheduledDispatch(path.strip(), _power(power, where),
                                      _offset(start, where, "START"),
                                      _offset(end, where, "END"), source=where))


def _power(text: str, where: str) -> float:
    match = _POWER.match(text)
    if match is None:
        raise SimConfigError(f"{where}: {text.strip()!r} is not a power in kW (examples: 500, "
                             f"-250, 1.5MW)")
    value = float(match.group(1))
    return value * 1000.0 if (match.group(2) or "").lower() == "mw" else value


def _offset(text: str, where: str, name: str) -> float:
    match = _OFFSET.match(text)
    if match is None:
        raise SimConfigError(f"{where}: {name} {text.strip()!r} is not a time into the run "
                             f"(examples: 0, 90s, 10m, 1h)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def _checked(entry: ScheduledDispatch) -> ScheduledDispatch:
    where = entry.source
    if not math.isfinite(entry.target_kw):
        raise SimConfigError(f"{where}: the target must be a finite number of kW")
    if not entry.end_s > entry.start_s:
        raise SimConfigError(f"{where}: END ({entry.end_s:g} s) must come after START "
                             f"({entry.start_s:g} s)")
    if entry.strategy not in STRATEGIES:
        raise SimConfigError(f"{where}: strategy {entry.strategy!r} is not one of "
                             f"{', '.join(STRATEGIES)}")
    if entry.ramp_kw_per_s is not None and not (math.isfinite(entry.ramp_kw_per_s)
                                                and entry.ramp_kw_per_s > 0):
        raise SimConfigError(f"{where}: ramp_kw_per_s must be a positive number, got "
                             f"{entry.ramp_kw_per_s!r}")
    return entry


# -- scenario files ------------------------------------------------------------------------

_FIELDS = ("path", "target_kw", "start", "end", "strategy", "ramp_kw_per_s")


def load_scenario(spec: str) -> tuple[ScheduledDispatch, ...]:
    """The dispatch schedule of a scenario file (JSON, format in docs/simulator.md)."""
    path = Path(spec)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SimConfigError(f"--scenario {spec}: not valid JSON ({error})") from None
    except OSError as error:
        raise SimConfigError(f"--scenario {spec}: cannot read it ({error.strerror})") from None
    return parse_scenario(raw, str(path))


def parse_scenario(raw: Any, source: str) -> tuple[ScheduledDispatch, ...]:
    if not isinstance(raw, Mapping):
        raise SimConfigError(f"{source}: a scenario file is an object (keys: dispatch), got "
                             f"{type(raw).__name__}")
    unknown = sorted(set(raw) - {"dispatch"})
    if unknown:
        raise SimConfigError(f"{source}: unknown key {unknown[0]!r} (valid: dispatch)")
    entries = raw.get("dispatch", [])
    if not isinstance(entries, list):
        raise SimConfigError(f"{source}: dispatch: expected a list of dispatches, got "
                             f"{entries!r}")
    return tuple(_entry(item, f"{source}: dispatch[{i}]") for i, item in enumerate(entries))


def _entry(item: Any, where: str) -> ScheduledDispatch:
    if not isinstance(item, Mapping):
        raise SimConfigError(f"{where}: expected an object with path, target_kw, start, end; "
                             f"got {item!r}")
    for name in item:
        if name not in _FIELDS:
            raise SimConfigError(f"{where}.{name}: unknown field (valid: {', '.join(_FIELDS)})")
    for name in ("path", "target_kw", "start", "end"):
        if name not in item:
            raise SimConfigError(f"{where}: {name} is missing")
    path = item["path"]
    if not isinstance(path, str) or not path:
        raise SimConfigError(f"{where}.path: expected a roll-up path, got {path!r}")
    target = item["target_kw"]
    if type(target) not in (int, float) or not math.isfinite(target):
        raise SimConfigError(f"{where}.target_kw: expected a number of kW, got {target!r}")
    ramp = item.get("ramp_kw_per_s")
    if ramp is not None and type(ramp) not in (int, float):
        raise SimConfigError(f"{where}.ramp_kw_per_s: expected a number, got {ramp!r}")
    strategy = item.get("strategy", "headroom")
    return _checked(ScheduledDispatch(
        path, float(target), _time(item["start"], f"{where}.start"),
        _time(item["end"], f"{where}.end"), strategy=strategy if isinstance(strategy, str)
        else repr(strategy), ramp_kw_per_s=None if ramp is None else float(ramp),
        source=where))


def _time(value: Any, where: str) -> float:
    if type(value) in (int, float) and math.isfinite(value) and value >= 0:
        return float(value)
    if isinstance(value, str) and _OFFSET.match(value):
        return _offset(value, where, "time")
    raise SimConfigError(f"{where}: expected seconds into the run (a number >= 0, or e.g. "
                         f"'10m'), got {value!r}")


# -- against the fleet ----------------------------------------------------------------------

def default_schedule(model: FleetModel, duration_s: float) -> tuple[ScheduledDispatch, ...]:
    """The first region (owner and region by name) with batteries, at 40 % of their rated
    power, discharging from a tenth of the run to nine tenths; none for a fleet without
    batteries. A region, not an owner: the closed loop costs the runtime a command per
    battery and tick, and a region shows it as well."""
    regions = sorted(f"{owner}/{region}" for owner, rs in model.owners.items() for region in rs)
    for path in regions:
        rated = sum(model.assets[a].rated_kw for a in members(model, path))
        if rated > 0:
            lo, hi = DEFAULT_WINDOW
            return (ScheduledDispatch(path, round(DEFAULT_SHARE * rated, 1),
                                      float(math.floor(lo * duration_s)),
                                      float(math.floor(hi * duration_s))),)
    return ()


def members(model: FleetModel, path: str, kinds: Sequence[str] = ("battery",)) -> list[str]:
    """The assets of ``kinds`` a dispatch on ``path`` steers (as the fleet chooses them)."""
    if path in model.groups:
        covered, direct = model.group_coverage(path)
        ids = {a for s in model.sites.values()
               if any(s.path == p or s.path.startswith(p + "/") for p in covered)
               for a in s.assets} | set(direct)
    else:
        ids = {a for s in model.sites.values()
               if s.path == path or s.path.startswith(path + "/") for a in s.assets}
    return sorted(a for a in ids if model.assets[a].kind in kinds)


def check_schedule(schedule: Sequence[ScheduledDispatch], model: FleetModel,
                   duration_s: float) -> list[list[str]]:
    """Each dispatch's members; refuses an unknown path, one without batteries, a start after
    the run, and two dispatches sharing batteries at the same time (the fleet would refuse
    the second)."""
    known = set(model.node_paths()) | set(model.groups)
    out: list[list[str]] = []
    for entry in schedule:
        if entry.path not in known:
            head = entry.path.split("/", 1)[0]
            close = sorted(p for p in known if p.split("/", 1)[0] == head)[:5] or sorted(
                p for p in known if "/" not in p)[:8]
            raise SimConfigError(f"{entry.source}: unknown path {entry.path!r} (valid, e.g.: "
                                 f"{', '.join(close)})")
        if entry.start_s >= duration_s:
            raise SimConfigError(f"{entry.source}: starts at {entry.start_s:g} s, after the "
                                 f"run's {duration_s:g} s")
        ids = members(model, entry.path)
        if not ids:
            raise SimConfigError(f"{entry.source}: no batteries under {entry.path!r}")
        out.append(ids)
    for i, a in enumerate(schedule):
        for j in range(i):
            b = schedule[j]
            if a.start_s < b.end_s and b.start_s < a.end_s and set(out[i]) & set(out[j]):
                raise SimConfigError(f"{a.source}: overlaps {b.source} in time and shares "
                                     f"batteries with it; give them disjoint paths or times")
    return out


__all__ = ["ScheduledDispatch", "check_schedule", "default_schedule", "load_scenario",
           "members", "parse_dispatch", "parse_scenario"]
