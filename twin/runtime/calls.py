"""The calls a shard answers, as typed values: one frozen class per :class:`Shard` method.

A call crosses into a shard host's process as it is (pickled by Thespian) and runs there with
:meth:`ShardCall.run`; its result type is the class's type parameter, so the facade's typed
client (:class:`twin.hosting.system.ShardClient`) is checked by mypy end to end, and nothing
is dispatched by a method's name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from twin.core.model import AssetSpec
from twin.core.samples import Sample
from twin.runtime.shard import ControlInputs, Shard, ShardOutput

T_co = TypeVar("T_co", covariant=True)


class ShardCall(Generic[T_co]):
    """A call to one shard; :meth:`run` applies it."""

    __slots__ = ()

    def run(self, shard: Shard) -> T_co:
        raise TypeError(f"{type(self).__name__} does not say how to run")


@dataclass(frozen=True, slots=True)
class AddSites(ShardCall[None]):
    site_ids: tuple[str, ...]

    def run(self, shard: Shard) -> None:
        for site_id in self.site_ids:
            shard.add_site(site_id)


@dataclass(frozen=True, slots=True)
class AddAssets(ShardCall[None]):
    specs: tuple[AssetSpec, ...]
    direct_groups: Mapping[str, tuple[str, ...]]

    def run(self, shard: Shard) -> None:
        shard.add_assets(self.specs, self.direct_groups)


@dataclass(frozen=True, slots=True)
class Ingest(ShardCall[ShardOutput]):
    """Sample objects, as an embedded shard takes them (nothing crosses a process)."""

    now: float
    samples: Sequence[Sample]
    indices: Sequence[int] | None
    want_outcomes: bool

    def run(self, shard: Shard) -> ShardOutput:
        return shard.ingest(self.now, self.samples, self.indices, self.want_outcomes)


@dataclass(frozen=True, slots=True)
class IngestRows(ShardCall[ShardOutput]):
    """Samples packed by :func:`twin.wire.pack_rows`: how a batch crosses a process."""

    now: float
    rows: bytes
    indices: Sequence[int] | None
    want_outcomes: bool

    def run(self, shard: Shard) -> ShardOutput:
        return shard.ingest_rows(self.now, self.rows, self.indices, self.want_outcomes)


@dataclass(frozen=True, slots=True)
class Replay(ShardCall[ShardOutput]):
    batches: tuple[tuple[float, bytes], ...]

    def run(self, shard: Shard) -> ShardOutput:
        return shard.replay(self.batches)


@dataclass(frozen=True, slots=True)
class Tick(ShardCall[ShardOutput]):
    now: float

    def run(self, shard: Shard) -> ShardOutput:
        return shard.tick(self.now)


@dataclass(frozen=True, slots=True)
class Collect(ShardCall[ShardOutput]):
    full: bool = False

    def run(self, shard: Shard) -> ShardOutput:
        return shard.collect(self.full)


@dataclass(frozen=True, slots=True)
class Command(ShardCall[ShardOutput]):
    now: float
    asset_id: str
    payload: Mapping[str, Any]

    def run(self, shard: Shard) -> ShardOutput:
        return shard.command(self.now, self.asset_id, self.payload)


@dataclass(frozen=True, slots=True)
class ControlInputsOf(ShardCall[ControlInputs | None]):
    key: str
    asset_ids: Sequence[str] | None
    signals: Sequence[str] | None
    slow: tuple[int, int] | None = None

    def run(self, shard: Shard) -> ControlInputs | None:
        return shard.control_inputs(self.key, self.asset_ids, self.signals, self.slow)


@dataclass(frozen=True, slots=True)
class ForgetWatch(ShardCall[None]):
    key: str

    def run(self, shard: Shard) -> None:
        shard.forget_watch(self.key)


@dataclass(frozen=True, slots=True)
class RestoreDesired(ShardCall[None]):
    asset_id: str
    desired: Mapping[str, Any]

    def run(self, shard: Shard) -> None:
        shard.restore_desired(self.asset_id, self.desired)


@dataclass(frozen=True, slots=True)
class InjectFault(ShardCall[ShardOutput]):
    now: float
    asset_id: str
    reason: str

    def run(self, shard: Shard) -> ShardOutput:
        return shard.inject_fault(self.now, self.asset_id, self.reason)


@dataclass(frozen=True, slots=True)
class Release(ShardCall[ShardOutput]):
    now: float
    asset_id: str

    def run(self, shard: Shard) -> ShardOutput:
        return shard.release(self.now, self.asset_id)


@dataclass(frozen=True, slots=True)
class AssetViewOf(ShardCall[dict[str, Any]]):
    asset_id: str

    def run(self, shard: Shard) -> dict[str, Any]:
        return shard.asset_view(self.asset_id)


@dataclass(frozen=True, slots=True)
class Decommission(ShardCall[ShardOutput]):
    now: float
    asset_id: str

    def run(self, shard: Shard) -> ShardOutput:
        return shard.decommission(self.now, self.asset_id)


@dataclass(frozen=True, slots=True)
class MoveLocal(ShardCall[ShardOutput]):
    now: float
    spec: AssetSpec
    direct_groups: tuple[str, ...]

    def run(self, shard: Shard) -> ShardOutput:
        return shard.move_local(self.now, self.spec, self.direct_groups)


@dataclass(frozen=True, slots=True)
class ExportAsset(ShardCall[ShardOutput]):
    now: float
    asset_id: str

    def run(self, shard: Shard) -> ShardOutput:
        return shard.export_asset(self.now, self.asset_id)


@dataclass(frozen=True, slots=True)
class ImportAsset(ShardCall[ShardOutput]):
    now: float
    spec: AssetSpec
    saved: Sequence[Any]
    direct_groups: tuple[str, ...]

    def run(self, shard: Shard) -> ShardOutput:
        return shard.import_asset(self.now, self.spec, self.saved, self.direct_groups)


@dataclass(frozen=True, slots=True)
class TakeSnapshot(ShardCall[dict[str, Any]]):
    def run(self, shard: Shard) -> dict[str, Any]:
        return shard.snapshot()


@dataclass(frozen=True, slots=True)
class Restore(ShardCall[ShardOutput]):
    now: float
    rows: Mapping[str, Any]

    def run(self, shard: Shard) -> ShardOutput:
        return shard.restore(self.now, self.rows)


@dataclass(frozen=True, slots=True)
class Metrics(ShardCall[dict[str, Any]]):
    def run(self, shard: Shard) -> dict[str, Any]:
        return shard.metrics()
