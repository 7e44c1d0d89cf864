"""What the fleet does with a store: log before acknowledging, hand derived rows to the
writer, snapshot now and then, and restore after a restart (DESIGN decision 4)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import msgpack

from twin.core.samples import ACCEPTED, ANOMALOUS, LATE, Sample
from twin.core.states import Transition
from twin.store.store import Snapshot, Store, StoreBusy

# Outcomes whose samples get a row in twin_samples: clean ones (the newest moves state, late
# ones are history) and anomalous ones (kept raw, flagged by their outcome code). The writer
# process builds the rows and has its own copy of the codes (it does not import twin).
STORED_OUTCOMES = frozenset((ACCEPTED, LATE, ANOMALOUS))


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
        self._appended: tuple[int, bytes, int] | None = None   # offset, payload, size

    def append(self, received_at: float, source: str, payload: bytes, count: int) -> int:
        """Append a batch to the log and commit; returns its offset. Raises
        :class:`StoreBusy` first if the writer is too far behind (at once while the store is
        known to be down: the writer cannot catch up then)."""
        self.store.writer.wait_for_room(0.0 if self.store.down else self.store.busy_timeout_s)
        offset = self.store.append(received_at, source, payload, count)
        self._appended = (offset, payload, count)
        return offset

    def derived(self, offset: int, received_at: float,
                parts: Sequence[tuple[Sequence[Sample], bytes]],
                transitions: Sequence[Transition]) -> None:
        """Send the writer process what it needs to build the rows of a batch: ``parts``
        pairs samples with their outcome codes.

        The common case costs next to nothing here: when the batch just appended went to one
        shard whole (its samples are the payload's, all of them, in order, as
        ``Fleet._run_batch`` hands them over), the payload already logged stands for the
        samples. Otherwise (several shards, samples the wire format rejected, a replay) the
        samples with a row are re-packed."""
        moved = [[t.at, t.asset_id, t.old, t.new, t.reason] for t in transitions]
        appended, self._appended = self._appended, None
        writer = self.store.writer
        if (appended is not None and appended[0] == offset and len(parts) == 1 and
                len(parts[0][0]) == appended[2]):
            writer.put_batch(offset, received_at, appended[1], bytes(parts[0][1]), moved)
        else:
            rows: list[list[Any]] = []
            codes = bytearray()
            for samples, outcomes in parts:
                for sample, code in zip(samples, outcomes, strict=True):
                    if code in STORED_OUTCOMES:
                        rows.append([sample.asset_id, sample.ts, sample.seq, sample.signals])
                        codes.append(code)
            writer.put_rows(offset, received_at, rows, bytes(codes), moved)
        self.last_offset = max(self.last_offset, offset)
        if parts:                         # a batch (timer-driven transitions come without)
            self._batches_since_snapshot += 1

    def snapshot_due(self, now: float) -> bool:
        if self._last_snapshot_at is None:
            self._last_snapshot_at = now
            return False
        return (self._batches_since_snapshot >= self.snapshot_every_batches or
                now - self._last_snapshot_at >= self.snapshot_every_s)

    def capture(self, now: float, model_version: int, shards: list[dict[str, Any]]
                ) -> Snapshot:
        """A snapshot of the shards' rows, at the log offset and command they reflect."""
        state = msgpack.packb({"shards": shards, "last_command": self.last_command},
                              use_bin_type=True)
        return Snapshot(self.last_offset, now, model_version, state)

    def save(self, snapshot: Snapshot) -> None:
        """Write ``snapshot`` once the writer has caught up with it; :class:`StoreBusy` if
        it does not within the store's ``busy_timeout_s``."""
        # derived rows up to this offset must be written first: a restart replays only what
        # comes after the snapshot, and re-deriving older rows would classify them anew
        if not self.store.writer.flush(timeout_s=self.store.busy_timeout_s):
            raise StoreBusy(f"the store's writer did not catch up within "
                            f"{self.store.busy_timeout_s:g}s; snapshot not taken")
        self.store.save_snapshot(snapshot)
        self.postpone(snapshot.taken_at)

    def postpone(self, now: float) -> None:
        """The next snapshot is due a full period (of time or batches) after ``now``."""
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
