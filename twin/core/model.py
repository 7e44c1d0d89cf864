"""The fleet model: owners → regions → sites → assets, extra groupings, defaults, versions.

Sites have fleet-wide unique ids, so a site keeps its identity (and its place in extra groups)
when it moves to another region or owner. Paths are ``owner``, ``owner/region`` and
``owner/region/site``. The model is versioned in time: :mod:`twin.core.changes` records every
change with its effective time and what is needed to undo it, so any past version can be
rebuilt (:meth:`FleetModel.at`).

One module on purpose, a little over the few hundred lines modules keep to: the hierarchy's
indexes (owners, sites, assets, retired, groups) and the parsing that fills them keep one set
of invariants, which a split would leave for two files to agree on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from twin.core.errors import ModelError, UnknownAsset, UnknownPath
from twin.core.kinds import KindRegistry, default_kinds

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Defaults:
    """Fleet-wide settings; the model's ``defaults`` section overrides them."""

    report_interval_s: float = 60.0
    offline_after_s: float = 180.0
    allowed_skew_s: float = 300.0          # device time may run this far ahead of ours
    retention_s: float = 30 * 86400.0      # older samples are stale replays

    @classmethod
    def from_dict(cls, raw: Any) -> Defaults:
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ModelError(f"defaults: expected an object, got {raw!r}")
        valid = {f.name for f in fields(cls)}
        values: dict[str, float] = {}
        for key, value in raw.items():
            if key not in valid:
                raise ModelError(f"defaults.{key}: unknown setting "
                                 f"(valid: {', '.join(sorted(valid))})")
            values[key] = _positive(f"defaults.{key}", value)
        if "offline_after_s" not in values and "report_interval_s" in values:
            values["offline_after_s"] = 3 * values["report_interval_s"]
        result = cls(**values)
        if result.offline_after_s < result.report_interval_s:
            raise ModelError(f"defaults.offline_after_s={result.offline_after_s:g} is shorter than "
                             f"report_interval_s={result.report_interval_s:g}: every asset would "
                             "flap offline between reports")
        return result


@dataclass(frozen=True, slots=True)
class AssetSpec:
    """What the model expects of one asset (its *expected* view). Immutable; a move makes a
    new spec with another ``site``."""

    id: str
    kind: str
    rated_kw: float
    site: str
    capacity_kwh: float | None = None
    report_interval_s: float = 60.0
    offline_after_s: float = 180.0
    attrs: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def expected(self) -> dict[str, Any]:
        view: dict[str, Any] = {"kind": self.kind, "rated_kw": self.rated_kw}
        if self.capacity_kwh is not None:
            view["capacity_kwh"] = self.capacity_kwh
        view["report_interval_s"] = self.report_interval_s
        view["offline_after_s"] = self.offline_after_s
        view.update(self.attrs)
        return view

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # specs cross into shard processes; a mappingproxy does not pickle, a dict does
        return (_spec, (self.id, self.kind, self.rated_kw, self.site, self.capacity_kwh,
                        self.report_interval_s, self.offline_after_s, dict(self.attrs)))


def _spec(asset_id: str, kind: str, rated_kw: float, site: str, capacity_kwh: float | None,
          report_interval_s: float, offline_after_s: float, attrs: dict[str, Any]) -> AssetSpec:
    return AssetSpec(asset_id, kind, rated_kw, site, capacity_kwh, report_interval_s,
                     offline_after_s, MappingProxyType(attrs) if attrs else _EMPTY)


class SiteNode:
    """A site: where it sits in the hierarchy and the assets it holds (by id, in order)."""

    __slots__ = ("assets", "id", "owner", "region")

    def __init__(self, site_id: str, owner: str, region: str) -> None:
        self.id = site_id
        self.owner = owner
        self.region = region
        self.assets: dict[str, AssetSpec] = {}

    @property
    def path(self) -> str:
        return f"{self.owner}/{self.region}/{self.id}"

    @property
    def region_path(self) -> str:
        return f"{self.owner}/{self.region}"


class FleetModel:
    """The asset model. Build with :meth:`from_dict` or :meth:`load`; change through
    ``Fleet.apply`` so the running fleet follows."""

    def __init__(self, defaults: Defaults, kinds: KindRegistry) -> None:
        self.defaults = defaults
        self.kinds = kinds
        self.owners: dict[str, dict[str, dict[str, SiteNode]]] = {}   # owner → region → site
        self.sites: dict[str, SiteNode] = {}
        self.assets: dict[str, AssetSpec] = {}
        self.retired: dict[str, AssetSpec] = {}
        self.groups: dict[str, tuple[str, ...]] = {}
        self.bounds: Mapping[str, Any] | None = None    # per-kind bound overrides, as given
        self.version = 0
        self.effective_from: float = -math.inf
        self.history: list[Any] = []          # twin.core.changes.ModelVersion, oldest first

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, kinds: KindRegistry | None = None) -> FleetModel:
        if not isinstance(raw, Mapping):
            raise ModelError(f"a fleet model is an object, got {type(raw).__name__}")
        unknown = set(raw) - {"defaults", "owners", "groups", "name"}
        if unknown:
            raise ModelError(f"unknown top-level field {sorted(unknown)[0]!r} "
                             "(valid: defaults, owners, groups, name)")
        defaults = raw.get("defaults")
        kinds = kinds or default_kinds
        if isinstance(defaults, Mapping) and "bounds" in defaults:
            kinds = kinds.with_bounds(defaults["bounds"])
            defaults = {k: v for k, v in defaults.items() if k != "bounds"}
        model = cls(Defaults.from_dict(defaults), kinds)
        if isinstance(raw.get("defaults"), Mapping) and "bounds" in raw["defaults"]:
            model.bounds = raw["defaults"]["bounds"]
        owners = _list(raw.get("owners", []), "owners")
        for o, owner in enumerate(owners):
            where = f"owners[{o}]"
            owner_id = _ident(_obj(owner, where), "id", where)
            model.add_owner(owner_id, where=where)
            for r, region in enumerate(_list(owner.get("regions", []), f"{where}.regions")):
                rwhere = f"{where}.regions[{r}]"
                region_id = _ident(_obj(region, rwhere), "id", rwhere)
                model.add_region(owner_id, region_id, where=rwhere)
                for s, site in enumerate(_list(region.get("sites", []), f"{rwhere}.sites")):
                    swhere = f"{rwhere}.sites[{s}]"
                    site_id = _ident(_obj(site, swhere), "id", swhere)
                    model.add_site(f"{owner_id}/{region_id}", site_id, where=swhere)
                    for a, asset in enumerate(_list(site.get("assets", []), f"{swhere}.assets")):
                        model.add_asset(site_id, asset, where=f"{swhere}.assets[{a}]")
        groups = raw.get("groups", {})
        if not isinstance(groups, Mapping):
            raise ModelError(f"groups: expected an object of name → members, got {groups!r}")
        for name, members in groups.items():
            model.set_group(name, members)
        return model

    @classmethod
    def load(cls, path: str | Path, *, kinds: KindRegistry | None = None) -> FleetModel:
        try:
            raw = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(raw, kinds=kinds)

    def to_dict(self) -> dict[str, Any]:
        """The model as the JSON-able dict :meth:`from_dict` reads (current version)."""
        d = self.defaults
        out: dict[str, Any] = {"defaults": {f.name: getattr(d, f.name) for f in fields(d)},
                               "owners": []}
        if self.bounds is not None:
            out["defaults"]["bounds"] = self.bounds
        for owner_id, regions in self.owners.items():
            regions_out = []
            for region_id, sites in regions.items():
                regions_out.append({"id": region_id, "sites": [
                    {"id": site.id, "assets": [self._asset_dict(a) for a in site.assets.values()]}
                    for site in sites.values()]})
            out["owners"].append({"id": owner_id, "regions": regions_out})
        out["groups"] = {name: list(members) for name, members in self.groups.items()}
        return out

    def _asset_dict(self, spec: AssetSpec) -> dict[str, Any]:
        d: dict[str, Any] = {"id": spec.id, "kind": spec.kind, "rated_kw": spec.rated_kw}
        if spec.capacity_kwh is not None:
            d["capacity_kwh"] = spec.capacity_kwh
        own_interval = spec.report_interval_s != self.defaults.report_interval_s
        if own_interval:
            d["report_interval_s"] = spec.report_interval_s
        # with its own interval, a missing timeout would be derived as 3x that interval
        if own_interval or spec.offline_after_s != self.defaults.offline_after_s:
            d["offline_after_s"] = spec.offline_after_s
        d.update(spec.attrs)
        return d

    # -- structural edits (used by from_dict and by twin.core.changes) -------------------------

    def add_owner(self, owner_id: str, *, where: str = "owner") -> None:
        if owner_id in self.owners:
            raise ModelError(f"{where}: duplicate owner id {owner_id!r}")
        self.owners[owner_id] = {}

    def add_region(self, owner_id: str, region_id: str, *, where: str = "region") -> None:
        regions = self.owners.get(owner_id)
        if regions is None:
            raise UnknownPath(owner_id, f" ({where}: no such owner)")
        if region_id in regions:
            raise ModelError(f"{where}: duplicate region {owner_id}/{region_id}")
        regions[region_id] = {}

    def add_site(self, region_path: str, site_id: str, *, where: str = "site") -> SiteNode:
        owner_id, region_id = self.split_region(region_path)
        if site_id in self.sites:
            raise ModelError(f"{where}: duplicate site id {site_id!r} (site ids are unique "
                             f"fleet-wide; it is already at {self.sites[site_id].path})")
        site = SiteNode(site_id, owner_id, region_id)
        self.owners[owner_id][region_id][site_id] = site
        self.sites[site_id] = site
        return site

    def add_asset(self, site_id: str, raw: Any, *, where: str = "asset") -> AssetSpec:
        site = self.site(site_id)
        spec = self.parse_asset(raw, site.id, where)
        if spec.id in self.assets:
            raise ModelError(f"{where}: duplicate asset id {spec.id!r} "
                             f"(already in site {self.assets[spec.id].site!r})")
        site.assets[spec.id] = spec
        self.assets[spec.id] = spec
        self.retired.pop(spec.id, None)
        return spec

    def parse_asset(self, raw: Any, site_id: str, where: str) -> AssetSpec:
        raw = _obj(raw, where)
        asset_id = _ident(raw, "id", where)
        kind_name = raw.get("kind")
        if not isinstance(kind_name, str):
            raise ModelError(f"{where}.kind: expected a kind name "
                             f"({', '.join(self.kinds.names())}), got {kind_name!r}")
        try:
            kind = self.kinds.get(kind_name)
        except ModelError as exc:
            raise ModelError(f"{where}.kind: {exc}") from None
        known = {"id", "kind", "report_interval_s", "offline_after_s",
                 *kind.fields, *kind.optional_fields}
        for key in raw:
            if key not in known:
                raise ModelError(f"{where}.{key}: unknown field for a {kind_name} asset "
                                 f"{asset_id!r} (valid: {', '.join(sorted(known))})")
        for key in kind.fields:
            if key not in raw:
                raise ModelError(f"{where}: {kind_name} asset {asset_id!r} needs {key!r}")
        rated = _positive(f"{where}.rated_kw", raw["rated_kw"])
        capacity = raw.get("capacity_kwh")
        if capacity is not None:
            capacity = _positive(f"{where}.capacity_kwh", capacity)
        d = self.defaults
        report = _positive(f"{where}.report_interval_s",
                           raw.get("report_interval_s", d.report_interval_s))
        offline_default = (3 * report if "report_interval_s" in raw and
                           "offline_after_s" not in raw else d.offline_after_s)
        offline = _positive(f"{where}.offline_after_s", raw.get("offline_after_s", offline_default))
        if offline < report:
            raise ModelError(f"{where}.offline_after_s={offline:g} is shorter than its "
                             f"report_interval_s={report:g}: asset {asset_id!r} would flap "
                             "offline between reports")
        attrs = {k: raw[k] for k in kind.optional_fields if k in raw}
        return AssetSpec(asset_id, kind_name, rated, site_id, capacity, report, offline,
                         MappingProxyType(attrs) if attrs else _EMPTY)

    def set_group(self, name: Any, members: Any) -> None:
        if not isinstance(name, str) or not name or name.startswith("/") or name.endswith("/"):
            raise ModelError(f"groups: a group name is a non-empty path, got {name!r}")
        if self.has_hierarchy_path(name):
            raise ModelError(f"groups.{name}: the name collides with a path of the hierarchy")
        members = _list(members, f"groups.{name}")
        refs = []
        for m, member in enumerate(members):
            if not isinstance(member, str) or not self.is_member_ref(member):
                raise ModelError(f"groups.{name}[{m}]: {member!r} is neither an asset id nor a "
                                 "path (owner, owner/region, owner/region/site or site id)")
            # a site is kept by id, so it stays in the group when it moves
            refs.append(self.site(member).id if member.count("/") == 2 else member)
        self.groups[name] = tuple(refs)

    # -- lookups ------------------------------------------------------------------------

    def asset(self, asset_id: str) -> AssetSpec:
        spec = self.assets.get(asset_id)
        if spec is None:
            hint = " (decommissioned)" if asset_id in self.retired else ""
            raise UnknownAsset(asset_id, hint)
        return spec

    def site(self, ref: str) -> SiteNode:
        """A site by id or by full path."""
        site = self.sites.get(ref)
        if site is None and ref.count("/") == 2:
            site = self.sites.get(ref.rsplit("/", 1)[1])
            if site is not None and site.path != ref:
                site = None
        if site is None:
            raise UnknownPath(ref, " (no such site)")
        return site

    def split_region(self, region_path: str) -> tuple[str, str]:
        owner_id, _, region_id = region_path.partition("/")
        if not region_id or region_id not in self.owners.get(owner_id, {}):
            raise UnknownPath(region_path, " (no such region; write it as owner/region)")
        return owner_id, region_id

    def has_hierarchy_path(self, path: str) -> bool:
        parts = path.split("/")
        if len(parts) == 1:
            return path in self.owners
        if len(parts) == 2:
            return parts[1] in self.owners.get(parts[0], {})
        if len(parts) == 3:
            return parts[2] in self.sites and self.sites[parts[2]].path == path
        return False

    def is_member_ref(self, ref: str) -> bool:
        return ref in self.assets or ref in self.sites or self.has_hierarchy_path(ref)

    def site_ids_under(self, path: str) -> list[str]:
        parts = path.split("/")
        if len(parts) == 3:
            return [parts[2]]
        regions = self.owners[parts[0]]
        if len(parts) == 2:
            return list(regions[parts[1]])
        return [s for sites in regions.values() for s in sites]

    def node_paths(self) -> list[str]:
        """Every hierarchy path, parents before children."""
        out: list[str] = []
        for owner_id, regions in self.owners.items():
            out.append(owner_id)
            for region_id, sites in regions.items():
                out.append(f"{owner_id}/{region_id}")
                out.extend(site.path for site in sites.values())
        return out

    def group_coverage(self, name: str) -> tuple[frozenset[str], frozenset[str]]:
        """A group's members normalized: (hierarchy paths, asset ids), with nothing counted
        twice: a path under another listed path, or an asset inside a listed path, is dropped."""
        paths: set[str] = set()
        assets: set[str] = set()
        for ref in self.groups[name]:
            if ref in self.sites:
                paths.add(self.sites[ref].path)
            elif self.has_hierarchy_path(ref):
                paths.add(ref)
            elif ref in self.assets:
                assets.add(ref)
            # a member decommissioned since the group was declared no longer counts
        paths = {p for p in paths if not any(_is_under(p, q) for q in paths if q != p)}
        kept = {a for a in assets
                if not any(_is_under(self.sites[self.assets[a].site].path, q) or
                           self.sites[self.assets[a].site].path == q for q in paths)}
        return frozenset(paths), frozenset(kept)

    # -- versions -------------------------------------------------------------------------

    def copy(self) -> FleetModel:
        clone = FleetModel(self.defaults, self.kinds)
        for owner_id, regions in self.owners.items():
            clone.owners[owner_id] = {}
            for region_id, sites in regions.items():
                clone.owners[owner_id][region_id] = {}
                for site in sites.values():
                    node = SiteNode(site.id, site.owner, site.region)
                    node.assets = dict(site.assets)
                    clone.owners[owner_id][region_id][site.id] = node
                    clone.sites[site.id] = node
        clone.assets = dict(self.assets)
        clone.retired = dict(self.retired)
        clone.groups = dict(self.groups)
        clone.bounds = self.bounds
        clone.version = self.version
        clone.effective_from = self.effective_from
        clone.history = list(self.history)
        return clone

    def at(self, when: float) -> FleetModel:
        """The model version that governed at unix time ``when``."""
        past = self.copy()
        while past.history and past.history[-1].effective > when:
            entry = past.history.pop()
            entry.change.revert(past, entry.undo)   # each change knows how to take itself back
        past.version = past.history[-1].version if past.history else 0
        past.effective_from = past.history[-1].effective if past.history else -math.inf
        return past

    def summary(self) -> str:
        return (f"{len(self.owners)} owners, {sum(len(r) for r in self.owners.values())} "
                f"regions, {len(self.sites)} sites, {len(self.assets)} assets, "
                f"{len(self.groups)} groups, version {self.version}")

    def __repr__(self) -> str:
        return f"<FleetModel {self.summary()}>"


def _is_under(path: str, ancestor: str) -> bool:
    return path.startswith(ancestor + "/")


def _obj(raw: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ModelError(f"{where}: expected an object, got {raw!r}")
    return raw


def _list(raw: Any, where: str) -> list[Any]:
    if not isinstance(raw, list | tuple):
        raise ModelError(f"{where}: expected a list, got {raw!r}")
    return list(raw)


def _ident(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value or "/" in value or value != value.strip():
        raise ModelError(f"{where}.{key}: expected a non-empty id without '/' or surrounding "
                         f"spaces, got {value!r}")
    return value


def _positive(where: str, value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
        raise ModelError(f"{where}: expected a positive number, got {value!r}")
    return float(value)
