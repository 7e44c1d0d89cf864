"""twin: an actor-based digital-twin runtime for fleets of distributed energy assets.

>>> from twin import Fleet, FleetModel, Sample, VirtualClock

The public names are loaded on first use (PEP 562), so importing a low layer such as
``twin.core.errors`` (as ``actors`` does) never drags the facade and its runtime in with it:
that is what keeps ``actors`` → ``twin.core`` free of a cycle back through ``twin``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("OnExhausted", "Strategy", "SupervisionPolicy"), "supervisors"),
    **dict.fromkeys(("AddAsset", "AddOwner", "AddRegion", "AddSite", "DecommissionAsset",
                     "ModelVersion", "MoveAsset", "MoveSite", "change_from_dict"),
                    "twin.core.changes"),
    **dict.fromkeys(("Clock", "RealClock", "VirtualClock"), "twin.core.clock"),
    "Transition": "twin.core.states",
    **dict.fromkeys(("AssetUnavailable", "DispatchConflict", "FleetClosed", "IngestError",
                     "InvalidCommand", "ModelError", "ShardDown", "TwinError", "UnknownAsset",
                     "UnknownCommand", "UnknownPath", "VersionConflict"),
                    "twin.core.errors"),
    "Fleet": "twin.fleet.facade",
    "ControlOptions": "twin.fleet.control",
    "Dispatch": "twin.fleet.dispatching",
    **dict.fromkeys(("DispatchReport", "DispatchSpec"), "twin.control.dispatch"),
    "RetryPolicy": "twin.control.retry",
    **dict.fromkeys(("CommandEvent", "CommandRecord"), "twin.control.table"),
    **dict.fromkeys(("CommandTransport", "Delivery", "DeliveryBatch", "RecordingTransport"),
                    "twin.control.transport"),
    "PendingChange": "twin.fleet.changes",
    "Subscription": "twin.fleet.subscriptions",
    **dict.fromkeys(("AssetKind", "Battery", "Charger", "Follow", "KindRegistry", "Signal",
                     "Turbine",
                     "default_kinds", "register_kind"), "twin.core.kinds"),
    **dict.fromkeys(("AssetSpec", "Defaults", "FleetModel"), "twin.core.model"),
    **dict.fromkeys(("KindRollup", "Rollup"), "twin.core.rollup"),
    **dict.fromkeys(("OUTCOMES", "IngestReport", "Sample", "SampleError"), "twin.core.samples"),
    **dict.fromkeys(("Store", "StoreBusy", "StoreUnavailable"), "twin.store.store"),
    **dict.fromkeys(("AssetView", "CommandReceipt"), "twin.core.views"),
}

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
    "CommandEvent",
    "CommandReceipt",
    "CommandRecord",
    "CommandTransport",
    "ControlOptions",
    "DecommissionAsset",
    "Defaults",
    "Delivery",
    "DeliveryBatch",
    "Dispatch",
    "DispatchConflict",
    "DispatchReport",
    "DispatchSpec",
    "Fleet",
    "FleetClosed",
    "FleetModel",
    "Follow",
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
    "RecordingTransport",
    "RetryPolicy",
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
    "UnknownCommand",
    "UnknownPath",
    "VersionConflict",
    "VirtualClock",
    "change_from_dict",
    "default_kinds",
    "register_kind",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'twin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value          # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what a type checker and an IDE see: the same names, imported eagerly
    from supervisors import OnExhausted, Strategy, SupervisionPolicy
    from twin.control.dispatch import DispatchReport, DispatchSpec
    from twin.control.retry import RetryPolicy
    from twin.control.table import CommandEvent, CommandRecord
    from twin.control.transport import (
        CommandTransport,
        Delivery,
        DeliveryBatch,
        RecordingTransport,
    )
    from twin.core.changes import (
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
    from twin.core.clock import Clock, RealClock, VirtualClock
    from twin.core.errors import (
        AssetUnavailable,
        DispatchConflict,
        FleetClosed,
        IngestError,
        InvalidCommand,
        ModelError,
        ShardDown,
        TwinError,
        UnknownAsset,
        UnknownCommand,
        UnknownPath,
        VersionConflict,
    )
    from twin.core.kinds import (
        AssetKind,
        Battery,
        Charger,
        Follow,
        KindRegistry,
        Signal,
        Turbine,
        default_kinds,
        register_kind,
    )
    from twin.core.model import AssetSpec, Defaults, FleetModel
    from twin.core.rollup import KindRollup, Rollup
    from twin.core.samples import OUTCOMES, IngestReport, Sample, SampleError
    from twin.core.states import Transition
    from twin.core.views import AssetView, CommandReceipt
    from twin.fleet.changes import PendingChange
    from twin.fleet.control import ControlOptions
    from twin.fleet.dispatching import Dispatch
    from twin.fleet.facade import Fleet
    from twin.fleet.subscriptions import Subscription
    from twin.store.store import Store, StoreBusy, StoreUnavailable
