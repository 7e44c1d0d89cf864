"""The faults real fleets have, as a plan: which ones, how often, how long.

A plan comes from a preset (``default``, ``none``) or a JSON file (format in
``docs/simulator.md``). Every fault a file leaves out is off. Event rates are per asset and
hour of simulated time; :func:`poisson` turns a rate into a count per step. The control faults
act on commands: lost on the way, acknowledged late, acknowledged but not followed, rejected.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.config import SimConfigError

# fault name → {setting: (kind, default)}; kinds: rate (>= 0 per asset-hour), fraction (0..1),
# positive (> 0), count (int >= 1), range ([lo, hi] positive, lo <= hi), lengths (positive list),
# window (null: the whole run, or [start, end] seconds into it), reason (a short text)
_SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "dropout": {"per_asset_hour": ("rate", 0.0)},
    "offline": {"per_asset_hour": ("rate", 0.0), "lengths_s": ("lengths", [60, 300, 900, 1800])},
    "never_up": {"fraction": ("fraction", 0.0)},
    "clock": {"fraction": ("fraction", 0.0), "skew_s": ("non_negative", 120.0),
              "drift_ppm": ("non_negative", 50.0)},
    "late_burst": {"probability": ("fraction", 0.0), "max_samples": ("count", 60)},
    "duplicate": {"per_asset_hour": ("rate", 0.0)},
    "future": {"per_asset_hour": ("rate", 0.0), "ahead_s": ("range", [900.0, 86400.0])},
    "stale_replay": {"per_asset_hour": ("rate", 0.0), "age_days": ("range", [45.0, 120.0]),
                     "samples": ("count", 5)},
    "anomalous": {"per_asset_hour": ("rate", 0.0),
                  "modes": ("modes", ["out_of_range", "nan"])},
    "stuck": {"per_asset_hour": ("rate", 0.0), "lengths_s": ("lengths", [600, 3600])},
    "malformed": {"per_asset_hour": ("rate", 0.0)},
    "crash": {"per_asset_hour": ("rate", 0.0)},
    "crash_loop": {"per_asset_hour": ("rate", 0.0), "quarantine_s": ("positive", 600.0)},
    # control: what happens to the runtime's commands on their way to batteries and back
    "command_loss": {"probability": ("fraction", 0.0)},
    "ack_delay": {"fraction": ("fraction", 0.0), "delay_s": ("range", [1.0, 3.0])},
    "command_ignore": {"fraction": ("fraction", 0.0), "window_s": ("window", None)},
    "command_reject": {"fraction": ("fraction", 0.0),
                       "reason": ("reason", "local control mode")},
}
# the faults whose devices are chosen among the batteries, disjoint (see sim.control)
CONTROL_FRACTIONS = ("command_reject", "command_ignore", "ack_delay")
ANOMALY_MODES = ("out_of_range", "nan")

DEFAULT_PRESET: dict[str, dict[str, Any]] = {
    "dropout": {"per_asset_hour": 2.0},
    "offline": {"per_asset_hour": 0.05, "lengths_s": [60, 300, 900, 1800]},
    "never_up": {"fraction": 0.01},
    "clock": {"fraction": 0.1, "skew_s": 120, "drift_ppm": 50},
    "late_burst": {"probability": 0.5, "max_samples": 60},
    "duplicate": {"per_asset_hour": 0.5},
    "future": {"per_asset_hour": 0.05, "ahead_s": [900, 86400]},
    "stale_replay": {"per_asset_hour": 0.02, "age_days": [45, 120], "samples": 5},
    "anomalous": {"per_asset_hour": 0.2, "modes": ["out_of_range", "nan"]},
    "stuck": {"per_asset_hour": 0.01, "lengths_s": [600, 3600]},
    "malformed": {"per_asset_hour": 0.05},
    "crash": {"per_asset_hour": 0.01},
    "crash_loop": {"per_asset_hour": 0.002, "quarantine_s": 600},
    "command_loss": {"probability": 0.01},
    "ack_delay": {"fraction": 0.05, "delay_s": [1, 3]},
    "command_ignore": {"fraction": 0.03},
    "command_reject": {"fraction": 0.02, "reason": "local control mode"},
}


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Validated fault settings: ``settings[fault][name]``; ``source`` says where from."""

    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str = "none"

    def get(self, fault: str, name: str) -> Any:
        return self.settings.get(fault, {}).get(name, _SCHEMA[fault][name][1])

    def rate(self, fault: str) -> float:
        value: float = self.get(fault, "per_asset_hour")
        return value

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every fault with every setting, defaults filled in (for the report)."""
        return {name: {key: self.get(name, key) for key in schema}
                for name, schema in _SCHEMA.items()}


def load_faults(spec: str) -> FaultPlan:
    """``default``, ``none``, or the path of a faults JSON file."""
    if spec == "default":
        return parse_faults(DEFAULT_PRESET, "default")
    if spec == "none":
        return FaultPlan(source="none")
    path = Path(spec)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SimConfigError(f"--faults {spec}: not valid JSON ({error})") from None
    except OSError as error:
        raise SimConfigError(f"--faults {spec}: cannot read it ({error.strerror}); expected "
                             "'default', 'none' or a faults JSON file") from None
    return parse_faults(raw, str(path))


def parse_faults(raw: Any, source: str) -> FaultPlan:
    if not isinstance(raw, Mapping):
        raise SimConfigError(f"{source}: a faults file is an object of fault → settings, "
                             f"got {type(raw).__name__}")
    settings: dict[str, dict[str, Any]] = {}
    for fault, values in raw.items():
        schema = _SCHEMA.get(fault)
        if schema is None:
            raise SimConfigError(f"{source}: unknown fault {fault!r} "
                                 f"(valid: {', '.join(sorted(_SCHEMA))})")
        if not isinstance(values, Mapping):
            raise SimConfigError(f"{source}: {fault}: expected an object of settings, "
                                 f"got {values!r}")
        settings[fault] = {}
        for name, value in values.items():
            if name not in schema:
                raise SimConfigError(f"{source}: {fault}.{name}: unknown setting "
                                     f"(valid: {', '.join(sorted(schema))})")
            settings[fault][name] = _check(f"{source}: {fault}.{name}", schema[name][0], value)
    return FaultPlan(settings, source)


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _check(where: str, kind: str, value: Any) -> Any:
    if kind in ("rate", "non_negative"):
        if not _number(value) or value < 0:
            raise SimConfigError(f"{where}: expected a number >= 0, got {value!r}")
        return float(value)
    if kind == "fraction":
        if not _number(value) or not 0 <= value <= 1:
            raise SimConfigError(f"{where}: expected a fraction from 0 to 1, got {value!r}")
        return float(value)
    if kind == "positive":
        if not _number(value) or value <= 0:
            raise SimConfigError(f"{where}: expected a number > 0, got {value!r}")
        return float(value)
    if kind == "count":
        if type(value) is not int or value < 1:
            raise SimConfigError(f"{where}: expected a whole number >= 1, got {value!r}")
        return value
    if kind == "range":
        if (not isinstance(value, list) or len(value) != 2 or not all(map(_number, value))
                or not 0 < value[0] <= value[1]):
            raise SimConfigError(f"{where}: expected [lo, hi] with 0 < lo <= hi, got {value!r}")
        return [float(v) for v in value]
    if kind == "lengths":
        if not isinstance(value, list) or not value:
            raise SimConfigError(f"{where}: expected a non-empty list of seconds, got {value!r}")
        for i, item in enumerate(value):
            if not _number(item) or item <= 0:
                raise SimConfigError(f"{where}[{i}]: expected seconds > 0, got {item!r}")
        return [float(v) for v in value]
    if kind == "window":
        if value is None:
            return None
        if (not isinstance(value, list) or len(value) != 2 or not all(map(_number, value))
                or not 0 <= value[0] < value[1]):
            raise SimConfigError(f"{where}: expected null (the whole run) or [start, end] "
                                 f"seconds with 0 <= start < end, got {value!r}")
        return [float(v) for v in value]
    if kind == "reason":
        if not isinstance(value, str) or not value.strip() or len(value) > 200:
            raise SimConfigError(f"{where}: expected a reason of 1 to 200 characters, "
                                 f"got {value!r}")
        return value
    # modes
    if not isinstance(value, list) or not value or any(m not in ANOMALY_MODES for m in value):
        raise SimConfigError(f"{where}: expected a non-empty list of "
                             f"{', '.join(map(repr, ANOMALY_MODES))}, got {value!r}")
    return list(value)


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson-distributed count (Knuth's method for small means, normal beyond)."""
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit = math.exp(-mean)
    count, product = 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count
