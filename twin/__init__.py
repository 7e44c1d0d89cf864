"""twin: an actor-based digital-twin runtime for fleets of distributed energy assets.

>>> from twin import Fleet, FleetModel, Sample, VirtualClock
"""

from supervisors import OnExhausted, Strategy, SupervisionPolicy
from twin._changes import (
    AddAsset,
    AddOwner,
    AddRegion,
    AddSite,
    DecommissionAsset,
    ModelVersion,
    MoveAsset,
    MoveSite,
    change_from_dict,
)
from twin._clock import Clock, RealClock, VirtualClock
from twin._errors import (
    AssetUnavailable,
    FleetClosed,
    IngestError,
    InvalidCommand,
    ModelError,
    ShardDown,
    TwinError,
    UnknownAsset,
    UnknownPath,
)
from twin._fleet import Fleet, PendingChange, Subscription
from twin._kinds import (
    AssetKind,
    Battery,
    Charger,
    KindRegistry,
    Signal,
    Turbine,
    default_kinds,
    register_kind,
)
from twin._model import AssetSpec, Defaults, FleetModel
from twin._rollup import KindRollup, Rollup
from twin._samples import OUTCOMES, IngestReport, Sample, SampleError
from twin._shard import Transition
from twin._store import Store, StoreBusy, StoreUnavailable
from twin._views import AssetView, CommandReceipt

__version__ = "0.1.0"

__all__ = [
    "OUTCOMES",
    "AddAsset",
    "AddOwner",
    "AddRegion",
    "AddSite",
    "AssetKind",
    "AssetSpec",
    "AssetUnavailable",
    "AssetView",
    "Battery",
    "Charger",
    "Clock",
    "CommandReceipt",
    "DecommissionAsset",
    "Defaults",
    "Fleet",
    "FleetClosed",
    "FleetModel",
    "IngestError",
    "IngestReport",
    "InvalidCommand",
    "KindRegistry",
    "KindRollup",
    "ModelError",
    "ModelVersion",
    "MoveAsset",
    "MoveSite",
    "OnExhausted",
    "PendingChange",
    "RealClock",
    "Rollup",
    "Sample",
    "SampleError",
    "ShardDown",
    "Signal",
    "Store",
    "StoreBusy",
    "StoreUnavailable",
    "Strategy",
    "Subscription",
    "SupervisionPolicy",
    "Transition",
    "Turbine",
    "TwinError",
    "UnknownAsset",
    "UnknownPath",
    "VirtualClock",
    "change_from_dict",
    "default_kinds",
    "register_kind",
]
