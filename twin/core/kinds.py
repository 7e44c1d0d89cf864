"""Asset kinds: the signals a kind reports, their physical bounds, and the commands it takes.

A kind is a small object registered by name. Applications add their own by subclassing
:class:`AssetKind` (see the README): declare signals and commands, and optionally override
:meth:`AssetKind.derive` or :meth:`AssetKind.check_command` for behaviour of their own.

Sign convention: ``power_kw`` is net power at the asset's connection point, positive when it
delivers to the grid (generator convention). A charging EV or battery reports negative power.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from twin.core.errors import InvalidCommand, ModelError

if TYPE_CHECKING:
    from twin.core.model import AssetSpec

Scale = Literal["rated_kw", "capacity_kwh"] | None

# integers the wire format (msgpack) carries; a value beyond is refused, as it would be on the
# wire, so a fleet treats a sample alike with a store and without one
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Signal:
    """One named value a device reports (or a command field), with its physical bounds.

    ``lo``/``hi`` are absolute, or multiples of the asset's ``rated_kw`` or ``capacity_kwh``
    when ``scale`` names that field. ``boolean`` signals take ``True``/``False`` only.
    """

    unit: str
    lo: float = -math.inf
    hi: float = math.inf
    scale: Scale = None
    boolean: bool = False

    def limits(self, spec: AssetSpec) -> tuple[float, float]:
        if self.scale is None:
            return self.lo, self.hi
        factor = spec.rated_kw if self.scale == "rated_kw" else (spec.capacity_kwh or 0.0)
        return self.lo * factor, self.hi * factor


FollowMode = Literal["equal", "at_most"]


@dataclass(frozen=True, slots=True)
class Follow:
    """How the reported view shows that a command field is followed.

    ``equal``: the reported ``signal`` is within the tolerance of the desired value (a
    battery's power of its setpoint). ``at_most``: its magnitude is at most the desired value
    plus the tolerance (a turbine's or a charger's power under its limit). The tolerance is
    ``abs_tol`` plus ``rated_tol`` times the asset's ``rated_kw``.
    """

    signal: str
    mode: FollowMode = "equal"
    abs_tol: float = 0.0
    rated_tol: float = 0.02

    def tolerance(self, spec: AssetSpec) -> float:
        return self.abs_tol + self.rated_tol * spec.rated_kw


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a sample (or one of its fields) was refused: the field, the value, the reason."""

    field: str
    value: Any
    reason: str


class AssetKind:
    """Base class of asset kinds. Subclasses set the class attributes; instances are registered.

    ``fields``: model fields an asset of this kind must have besides ``id`` and ``kind``
    (``rated_kw`` is always required); ``optional_fields`` are kept in ``AssetSpec.attrs``.

    Control: every command field needs a ``command_defaults`` entry, the safe value a lease
    reverts to when it expires, in the field's scale (``1.0`` with ``scale="rated_kw"`` is
    the rating). ``follows`` says which reported signal shows that a field is followed, and
    ``dead_time_s + settle_s`` is how long a device may take before it counts as not
    following its setpoint.
    """

    name: ClassVar[str]
    signals: ClassVar[Mapping[str, Signal]]
    commands: ClassVar[Mapping[str, Signal]] = {}
    fields: ClassVar[tuple[str, ...]] = ("rated_kw",)
    optional_fields: ClassVar[tuple[str, ...]] = ()
    power_signal: ClassVar[str] = "power_kw"
    command_defaults: ClassVar[Mapping[str, float | bool]] = {}
    follows: ClassVar[Mapping[str, Follow]] = {}
    dead_time_s: ClassVar[float] = 2.0
    settle_s: ClassVar[float] = 8.0

    def __init__(self) -> None:
        # the hot path skips the derive hook unless a subclass overrides it
        self.derives = type(self).derive is not AssetKind.derive

    # -- hooks an application may override ------------------------------------------------

    def derive(self, spec: AssetSpec, reported: Mapping[str, Any], signals: Mapping[str, Any]
               ) -> Mapping[str, Any] | None:
        """Called with a clean sample before anything is committed; returns extra values to
        merge into the reported view (e.g. a computed availability). Raising here counts as a
        crash of the asset's actor: it is restarted from its last good state."""
        return None

    def check_command(self, spec: AssetSpec, command: Mapping[str, Any]) -> dict[str, Any]:
        """Validate a command and return the desired values it sets."""
        if not isinstance(command, Mapping) or not command:
            raise InvalidCommand(f"a command is a non-empty mapping of fields, got {command!r}")
        desired: dict[str, Any] = {}
        for field, value in command.items():
            signal = self.commands.get(field)
            if signal is None:
                valid = ", ".join(sorted(self.commands)) or "none"
                raise InvalidCommand(
                    f"kind {self.name!r} takes no command field {field!r} (valid: {valid})")
            desired[field] = _checked_command_value(self.name, spec, field, signal, value)
        return desired

    def default_command(self, spec: AssetSpec) -> dict[str, Any]:
        """The desired values a lease of this asset reverts to (absolute units)."""
        out: dict[str, Any] = {}
        for field, value in self.command_defaults.items():
            signal = self.commands[field]
            if signal.boolean or isinstance(value, bool):
                out[field] = value
            elif signal.scale is None:
                out[field] = float(value)
            else:
                factor = (spec.rated_kw if signal.scale == "rated_kw"
                          else (spec.capacity_kwh or 0.0))
                out[field] = float(value) * factor
        return out

    # -- used by the runtime ----------------------------------------------------------------

    def classify(self, spec: AssetSpec, signals: Any) -> Rejection | bool:
        """Check a sample's signals: a :class:`Rejection` if malformed, else whether it is
        anomalous (NaN, infinite, or outside the kind's physical bounds)."""
        if type(signals) is not dict or not signals:
            return Rejection("signals", signals, "expected a non-empty map of signal values")
        known = self.signals
        if len(signals) == 1:                 # the common report: one changed signal
            for name, value in signals.items():
                signal = known.get(name)
                if (signal is not None and signal.scale == "rated_kw" and
                        (type(value) is float or
                         (type(value) is int and INT_MIN <= value <= INT_MAX))):
                    rated = spec.rated_kw
                    return not signal.lo * rated <= value <= signal.hi * rated
        anomalous = False
        for name, value in signals.items():
            signal = known.get(name)
            if signal is None:
                return Rejection(f"signals.{name}", value,
                                 f"unknown signal for kind {self.name!r} "
                                 f"(known: {', '.join(sorted(known))})")
            kind_of_value = type(value)
            if signal.boolean:
                if kind_of_value is not bool:
                    return Rejection(f"signals.{name}", value, "expected true or false")
                continue
            if kind_of_value is not float and (kind_of_value is not int or
                                               not INT_MIN <= value <= INT_MAX):
                return Rejection(f"signals.{name}", value, "expected a number (an integer "
                                 "within 64 bits, or a float)")
            lo, hi = signal.limits(spec) if signal.scale else (signal.lo, signal.hi)
            if not lo <= value <= hi:  # NaN fails every comparison: anomalous too
                anomalous = True
        return anomalous

    def power_kw(self, reported: Mapping[str, Any]) -> float | None:
        """The asset's net power from its reported view (``None`` if it never said)."""
        value = reported.get(self.power_signal)
        return None if value is None else float(value)

    def __repr__(self) -> str:
        return f"<AssetKind {self.name}>"


def _checked_command_value(kind: str, spec: AssetSpec, field: str, signal: Signal,
                           value: Any) -> Any:
    if signal.boolean:
        if type(value) is not bool:
            raise InvalidCommand(f"{kind} command field {field!r}: expected true or false, "
                                 f"got {value!r}")
        return value
    if type(value) not in (int, float) or not math.isfinite(value):
        raise InvalidCommand(f"{kind} command field {field!r}: expected a finite number, "
                             f"got {value!r}")
    lo, hi = signal.limits(spec)
    if not lo <= value <= hi:
        raise InvalidCommand(f"{kind} command field {field!r}={value!r} is outside "
                             f"[{lo:g}, {hi:g}] {signal.unit} for asset {spec.id!r}")
    return float(value)


class Turbine(AssetKind):
    name = "turbine"
    signals = {
        "power_kw": Signal("kW", -0.05, 1.1, "rated_kw"),
        "wind_speed_ms": Signal("m/s", 0.0, 75.0),
        "rotor_rpm": Signal("rpm", 0.0, 40.0),
        "power_limit_kw": Signal("kW", 0.0, 1.0, "rated_kw"),
    }
    commands = {"power_limit_kw": Signal("kW", 0.0, 1.0, "rated_kw")}
    command_defaults = {"power_limit_kw": 1.0}          # no curtailment
    follows = {"power_limit_kw": Follow("power_kw", "at_most", 1.0, 0.02)}
    dead_time_s = 2.0
    settle_s = 13.0                                     # pitch control is slow


class Battery(AssetKind):
    name = "battery"
    fields = ("rated_kw", "capacity_kwh")
    signals = {
        "power_kw": Signal("kW", -1.1, 1.1, "rated_kw"),
        "soc_pct": Signal("%", 0.0, 100.0),
        "energy_kwh": Signal("kWh", 0.0, 1.0, "capacity_kwh"),
        "setpoint_kw": Signal("kW", -1.0, 1.0, "rated_kw"),
    }
    commands = {"setpoint_kw": Signal("kW", -1.0, 1.0, "rated_kw")}
    command_defaults = {"setpoint_kw": 0.0}             # idle
    follows = {"setpoint_kw": Follow("power_kw", "equal", 0.5, 0.02)}
    dead_time_s = 1.0
    settle_s = 9.0


class Charger(AssetKind):
    name = "charger"
    signals = {
        # a charger draws power: negative in the generator convention
        "power_kw": Signal("kW", -1.1, 0.05, "rated_kw"),
        "session_active": Signal("", boolean=True),
        "session_energy_kwh": Signal("kWh", 0.0, 1000.0),
        "power_limit_kw": Signal("kW", 0.0, 1.0, "rated_kw"),
    }
    commands = {"power_limit_kw": Signal("kW", 0.0, 1.0, "rated_kw")}
    command_defaults = {"power_limit_kw": 1.0}          # full rate
    follows = {"power_limit_kw": Follow("power_kw", "at_most", 0.5, 0.02)}
    dead_time_s = 2.0
    settle_s = 8.0


def _parse_bound(where: str, current: Signal, raw: Any) -> Signal:
    if isinstance(raw, list | tuple) and len(raw) == 2:
        lo, hi, scale = raw[0], raw[1], None
    elif isinstance(raw, Mapping) and set(raw) <= {"lo", "hi", "scale"}:
        lo, hi, scale = raw.get("lo", -math.inf), raw.get("hi", math.inf), raw.get("scale")
    else:
        raise ModelError(f"{where}: expected [lo, hi] or {{\"lo\", \"hi\", \"scale\"}}, "
                         f"got {raw!r}")
    if scale not in (None, "rated_kw", "capacity_kwh"):
        raise ModelError(f"{where}.scale: expected 'rated_kw' or 'capacity_kwh', got {scale!r}")
    for name, value in (("lo", lo), ("hi", hi)):
        if type(value) not in (int, float) or math.isnan(value):
            raise ModelError(f"{where}.{name}: expected a number, got {value!r}")
    if lo > hi:
        raise ModelError(f"{where}: lo={lo!r} is above hi={hi!r}")
    if current.boolean:
        raise ModelError(f"{where}: a true/false signal has no bounds")
    return Signal(current.unit, float(lo), float(hi), scale)


class KindRegistry:
    """Kinds by name. ``twin.default_kinds`` holds the built-ins and what applications add."""

    def __init__(self, kinds: Iterable[AssetKind] = ()) -> None:
        self._kinds: dict[str, AssetKind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: AssetKind, *, replace: bool = False) -> AssetKind:
        if not isinstance(kind, AssetKind):
            raise TypeError(f"register an AssetKind instance, got {kind!r}")
        name = getattr(kind, "name", None)
        if not isinstance(name, str) or not name:
            raise ModelError(f"{type(kind).__name__}.name must be a non-empty string")
        if name in self._kinds and not replace:
            raise ModelError(f"kind {name!r} is already registered (pass replace=True)")
        if "rated_kw" not in kind.fields:
            raise ModelError(f"kind {name!r}: fields must include 'rated_kw'")
        _check_control(kind)
        self._kinds[name] = kind
        return kind

    def get(self, name: str) -> AssetKind:
        try:
            return self._kinds[name]
        except KeyError:
            raise ModelError(f"unknown kind {name!r} (known: {', '.join(sorted(self._kinds))})"
                             ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def copy(self) -> KindRegistry:
        return KindRegistry(self._kinds.values())

    def with_bounds(self, bounds: Any, where: str = "defaults.bounds") -> KindRegistry:
        """A copy whose kinds take the signal bounds given as
        ``{kind: {signal: [lo, hi] | {"lo": .., "hi": .., "scale": "rated_kw"}}}``."""
        if not isinstance(bounds, Mapping):
            raise ModelError(f"{where}: expected an object of kind → signal → bounds, "
                             f"got {bounds!r}")
        out = self.copy()
        for kind_name, signals in bounds.items():
            kind = out.get(kind_name)
            if not isinstance(signals, Mapping):
                raise ModelError(f"{where}.{kind_name}: expected an object of signal → bounds")
            changed = dict(kind.signals)
            for name, raw in signals.items():
                current = changed.get(name)
                if current is None:
                    raise ModelError(f"{where}.{kind_name}.{name}: kind {kind_name!r} has no "
                                     f"signal {name!r} (known: {', '.join(sorted(changed))})")
                changed[name] = _parse_bound(f"{where}.{kind_name}.{name}", current, raw)
            tuned = copy.copy(kind)
            tuned.signals = changed      # type: ignore[misc]  # this instance only
            out.register(tuned, replace=True)
        return out


def _check_control(kind: AssetKind) -> None:
    """A kind that takes commands says what each reverts to, and how following shows."""
    name = kind.name
    for field in kind.commands:
        if field not in kind.command_defaults:
            raise ModelError(
                f"kind {name!r}: command field {field!r} has no entry in command_defaults (the "
                f"value a lease reverts to when it expires, e.g. {{{field!r}: 0.0}})")
    for field, value in kind.command_defaults.items():
        if field not in kind.commands:
            raise ModelError(f"kind {name!r}: command_defaults names {field!r}, which is not a "
                             f"command field (valid: "
                             f"{', '.join(sorted(kind.commands)) or 'none'})")
        if not isinstance(value, bool | int | float) or math.isnan(value):
            raise ModelError(f"kind {name!r}: command_defaults[{field!r}] must be a number or "
                             f"true/false, got {value!r}")
    for field, follow in kind.follows.items():
        if field not in kind.commands:
            raise ModelError(f"kind {name!r}: follows names {field!r}, which is not a command "
                             f"field (valid: {', '.join(sorted(kind.commands)) or 'none'})")
        if follow.signal not in kind.signals:
            raise ModelError(f"kind {name!r}: follows[{field!r}] compares signal "
                             f"{follow.signal!r}, which the kind does not report "
                             f"(known: {', '.join(sorted(kind.signals))})")
    if not kind.dead_time_s >= 0 or not kind.settle_s >= 0:
        raise ModelError(f"kind {name!r}: dead_time_s and settle_s must be >= 0, got "
                         f"{kind.dead_time_s!r} and {kind.settle_s!r}")


default_kinds = KindRegistry([Turbine(), Battery(), Charger()])


def register_kind(kind: AssetKind, *, replace: bool = False) -> AssetKind:
    """Register an application's kind in the default registry (used by ``FleetModel``)."""
    return default_kinds.register(kind, replace=replace)
