"""Changes to the fleet model in time: ``fleet.apply(change, effective=ts)``.

Each change validates against the current model, applies, and leaves a :class:`ModelVersion`
holding what is needed to undo it, so :meth:`FleetModel.at` can rebuild any past version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from twin.core.errors import ModelError, UnknownAsset
from twin.core.model import AssetSpec, FleetModel


def _check_fields(change: object) -> None:
    """Every field of a change but ``AddAsset.asset`` is a non-empty string."""
    for name in change.__dataclass_fields__:  # type: ignore[attr-defined]
        value = getattr(change, name)
        if name != "asset" or not isinstance(change, AddAsset):
            if not isinstance(value, str) or not value:
                raise ModelError(f"{type(change).__name__}.{name}: expected a non-empty "
                                 f"string, got {value!r}")
        elif not isinstance(value, Mapping):
            raise ModelError(f"AddAsset.asset: expected an asset object, got {value!r}")


@dataclass(frozen=True, slots=True)
class AddOwner:
    owner: str

    def __post_init__(self) -> None:
        _check_fields(self)

    def apply(self, model: FleetModel) -> Any:
        model.add_owner(_check_id(self.owner, "owner"), where="AddOwner")
        return None

    def revert(self, model: FleetModel, undo: Any) -> None:
        del model.owners[self.owner]


@dataclass(frozen=True, slots=True)
class AddRegion:
    owner: str
    region: str

    def __post_init__(self) -> None:
        _check_fields(self)

    def apply(self, model: FleetModel) -> Any:
        model.add_region(self.owner, _check_id(self.region, "region"), where="AddRegion")
        return None

    def revert(self, model: FleetModel, undo: Any) -> None:
        del model.owners[self.owner][self.region]


@dataclass(frozen=True, slots=True)
class AddSite:
    region: str          # "owner/region"
    site: str

    def __post_init__(self) -> None:
        _check_fields(self)

    def apply(self, model: FleetModel) -> Any:
        model.add_site(self.region, _check_id(self.site, "site"), where="AddSite")
        return None

    def revert(self, model: FleetModel, undo: Any) -> None:
        site = model.sites.pop(self.site)
        del model.owners[site.owner][site.region][site.id]


@dataclass(frozen=True, slots=True)
class AddAsset:
    site: str            # site id or path
    asset: Mapping[str, Any] = field(hash=False)

    def __post_init__(self) -> None:
        _check_fields(self)

    def apply(self, model: FleetModel) -> Any:
        return model.add_asset(model.site(self.site).id, self.asset, where="AddAsset.asset")

    def revert(self, model: FleetModel, undo: Any) -> None:
        spec: AssetSpec = undo
        del model.sites[spec.site].assets[spec.id]
        del model.assets[spec.id]


@dataclass(frozen=True, slots=True)
class DecommissionAsset:
    asset: str

    def __post_init__(self) -> None:
        _check_fields(self)

    def apply(self, model: FleetModel) -> Any:
        spec = model.asset(self.asset)
        del model.sites[spec.site].assets[spec.id]
        del model.assets[spec.id]
        model.retired[spec.id] = spec
        return spec

    def revert(self, model: FleetModel, undo: Any) -> None:
        spec: AssetSpec = undo
        model.retired.pop(spec.id, None)
        model.sites[spec.site].assets[spec.id] = spec
        model.assets[spec.id] = spec


@dataclass(frozen=True, slots=True)
class MoveAsset:
    asset: str
    to_site: str

    def __post_init__(self) -> None:
        _check_fields(self)

    def apply(self, model: FleetModel) -> Any:
        spec = model.asset(self.asset)
        target = model.site(self.to_site)
        if target.id == spec.site:
            raise ModelError(f"MoveAsset: asset {spec.id!r} is already in site {target.id!r}")
        moved = replace(spec, site=target.id)
        del model.sites[spec.site].assets[spec.id]
        target.assets[spec.id] = moved
        model.assets[spec.id] = moved
        return spec.site

    def revert(self, model: FleetModel, undo: Any) -> None:
        spec = model.assets[self.asset]
        back = replace(spec, site=undo)
        del model.sites[spec.site].assets[spec.id]
        model.sites[back.site].assets[spec.id] = back
        model.assets[spec.id] = back


@dataclass(frozen=True, slots=True)
class MoveSite:
    site: str
    to_region: str       # "owner/region", possibly of another owner

    def __post_init__(self) -> None:
        _check_fields(self)

    def apply(self, model: FleetModel) -> Any:
        site = model.site(self.site)
        owner_id, region_id = model.split_region(self.to_region)
        if (owner_id, region_id) == (site.owner, site.region):
            raise ModelError(f"MoveSite: site {site.id!r} is already in {self.to_region}")
        previous = (site.id, site.region_path)     # undo by id: the path changes with the move
        del model.owners[site.owner][site.region][site.id]
        site.owner, site.region = owner_id, region_id
        model.owners[owner_id][region_id][site.id] = site
        return previous

    def revert(self, model: FleetModel, undo: Any) -> None:
        site_id, region_path = undo
        site = model.sites[site_id]
        owner_id, region_id = region_path.split("/", 1)
        del model.owners[site.owner][site.region][site.id]
        site.owner, site.region = owner_id, region_id
        model.owners[owner_id][region_id][site.id] = site


Change = AddOwner | AddRegion | AddSite | AddAsset | DecommissionAsset | MoveAsset | MoveSite

_BY_OP: dict[str, type[Any]] = {
    "add_owner": AddOwner, "add_region": AddRegion, "add_site": AddSite,
    "add_asset": AddAsset, "decommission_asset": DecommissionAsset,
    "move_asset": MoveAsset, "move_site": MoveSite,
}


def change_to_dict(change: Change) -> dict[str, Any]:
    """The JSON form :func:`change_from_dict` reads."""
    op = next(name for name, cls in _BY_OP.items() if isinstance(change, cls))
    out: dict[str, Any] = {"op": op}
    for name in change.__dataclass_fields__:
        value = getattr(change, name)
        out[name] = dict(value) if isinstance(value, Mapping) else value
    return out


def change_from_dict(raw: Mapping[str, Any]) -> Change:
    """A change from JSON, e.g. ``{"op": "move_asset", "asset": "t-01", "to_site": "beta"}``."""
    if not isinstance(raw, Mapping) or "op" not in raw:
        raise ModelError(f"a change is an object with an 'op' ({', '.join(_BY_OP)}), got {raw!r}")
    cls = _BY_OP.get(raw["op"])
    if cls is None:
        raise ModelError(f"change op {raw['op']!r} is unknown (valid: {', '.join(_BY_OP)})")
    args = {k: v for k, v in raw.items() if k != "op"}
    try:
        change: Change = cls(**args)
    except TypeError as exc:
        raise ModelError(f"change {raw['op']!r}: {exc}") from None
    return change


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One entry of the model's history."""

    version: int
    effective: float
    recorded_at: float
    change: Change
    undo: Any = field(compare=False, repr=False)


def apply_change(model: FleetModel, change: Change, effective: float, recorded_at: float
                 ) -> ModelVersion:
    """Apply ``change`` to ``model`` (all or nothing) and append it to the history."""
    if effective < model.effective_from:
        raise ModelError(f"change effective at {effective:.3f} is earlier than the latest recorded "
                         f"version ({model.effective_from:.3f}); history is append-only")
    if not isinstance(change, Change):
        raise ModelError(f"not a model change: {change!r}")
    undo_info = change.apply(model)
    model.version += 1
    model.effective_from = effective
    entry = ModelVersion(model.version, effective, recorded_at, change, undo_info)
    model.history.append(entry)
    return entry


def undo(model: FleetModel, entry: ModelVersion) -> None:
    """Revert ``entry`` on ``model`` (used to rebuild past versions)."""
    entry.change.revert(model, entry.undo)


def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise ModelError(f"{what}: expected a non-empty id without '/', got {value!r}")
    return value


__all__ = ["AddAsset", "AddOwner", "AddRegion", "AddSite", "Change", "DecommissionAsset",
           "ModelVersion", "MoveAsset", "MoveSite", "UnknownAsset", "apply_change",
           "change_from_dict", "change_to_dict", "undo"]
