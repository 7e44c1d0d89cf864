"""What the fleet does with a store: log before acknowledging, hand derived rows to the
writer, snapshot now and then, and restore after a restart (DESIGN decision 4)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import msgpack

from twin._samples import ANOMALOUS, LATE, Sample
from twin._shard import Transition
from twin._store import Snapshot, Store

# Outcomes whose samples get a row in twin_samples: clean ones (the newest moves state, late
# ones are history) and anomalous ones (kept raw, flagged by their outcome code).
STORED_OUTCOMES = frozenset((0, LATE, ANOMALOUS))


class Persistence:
    """The fleet's side of a :class:`Store`."""

    def __init__(self, store: Store, snapshot_every_s: float, snapshot_every_batches: int
                 ) -> None:
        self.store = store
        self.snapshot_every_s = snapshot_every_s
        self.snapshot_every_batches = snapshot_every_batches
        self.last_offset = 0               # newest log offset reflected in the fleet's state
        self.last_command = 0              # newest command id reflected in the fleet's state
        self._last_snapshot_at: float | None = None
        self._batches_since_snapshot = 0

    def append(self, received_at: float, source: str, payload: bytes, count: int) -> int:
        """Append a batch to the log and commit; returns its offset. Raises
        :class:`StoreBusy` first if the writer is too far behind."""
        self.store.writer.wait_for_room(self.store.busy_timeout_s)
        return self.store.append(received_at, source, payload, count)

    def derived(self, offset: int, received_at: float,
                parts: Sequence[tuple[Sequence[Sample], bytes]],
                transitions: Sequence[Transition]) -> None:
        """Queue the rows a batch produced: ``parts`` pairs samples with their outcome codes
        (the rows are built by the writer thread, off the hot path)."""
        rows = _SampleRows(offset, received_at, parts)
        self.store.writer.put(offset, rows, rows.count(), [
            (offset, t.at, t.asset_id, t.old, t.new, t.reason) for t in transitions])
        self.last_offset = max(self.last_offset, offset)
        if parts:                         # a batch (timer-driven transitions come without)
            self._batches_since_snapshot += 1

    def snapshot_due(self, now: float) -> bool:
        if self._last_snapshot_at is None:
            self._last_snapshot_at = now
            return False
        return (self._batches_since_snapshot >= self.snapshot_every_batches or
                now - self._last_snapshot_at >= self.snapshot_every_s)

    def save_snapshot(self, now: float, model_version: int, shards: list[dict[str, Any]]
                      ) -> None:
        # derived rows up to this offset must be written first: a restart replays only what
        # comes after the snapshot, and re-deriving older rows would classify them anew
        self.store.writer.flush()
        state = msgpack.packb({"shards": shards, "last_command": self.last_command},
                               use_bin_type=True)
        self.store.save_snapshot(Snapshot(self.last_offset, now, model_version, state))
        self._last_snapshot_at = now
        self._batches_since_snapshot = 0

    @staticmethod
    def snapshot_rows(snapshot: Snapshot) -> tuple[dict[str, Any], int]:
        """All actor rows of a snapshot, merged over its shards (placement may differ now),
        and the id of the newest command it reflects."""
        raw = msgpack.unpackb(snapshot.state, raw=False, strict_map_key=False)
        merged: dict[str, Any] = {}
        for rows in raw["shards"]:
            merged.update(rows)
        return merged, int(raw.get("last_command", 0))

    def record_command(self, at: float, asset_id: str, desired: dict[str, Any]) -> None:
        self.last_command = self.store.record_command(at, asset_id, self.last_offset,
                                                      json.dumps(desired, sort_keys=True))

    def close(self) -> None:
        self.store.close()

    def record_change(self, version: int, effective: float, recorded_at: float,
                      change: dict[str, Any], scheduled_id: int | None = None) -> None:
        self.store.record_model_version(version, effective, recorded_at, self.last_offset,
                                        json.dumps(change, sort_keys=True), scheduled_id)

    def schedule(self, effective: float, change: dict[str, Any]) -> int:
        return self.store.schedule_change(effective, json.dumps(change, sort_keys=True))


def _pack(values: dict[str, Any]) -> bytes | None:
    if not values:
        return None
    packed: bytes = msgpack.packb(values, use_bin_type=True, default=repr)
    return packed


class _SampleRows:
    """Rows for twin_samples from one batch, built when the writer thread iterates them."""

    def __init__(self, offset: int, received_at: float,
                 parts: Sequence[tuple[Sequence[Sample], bytes]]) -> None:
        self._offset = offset
        self._received_at = received_at
        self._parts = parts

    def count(self) -> int:
        return sum(1 for _, outcomes in self._parts for code in outcomes
                   if code in STORED_OUTCOMES)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        offset, received_at = self._offset, self._received_at
        stored = STORED_OUTCOMES
        for samples, outcomes in self._parts:
            for sample, code in zip(samples, outcomes, strict=True):
                if code in stored:
                    signals = sample.signals
                    power = signals.get("power_kw")
                    if len(signals) == 1 and power is not None:
                        others = None                     # the common case: no blob to pack
                    else:
                        others = _pack({k: v for k, v in signals.items() if k != "power_kw"})
                    if power is not None and type(power) is not float:
                        power = float(power) if type(power) is int else None
                    yield (sample.ts, sample.asset_id, received_at, int(code == ANOMALOUS), code,
                           offset, power, others)
