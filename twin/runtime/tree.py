"""The roll-up tree above the sites: group actors for sites, regions, owners and extra
groups, wired from the model and fed by the shards' leaf summaries.

It lives beside the fleet facade, so every roll-up query is a dictionary lookup and a cached
snapshot: O(1), never a recount. Rewiring after a model change compares each node's parents
with what the model now says and moves only what differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from actors import Kernel
from actors.groups import GroupActor, LeafSummary, RemoveChild
from twin.core.errors import UnknownPath
from twin.core.model import FleetModel
from twin.core.rollup import Rollup


def owner_key(owner: str) -> str:
    return f"owner:{owner}"


def region_key(region_path: str) -> str:
    return f"region:{region_path}"


def site_node_key(site_id: str) -> str:
    return f"sitenode:{site_id}"


def group_key(name: str) -> str:
    return f"group:{name}"


class RollupTree:
    """Group actors for every node of the model, on their own kernel."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.kernel = Kernel()
        self._clock = clock
        self.nodes: dict[str, GroupActor] = {}          # node key → actor
        self.by_path: dict[str, GroupActor] = {}        # path or group name → actor
        self.leaf_target: dict[str, GroupActor] = {}    # leaf key → the node it feeds
        self.changed: set[GroupActor] = set()

    # -- wiring ---------------------------------------------------------------------------

    def _node(self, key: str, path: str, level: str) -> GroupActor:
        node = self.nodes.get(key)
        if node is None:
            node = GroupActor(key, path, level, self.kernel, self._on_change)
            node.as_of = self._clock()
            node.supervisor = _Fatal()
            self.nodes[key] = node
            self.changed.add(node)
        return node

    def wire(self, model: FleetModel, partial_leaves: Iterable[tuple[str, str]]) -> None:
        """Make the tree match ``model``: create missing nodes, move parent links.

        ``partial_leaves`` are (leaf key, group name) pairs of the shards' direct-member tallies.
        """
        desired: dict[str, list[GroupActor]] = {}
        self.by_path = {}
        for owner_id, regions in model.owners.items():
            owner = self._node(owner_key(owner_id), owner_id, "owner")
            desired[owner.key] = []
            self.by_path[owner_id] = owner
            for region_id, sites in regions.items():
                path = f"{owner_id}/{region_id}"
                region = self._node(region_key(path), path, "region")
                desired[region.key] = [owner]
                self.by_path[path] = region
                for site in sites.values():
                    node = self._node(site_node_key(site.id), site.path, "site")
                    node.path = site.path
                    node._snapshot = None
                    desired[node.key] = [region]
                    self.by_path[site.path] = node
                    self.leaf_target[f"site:{site.id}"] = node
        for name in model.groups:
            group = self._node(group_key(name), name, "group")
            desired[group.key] = []
            self.by_path[name] = group
            paths, _ = model.group_coverage(name)
            for path in sorted(paths):
                desired[self.by_path[path].key].append(group)
        for leaf, name in partial_leaves:
            self.leaf_target[leaf] = self.nodes[group_key(name)]
        for key, node in self.nodes.items():
            self._set_parents(node, desired.get(key, []))
        self.kernel.run()

    def _set_parents(self, node: GroupActor, parents: list[GroupActor]) -> None:
        if node.parents == parents:
            return
        for old in node.parents:
            if old not in parents:
                self.kernel.tell(old, RemoveChild(node.key))
        added = any(p not in node.parents for p in parents)
        node.parents = list(parents)
        if added:
            node.request_full_flush()

    # -- feeding and reading ----------------------------------------------------------------

    def absorb(self, summaries: Iterable[LeafSummary]) -> None:
        for summary in summaries:
            node = self.leaf_target.get(summary.key)
            if node is not None:
                self.kernel.tell(node, summary)
        self.kernel.run()

    def forget_leaves(self, keys: Iterable[str]) -> None:
        """Drop what these leaves last said (their shard went down, or came back with its
        summary versions starting over), so their next summaries are taken as new."""
        for key in keys:
            node = self.leaf_target.get(key)
            if node is not None:
                self.kernel.tell(node, RemoveChild(key))
        self.kernel.run()

    def set_not_following(self, asset_id: str, paths: Iterable[str], on: bool) -> None:
        """Mark (or clear) an asset as not following its setpoint in the nodes at ``paths``
        (its site, region, owner and the groups that cover it)."""
        for path in paths:
            node = self.by_path.get(path)
            if node is None:
                continue
            flagged = node.not_following
            if on == (asset_id in flagged):
                continue
            if on:
                flagged.add(asset_id)
            else:
                flagged.discard(asset_id)
            node._snapshot = None
            self._on_change(node)

    def _on_change(self, node: GroupActor) -> None:
        node.as_of = self._clock()
        self.changed.add(node)

    def take_changed(self) -> set[GroupActor]:
        changed, self.changed = self.changed, set()
        return changed

    def lookup(self, path: str) -> GroupActor:
        node = self.by_path.get(path)
        if node is None:
            raise UnknownPath(path, _hint(path, self.by_path))
        return node

    def top_level(self) -> list[Rollup]:
        """The owners' roll-ups: together they count every asset once."""
        return [node.snapshot() for node in self.nodes.values() if node.level == "owner"]

    def paths(self, level: str | None = None) -> list[str]:
        return [p for p, n in self.by_path.items() if level is None or n.level == level]


class _Fatal:
    """Group actors handle only their own protocol; a failure there is a bug in twin."""

    def child_failed(self, child: object, message: object, error: BaseException) -> None:
        raise RuntimeError(f"roll-up actor {child} failed on {message!r}") from error


def _hint(path: str, known: dict[str, GroupActor]) -> str:
    head = path.split("/", 1)[0]
    close = sorted(p for p in known if p.split("/", 1)[0] == head)[:5]
    if close:
        return f" (did you mean one of: {', '.join(close)})"
    return f" (owners and groups: {', '.join(sorted(p for p in known if '/' not in p)[:8])})"
