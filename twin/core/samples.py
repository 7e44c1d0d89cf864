"""Samples, their data-quality outcomes, and the report ``Fleet.ingest`` returns."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final


class Sample:
    """One device reading: which asset, its device time (unix s), and its signal values.

    ``seq`` is the device's sequence number when it sends one (the wire format carries it).
    """

    __slots__ = ("asset_id", "seq", "signals", "ts")

    def __init__(self, asset_id: str, ts: float, signals: dict[str, Any],
                 seq: int | None = None) -> None:
        self.asset_id = asset_id
        self.ts = ts
        self.signals = signals
        self.seq = seq

    def __repr__(self) -> str:
        seq = "" if self.seq is None else f", seq={self.seq}"
        return f"Sample({self.asset_id!r}, ts={self.ts!r}, signals={self.signals!r}{seq})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        return (self.asset_id, self.ts, self.signals, self.seq) == (
            other.asset_id, other.ts, other.signals, other.seq)

    __hash__ = None  # type: ignore[assignment]  # mutable signals


# Outcome codes: small ints, so the hot path counts into a list.
ACCEPTED: Final = 0     # clean and newest: moves the asset's current state
DUPLICATE: Final = 1    # same asset and device time already seen
LATE: Final = 2         # older than the newest accepted sample: history only
FUTURE: Final = 3       # device time beyond now + allowed skew
STALE: Final = 4        # older than the retention horizon (a replay)
ANOMALOUS: Final = 5    # outside the kind's physical bounds, NaN or infinite
REJECTED: Final = 6     # malformed, unknown asset, wrong types, or its handler crashed
DEFERRED: Final = 7     # queued in the mailbox of an actor that is restarting
HELD_QUARANTINED: Final = 8  # its asset is quarantined: kept raw, not applied

OUTCOMES: Final = ("accepted", "duplicate", "late", "future", "stale", "anomalous", "rejected",
                   "deferred", "quarantined")


# -- rendering bad values -----------------------------------------------------------------
# A rejected value may be anything a sender could encode: nested 1,000 deep, megabytes long,
# or (given in-process) cyclic or with a __repr__ that raises. Error messages, reports and
# logs only ever hold a bounded rendering of it.

SHOWN_CHARS: Final = 60     # the longest rendering of a bad value
SHOWN_DEPTH: Final = 4      # containers nested deeper show as [...] or {...}
_FIELD_CHARS: Final = 80
_REASON_CHARS: Final = 300
_INT_BITS: Final = 64       # wider ints (only Python-made) show as <int of N bits>


class _Full(Exception):
    """The rendering has more than it may show."""


class _Text:
    __slots__ = ("left", "parts")

    def __init__(self, room: int) -> None:
        self.parts: list[str] = []
        self.left = room

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.left -= len(text)
        if self.left < 0:
            raise _Full


def brief(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (ending in ``...`` when cut), looking at
    most ``SHOWN_DEPTH`` containers deep and at only as many items as fit. It never raises
    and its cost does not grow with the value's size or depth."""
    text = _Text(limit)
    try:
        _render(value, SHOWN_DEPTH, text)
    except _Full:
        pass
    except Exception:                    # a __repr__ that raises: say what it was
        return _cut(f"<{type(value).__name__}>", limit)
    return _cut("".join(text.parts), limit)


def plain(value: Any, limit: int = SHOWN_CHARS) -> Any:
    """``value`` itself if it is nil, a bool, a number (ints within 64 bits) or a string of at
    most ``limit`` characters; else its :func:`brief` rendering."""
    return value if _is_plain(value, limit) else brief(value, limit)


def _is_plain(value: Any, limit: int = SHOWN_CHARS) -> bool:
    kind = type(value)
    if kind is str:
        return len(value) <= limit
    return (value is None or kind is bool or kind is float or
            (kind is int and value.bit_length() <= _INT_BITS))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def _render(value: Any, depth: int, out: _Text) -> None:
    kind = type(value)
    if kind is list:
        _items(value, "[", "]", depth, out)
    elif kind is tuple:
        _items(value, "(", ",)" if len(value) == 1 else ")", depth, out)
    elif kind is dict:
        if depth <= 0:
            out.add("{...}" if value else "{}")
            return
        out.add("{")
        for i, (key, item) in enumerate(value.items()):
            if i:
                out.add(", ")
            _render(key, depth - 1, out)
            out.add(": ")
            _render(item, depth - 1, out)
        out.add("}")
    elif kind is str or kind is bytes:
        out.add(repr(value[: out.left + 1]))
    elif kind is bytearray or kind is memoryview:
        out.add(f"{kind.__name__}({bytes(value[: out.left + 1])!r})")
    elif kind is int and value.bit_length() > _INT_BITS:
        out.add(f"<int of {value.bit_length()} bits>")
    elif value is None or kind in (bool, int, float):
        out.add(repr(value))
    elif isinstance(value, tuple) and hasattr(value, "_fields"):    # msgpack's ExtType
        out.add(kind.__name__)
        _items(value, "(", ")", depth, out)
    else:                                # anything else (only Python-made): its own repr
        out.add(_cut(repr(value), out.left + 1))


def _items(items: Iterable[Any], open_: str, close: str, depth: int, out: _Text) -> None:
    if depth <= 0:
        out.add(f"{open_}...{close}")
        return
    out.add(open_)
    for i, item in enumerate(items):
        if i:
            out.add(", ")
        _render(item, depth - 1, out)
    out.add(close)


@dataclass(frozen=True, slots=True)
class SampleError:
    """Why sample ``index`` of a batch was rejected: the field, its value, the reason.

    ``asset_id`` and ``value`` are the values themselves when plain (nil, bool, number, short
    string), else a bounded rendering (see :func:`plain`), so an error is always small and
    safe to print, log, pickle or send as JSON, whatever the sample held."""

    index: int
    asset_id: Any
    field: str
    value: Any
    reason: str

    def __post_init__(self) -> None:
        # the common error (short strings throughout) costs four checks: a batch of rejects
        # makes thousands of these
        asset_id, value, field, reason = self.asset_id, self.value, self.field, self.reason
        if (type(asset_id) is not str or len(asset_id) > SHOWN_CHARS) and not _is_plain(
                asset_id):
            object.__setattr__(self, "asset_id", brief(asset_id))
        if (type(value) is not str or len(value) > SHOWN_CHARS) and not _is_plain(value):
            object.__setattr__(self, "value", brief(value))
        # a field names a signal the sender chose ("signals.<name>"); a reason may quote an
        # exception's message
        if type(field) is not str or len(field) > _FIELD_CHARS:
            object.__setattr__(self, "field", _cut(field, _FIELD_CHARS)
                               if type(field) is str else brief(field))
        if type(reason) is not str or len(reason) > _REASON_CHARS:
            object.__setattr__(self, "reason", _cut(reason, _REASON_CHARS)
                               if type(reason) is str else brief(reason, _REASON_CHARS))

    @classmethod
    def unknown_asset(cls, index: int, asset_id: Any) -> SampleError:
        """The rejection of a sample whose asset the fleet model does not hold."""
        return cls(index, asset_id, "asset_id", asset_id, "unknown asset: not in the fleet model")

    def __str__(self) -> str:
        return (f"sample {self.index} (asset {self.asset_id!r}): {self.field}={self.value!r}: "
                f"{self.reason}")


@dataclass(slots=True)
class IngestReport:
    """Per-outcome counts for one ingested batch; they sum to the batch's size."""

    accepted: int = 0
    duplicate: int = 0
    late: int = 0
    future: int = 0
    stale: int = 0
    anomalous: int = 0
    rejected: int = 0
    deferred: int = 0
    quarantined: int = 0
    errors: list[SampleError] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts().values())

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in OUTCOMES}

    def add_counts(self, counts: list[int]) -> None:
        for code, n in enumerate(counts):
            if n:
                name = OUTCOMES[code]
                setattr(self, name, getattr(self, name) + n)

    def __str__(self) -> str:
        parts = [f"{n} {name}" for name, n in self.counts().items() if n]
        return ", ".join(parts) or "empty batch"
