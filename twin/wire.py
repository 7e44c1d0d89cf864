"""The wire format: compact msgpack batches of samples (see ``docs/wire-format.md``).

Device code and the simulator pack with :func:`pack_batch`; the runtime unpacks with
:func:`unpack_batch`. A batch that cannot be read as a whole (not msgpack, wrong version,
wrong shape) raises :class:`twin.IngestError` and changes nothing; a malformed *sample* is
reported by index, field and value, and its batch-mates are unaffected.

    batch  = [version, source, sent_at, samples]       version: 1
    sample = [asset_id, ts, seq, signals]              signals: {name: number | bool}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from twin.core.errors import IngestError
from twin.core.samples import Sample, SampleError, brief

VERSION: Final = 1
MAX_BATCH_BYTES: Final = 64 * 2**20     # one batch; a bigger payload is refused unread
MAX_DEPTH: Final = 1024                 # msgpack's own nesting limit (its decoder's stack)
_SAMPLE_FIELDS: Final = ("asset_id", "ts", "seq", "signals")


@dataclass(slots=True)
class Batch:
    """A decoded batch: who sent it, when (its clock), its samples and its rejects."""

    source: str
    sent_at: float | None
    samples: list[Sample] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)     # position of each sample in the batch
    errors: list[SampleError] = field(default_factory=list)
    size: int = 0                                        # samples in the batch, good or bad


def pack_batch(samples: Iterable[Any], source: str = "", sent_at: float | None = None
               ) -> bytes:
    """Encode samples as one batch.

    Anything that is not a :class:`Sample`, or that msgpack cannot encode, keeps its place as
    a short description string, which a reader rejects as a malformed sample: the batch keeps
    its size and its indices, and one bad item never makes the whole batch fail.
    """
    rows: list[Any] = [[s.asset_id, s.ts, s.seq, s.signals] if type(s) is Sample
                       else f"not a Sample: {_show(s)}" for s in samples]
    try:
        packed: bytes = msgpack.packb([VERSION, source, sent_at, rows], use_bin_type=True)
    except Exception:                 # not encodable, or nested too deep: row by row
        packed = msgpack.packb([VERSION, source, sent_at, [_encodable(r) for r in rows]],
                               use_bin_type=True)
    return packed


def _encodable(row: Any) -> Any:
    """The row itself if msgpack can encode it; else with each value it cannot encode put as
    its bounded repr (the runtime then rejects that field as it would have rejected the
    value)."""
    try:
        msgpack.packb(row, use_bin_type=True)
        return row
    except Exception:
        pass
    if type(row) is list and len(row) == 4:
        asset_id, ts, seq, signals = row
        if type(signals) is dict:
            signals = {_leaf(k): _leaf(v) for k, v in signals.items()}
        row = [_leaf(asset_id), _leaf(ts), _leaf(seq), _leaf(signals)]
    try:
        msgpack.packb(row, use_bin_type=True)
        return row
    except Exception as error:
        return f"not encodable ({brief(error)}): {brief(row)}"


def _leaf(value: Any) -> Any:
    try:
        msgpack.packb(value, use_bin_type=True)
        return value
    except Exception:
        return brief(value)


def sample_error(index: int, sample: Any) -> SampleError | None:
    """What the wire decoder would reject in ``sample`` (``None`` if nothing), so Sample
    objects given in-process meet the same rules as decoded ones; anything but a Sample is
    rejected."""
    if type(sample) is not Sample:
        try:
            asset_id = getattr(sample, "asset_id", None)
        except Exception:                  # a property that raises: still only this sample
            asset_id = None
        return SampleError(index, asset_id, "sample", type(sample).__name__,
                           "expected a twin.Sample")
    if (type(sample.asset_id) is str and type(sample.signals) is dict and
            (sample.seq is None or type(sample.seq) is int)):
        return None
    return _sample_error(index, [sample.asset_id, sample.ts, sample.seq, sample.signals])


def unpack_batch(payload: bytes | bytearray | memoryview) -> Batch:
    """Decode a batch; raises :class:`IngestError` if the batch as a whole is unreadable."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise IngestError(f"a batch is msgpack bytes, got {type(payload).__name__}")
    if len(payload) > MAX_BATCH_BYTES:
        raise IngestError(f"batch of {len(payload):,} bytes is over the limit of "
                          f"{MAX_BATCH_BYTES:,}; split it")
    try:
        # msgpack bounds what a payload may declare by its length (max_*_len default to it)
        # and its nesting by a fixed stack: nothing here recurses in Python
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=True)
    except msgpack.StackError:
        raise IngestError(f"batch nests arrays or maps more than {MAX_DEPTH} levels deep"
                          ) from None
    except Exception as error:           # msgpack raises several unrelated types
        raise IngestError(f"batch is not valid msgpack ({type(error).__name__}: "
                          f"{str(error)[:200]})") from None
    if not isinstance(raw, list) or len(raw) != 4:
        raise IngestError("batch must be an array [version, source, sent_at, samples], got "
                          f"{_show(raw)}")
    version, source, sent_at, rows = raw
    if version != VERSION or type(version) is not int:
        raise IngestError(f"batch format version {brief(version)} is not supported (this "
                          f"runtime reads version {VERSION})")
    if not isinstance(source, str) or "\x00" in source:
        raise IngestError(f"batch field 'source' must be a string without NUL characters, "
                          f"got {_show(source)}")
    if sent_at is not None and (type(sent_at) not in (int, float) or sent_at - sent_at != 0):
        raise IngestError(f"batch field 'sent_at' must be unix seconds or nil, got "
                          f"{_show(sent_at)}")
    if not isinstance(rows, list):
        raise IngestError(f"batch field 'samples' must be an array, got {_show(rows)}")
    batch = Batch(source, None if sent_at is None else float(sent_at), size=len(rows))
    try:
        # the common case, a clean batch, in one comprehension (ts and signal values are
        # checked by the asset actors, as for Sample objects)
        batch.samples = [Sample(asset_id, ts, signals, seq) for asset_id, ts, seq, signals in rows
                         if type(asset_id) is str and type(signals) is dict and
                         (seq is None or type(seq) is int)]
    except (TypeError, ValueError):
        batch.samples = []                    # a row is not a 4-array: sort them one by one
    if len(batch.samples) == len(rows):
        batch.indices = list(range(len(rows)))
        return batch
    batch.samples = []
    for index, row in enumerate(rows):
        if type(row) is list and len(row) == 4:
            asset_id, ts, seq, signals = row
            if (type(asset_id) is str and type(signals) is dict and
                    (seq is None or type(seq) is int)):
                batch.samples.append(Sample(asset_id, ts, signals, seq))
                batch.indices.append(index)
                continue
        batch.errors.append(_sample_error(index, row))
    return batch


def _sample_error(index: int, row: Any) -> SampleError:
    """Why ``row`` is not a sample; checking one sample can only ever reject that sample."""
    try:
        return _row_error(index, row)
    except Exception as error:
        return SampleError(index, None, "sample", f"<{type(row).__name__}>",
                           f"could not be checked ({type(error).__name__})")


def pack_rows(samples: Iterable[Sample]) -> bytes:
    """Samples already screened (see :func:`unpack_batch`) as compact msgpack rows: how a
    routed part of a batch crosses into a shard host's process."""
    rows = [[s.asset_id, s.ts, s.seq, s.signals] for s in samples]
    try:
        packed: bytes = msgpack.packb(rows, use_bin_type=True)
    except Exception:
        # a signal value msgpack cannot encode (or nested too deep) travels as its bounded
        # repr; the asset actor then rejects that signal as it would have the value itself
        packed = msgpack.packb([_encodable(r) for r in rows], use_bin_type=True)
    return packed


def unpack_rows(packed: bytes) -> list[Sample]:
    return [Sample(asset_id, ts, signals, seq)
            for asset_id, ts, seq, signals in msgpack.unpackb(packed, raw=False,
                                                             strict_map_key=False)]


def _row_error(index: int, row: Any) -> SampleError:
    if type(row) is str and row.startswith(("not a Sample: ", "not encodable")):
        return SampleError(index, None, "sample", row, "expected a twin.Sample the wire "
                           "format can encode (an array [asset_id, ts, seq, signals])")
    if type(row) is not list or len(row) != 4:
        return SampleError(index, None, "sample", _show(row),
                           "expected an array [asset_id, ts, seq, signals]")
    asset_id, _, seq, signals = row
    if type(asset_id) is not str:
        return SampleError(index, _show(asset_id), "asset_id", _show(asset_id),
                           "expected a string")
    if seq is not None and type(seq) is not int:
        return SampleError(index, asset_id, "seq", _show(seq), "expected an integer or nil")
    return SampleError(index, asset_id, "signals", _show(signals),
                       "expected a map of signal name to value")


def _show(value: Any) -> Any:
    """A value fit for an error message: nil, a bool or a number as itself, anything else as
    its bounded repr (:func:`twin.core.samples.brief`: cut to 60 characters, never deep)."""
    kind = type(value)
    if value is None or kind is bool or kind is float or (kind is int and
                                                          value.bit_length() <= 64):
        return value
    return brief(value)


__all__ = ["MAX_BATCH_BYTES", "MAX_DEPTH", "VERSION", "Batch", "pack_batch", "sample_error",
           "unpack_batch"]
