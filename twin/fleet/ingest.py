"""The ingest path: a batch from the caller to the shards, through the durable log.

decode (wire bytes, or ``Sample`` objects encoded first when a store keeps them) → screen →
append to the log under the ingest lock only (durable before anything is applied; a refused
batch changes nothing) → under the fleet lock: fire due model changes, route by placement,
apply on the shards (in parallel when they are processes), hand the outcome codes to the
store's writer, count → a snapshot if one is due (written without the fleet lock).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from twin.core.errors import IngestError, ShardDown
from twin.core.samples import IngestReport, Sample
from twin.fleet.changes import ModelChanges
from twin.fleet.core import FleetCore
from twin.fleet.recovery import Snapshots
from twin.runtime.calls import Ingest, IngestRows, ShardCall
from twin.runtime.shard import ShardOutput
from twin.store.store import StoreBusy, StoreUnavailable
from twin.wire import pack_batch, pack_rows, sample_error, unpack_batch

# a batch's samples with their outcome codes, shard by shard (what the store's writer takes)
Parts = list[tuple[list[Sample], bytes]]


class IngestPath:
    """See the module docstring."""

    def __init__(self, core: FleetCore, changes: ModelChanges, snapshots: Snapshots) -> None:
        self.core = core
        self.changes = changes
        self.snapshots = snapshots

    def ingest(self, samples: Iterable[Sample] | bytes, source: str) -> IngestReport:
        core = self.core
        report = IngestReport()
        payload, batch, given_indices, source = self._decode(samples, source, report)
        size = len(batch) if given_indices is None else report.rejected + len(batch)
        clean, indices = (batch, None) if given_indices is not None else _screen(batch, report)
        if given_indices is not None:
            indices = ([given_indices[i] for i in indices] if indices is not None
                       else given_indices)
        with core.ingest_lock:             # batches are applied in the order they are logged
            core.check_open()
            now = core.clock.now()
            offset = 0
            if core.persist is not None:
                assert payload is not None
                try:
                    # durable before anything is applied: a refused batch changes nothing
                    offset = core.persist.append(now, source, payload, size)
                except (StoreBusy, StoreUnavailable):
                    with core.view_lock:
                        core.counters["batches_refused"] += 1
                    raise
            with core.lock:
                core.check_open()
                self.changes.fire_scheduled(now)
                parts = self.run_batch(now, clean, indices, report)
                if core.persist is not None:
                    core.persist.derived(offset, now, parts, core.unsaved)
                    core.unsaved = []
                with core.view_lock:
                    core.counters["batches"] += 1
                    core.counters["batch_bytes"] += len(payload) if payload is not None else 0
                    for name, n in report.counts().items():
                        core.counters[f"samples_{name}"] += n
                snapshot = self.snapshots.due(now)
            if snapshot is not None:
                self.snapshots.save_due(snapshot)     # waits on the store: not under the lock
        return report

    def _decode(self, samples: Iterable[Sample] | bytes, source: str, report: IngestReport
                ) -> tuple[bytes | None, list[Any], list[int] | None, str]:
        """(payload to log, samples, their indices in the batch if decoded, source)."""
        if isinstance(samples, str | Mapping):
            raise IngestError(f"a batch is msgpack bytes or a list of Sample objects, got "
                              f"{type(samples).__name__}")
        if isinstance(samples, bytes | bytearray | memoryview):
            payload: bytes | None = bytes(samples)
        else:
            batch = samples if isinstance(samples, list) else list(samples)
            if self.core.persist is None:
                return None, batch, None, source
            # log exactly what will be applied: encode, then apply the decoded batch, so that
            # a replay after a restart sees the very same samples
            payload = pack_batch(batch, source, self.core.clock.now())
        assert payload is not None
        decoded = unpack_batch(payload)
        report.rejected = len(decoded.errors)
        report.errors.extend(decoded.errors)
        return payload, decoded.samples, decoded.indices, decoded.source or source

    def run_batch(self, now: float, clean: list[Sample], indices: list[int] | None,
                  report: IngestReport) -> Parts:
        """Hand a screened batch to the shards (under the fleet lock); returns its samples
        with their outcome codes (shard by shard) when a store wants them."""
        core = self.core
        storing = core.persist is not None
        if not core.hosting.embedded:
            return self._run_parallel(now, clean, indices, report)
        parts: Parts = []
        if len(core.shards) == 1:          # the shard rejects unknown assets itself
            out = core.shards[0].call(Ingest(now, clean, indices, storing))
            core.absorb(out, report)
            parts.append((clean, bytes(out.outcomes or b"")))
            return parts
        for index, (part, part_indices) in core.placement.route(
                core.model, clean, indices, report).items():
            out = core.shards[index].call(Ingest(now, part, part_indices, storing))
            core.absorb(out, report)
            parts.append((part, bytes(out.outcomes or b"")))
        return parts

    def _run_parallel(self, now: float, clean: list[Sample], indices: list[int] | None,
                      report: IngestReport) -> Parts:
        """:meth:`run_batch` over shard processes: every shard gets its part (msgpack rows)
        at once and they work in parallel. The part of a shard that is down is held: with a
        store it is in the log and applied when the shard is back (``deferred``), without
        one it is rejected."""
        core = self.core
        storing = core.persist is not None
        calls: list[tuple[int, ShardCall[ShardOutput]]] = []
        sent: list[tuple[int, list[Sample], list[int]]] = []
        for index, (part, part_indices) in core.placement.route(
                core.model, clean, indices, report).items():
            if index in core.down:
                core.hold(index, part, part_indices, report)
                continue
            calls.append((index, IngestRows(now, pack_rows(part), part_indices, storing)))
            sent.append((index, part, part_indices))
        parts: Parts = []
        for (index, part, part_indices), out in zip(
                sent, core.hosting.call_many(calls, return_errors=True), strict=True):
            if isinstance(out, ShardDown):
                core.mark_down(index, out.reason or out.status)
                core.hold(index, part, part_indices, report)
            elif isinstance(out, BaseException):
                raise out
            else:
                core.absorb(out, report)
                parts.append((part, bytes(out.outcomes or b"")))
        return parts


def _screen(batch: list[Any], report: IngestReport) -> tuple[list[Sample], list[int] | None]:
    """Sample objects meet the wire format's rules too (see :func:`twin.wire.sample_error`),
    so a fleet applies the same samples with a store or without one."""
    if all(type(s) is Sample and type(s.asset_id) is str and type(s.signals) is dict and
           (s.seq is None or type(s.seq) is int) for s in batch):
        return batch, None
    clean: list[Sample] = []
    indices: list[int] = []
    for i, s in enumerate(batch):
        error = sample_error(i, s)
        if error is None:
            clean.append(s)
            indices.append(i)
        else:
            report.rejected += 1
            report.errors.append(error)
    return clean, indices
