"""The child process of ``tests/test_crash_recovery.py``: ingest batches until killed.

Run as ``python tests/_crash_child.py sqlite:///path/fleet.db``. It opens a fleet on that
store and a ``VirtualClock``, then ingests batch 0, 1, 2, ... (:func:`make_batch`), moving the
clock to :func:`batch_time` before each. It runs in lockstep with the parent, which decides
where the kill lands; after each line it writes, the child waits for ``go`` on stdin:

* ``in <batch>``: written from a roll-up subscriber, so from *inside* ``ingest``, after the
  batch was committed to the log and before ``ingest`` returns (the subscriber fires when the
  owner's roll-up changed, which is most batches);
* ``ack <batch> <sha256 of the payload> <snapshots taken so far>``: ``ingest`` returned, the
  batch is acknowledged.

Each line goes out in a single ``write``: it is whole or absent. Logs go to stderr. At EOF on
stdin (the parent is gone) the child exits at once.

The parent imports this module for the same model and batches, so both sides agree on
every byte.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from typing import Any

import structlog

from twin import Fleet, FleetModel, Rollup, Sample, VirtualClock
from twin.testing import fleet_dict
from twin.wire import pack_batch

START = 1767225600.0            # 2026-01-01T00:00:00Z
STEP_S = 2.0                    # the clock moves this much before each batch
SNAPSHOT_EVERY_BATCHES = 8
MAX_BATCHES = 100_000           # far more than the parent waits for: it kills the child first
SOURCE = "crash-child"
OWNER = "o0"                    # the roll-up the child subscribes to
SILENT_AFTER = 5                # the "silent" asset reports in batches 0..4 only

# Tags of generated samples: what the sample is, whatever its time turns out to be.
OK = "ok"                       # well-formed, values inside the kind's bounds
ODD = "anomalous"               # well-formed, a value outside the bounds (or NaN)
BAD = "garbage"                 # rejected whatever the time: malformed or unknown asset


def model_dict() -> dict[str, Any]:
    """12 assets (turbines, batteries, chargers) on 4 sites, plus an extra group."""
    return fleet_dict(owners=1, regions=2, sites=2, assets=3, seed=7)


def new_model() -> FleetModel:
    return FleetModel.from_dict(model_dict())


def asset_ids(model: FleetModel) -> list[str]:
    return sorted(model.assets)


def batch_time(k: int) -> float:
    """The fleet's clock when batch ``k`` is ingested."""
    return START + STEP_S * (k + 1)


def _power(model: FleetModel, asset_id: str, k: int, i: int) -> float:
    spec = model.assets[asset_id]
    frac = ((k * 7 + i * 3) % 10) / 10.0
    if spec.kind == "charger":
        return -frac * spec.rated_kw             # chargers draw power: [-1.1, 0.05] x rated
    if spec.kind == "battery":
        return (frac - 0.5) * spec.rated_kw      # [-1.1, 1.1] x rated
    return frac * spec.rated_kw                  # turbines: [-0.05, 1.1] x rated


def _extra(model: FleetModel, asset_id: str, k: int) -> dict[str, Any]:
    """A second signal, every third batch: the reported view is a merge of samples."""
    kind = model.assets[asset_id].kind
    if kind == "turbine":
        return {"wind_speed_ms": float(k % 20)}
    if kind == "battery":
        return {"soc_pct": float(k % 100)}
    return {"session_active": k % 2 == 0}


def _ok_sample(model: FleetModel, k: int, i: int) -> Sample:
    ids = asset_ids(model)
    asset_id = ids[i]
    signals: dict[str, Any] = {"power_kw": _power(model, asset_id, k, i)}
    if k % 3 == 0:
        signals.update(_extra(model, asset_id, k))
    return Sample(asset_id, batch_time(k) - 1.0 - 0.25 * (i % 4), signals, seq=k)


def make_batch(model: FleetModel, k: int) -> list[tuple[Sample, str]]:
    """Batch ``k``: each sample with its tag (``OK``, ``ODD`` or ``BAD``).

    Assets 0..9 report every batch; asset 10 only in batches 0..4 (it goes offline); asset
    11 only ever sends anomalous values (it stays unknown). Mixed in: a repeat of an earlier
    sample (duplicate), an old one (late), anomalous values newer than the newest, device
    times beyond the allowed skew (future) and within it (accepted, making later samples of
    that asset late for a while), replays older than the retention (stale), and garbage
    (unknown asset, unknown signal, NaN time, a non-string asset id).
    """
    ids = asset_ids(model)
    now = batch_time(k)
    out: list[tuple[Sample, str]] = []
    if k >= 1:                                   # the previous batch's sample, again
        out.append((_ok_sample(model, k - 1, k % 10), OK))
    for i in range(10):
        out.append((_ok_sample(model, k, i), OK))
    if k < SILENT_AFTER:
        out.append((_ok_sample(model, k, 10), OK))
    rated = model.assets[ids[11]].rated_kw
    wild = math.nan if k % 4 == 1 else 10.0 * rated * (1 if k % 2 else -1)
    out.append((Sample(ids[11], now - 1.0, {"power_kw": wild}, seq=k), ODD))
    late = ids[(k + 3) % 10]
    out.append((Sample(late, now - 7.3, {"power_kw": 0.0}, seq=k), OK))
    if k % 4 == 0:                               # anomalous, newer than the asset's newest
        odd = ids[k % 7]
        out.append((Sample(odd, now - 0.1, {"power_kw": 50.0 * model.assets[odd].rated_kw}),
                    ODD))
    if k % 5 == 0:                               # far beyond the allowed skew
        out.append((Sample(ids[k % 9], now + 1000.0, {"power_kw": 0.0}), OK))
    if k % 7 == 3:                               # ahead of us, but within the allowed skew
        ahead = ids[k % 10]
        out.append((Sample(ahead, now + 40.0, {"power_kw": _power(model, ahead, k + 1, 0)}),
                    OK))
    if k % 6 == 0:                               # a replay older than the retention horizon
        out.append((Sample(ids[(k + 1) % 10], now - 40 * 86400.0, {"power_kw": 0.0}), OK))
    out.append((Sample("no-such-asset", now - 1.0, {"power_kw": 1.0}), BAD))
    if k % 2 == 0:
        out.append((Sample(ids[k % 10], now - 0.5, {"bogus_signal": 1.0}), BAD))
    if k % 3 == 0:
        out.append((Sample(ids[(k + 2) % 10], math.nan, {"power_kw": 0.0}), BAD))
    if k % 5 == 2:
        out.append((Sample(42, now - 1.0, {"power_kw": 0.0}), BAD))  # type: ignore[arg-type]
    return out


def payload(model: FleetModel, k: int) -> bytes:
    """Batch ``k`` in the wire format, exactly as the child ingests it."""
    return pack_batch([s for s, _ in make_batch(model, k)], SOURCE, batch_time(k))


def _say(line: str) -> None:
    """Tell the parent, then wait until it says ``go`` (or kills this process)."""
    os.write(1, f"{line}\n".encode())
    if sys.stdin.readline().strip() != "go":
        os._exit(3)                              # the parent is gone: do not run on


def main(url: str) -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    model = new_model()
    clock = VirtualClock(START)
    ingesting: list[int] = []                    # the batch inside ingest, if any

    def inside(_rollup: Rollup) -> None:
        if ingesting:
            _say(f"in {ingesting.pop()}")        # once per batch

    with Fleet(model, store=url, clock=clock,
               snapshot_every_batches=SNAPSHOT_EVERY_BATCHES) as fleet:
        fleet.subscribe(OWNER, inside)
        for k in range(MAX_BATCHES):
            fleet.advance(batch_time(k) - clock.now())
            data = payload(model, k)
            ingesting[:] = [k]
            fleet.ingest(data)
            ingesting.clear()
            snapshots = fleet.metrics()["snapshots"]
            _say(f"ack {k} {hashlib.sha256(data).hexdigest()} {snapshots}")


if __name__ == "__main__":
    main(sys.argv[1])
