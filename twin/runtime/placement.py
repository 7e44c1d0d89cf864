"""Placement: which shard holds each site, and the routing of samples to shards by it.

Whole sites live on one shard (DESIGN decision 2). One rule places every site, at start and
when the model adds one: the shard with the fewest assets (an empty site counts as one), ties
to the lowest index; at start the biggest sites go first, so shards end up even.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twin.core.model import FleetModel
from twin.core.samples import IngestReport, Sample, SampleError

Parts = dict[int, tuple[list[Sample], list[int]]]


class Placement:
    """The site → shard map of one fleet; see the module docstring."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.site_shard: dict[str, int] = {}

    def place_all(self, model: FleetModel) -> None:
        """Place every site of ``model`` not placed yet, biggest first."""
        load = self.loads(model)
        for site in sorted(model.sites.values(), key=lambda s: (-len(s.assets), s.id)):
            if site.id not in self.site_shard:
                index = _least_loaded(load)
                self.site_shard[site.id] = index
                load[index] += len(site.assets) or 1

    def place(self, site_id: str, model: FleetModel) -> int:
        """Put ``site_id`` on the least-loaded shard; returns that shard's index."""
        index = _least_loaded(self.loads(model))
        self.site_shard[site_id] = index
        return index

    def loads(self, model: FleetModel) -> list[int]:
        """Assets per shard (an empty site counts as one)."""
        load = [0] * self.shards
        for placed, index in self.site_shard.items():
            site = model.sites.get(placed)
            load[index] += (len(site.assets) if site is not None else 0) or 1
        return load

    def shard_of_site(self, site_id: str) -> int:
        return self.site_shard[site_id]

    def shard_of(self, model: FleetModel, asset_id: Any) -> int | None:
        """The shard holding ``asset_id``, or ``None`` for an id the model does not hold."""
        spec = model.assets.get(asset_id) if type(asset_id) is str else None
        return None if spec is None else self.site_shard[spec.site]

    def sites_on(self, index: int) -> list[str]:
        return [site for site, shard in self.site_shard.items() if shard == index]

    def route(self, model: FleetModel, batch: Sequence[Sample], indices: Sequence[int] | None,
              report: IngestReport) -> Parts:
        """Split a batch by shard: ``{shard: (samples, their indices in the batch)}``. A
        sample for an asset the model does not hold is rejected here, in ``report``."""
        parts: Parts = {}
        assets = model.assets
        site_shard = self.site_shard
        for i, sample in enumerate(batch):
            index = indices[i] if indices else i
            spec = assets.get(sample.asset_id) if type(sample.asset_id) is str else None
            if spec is None:
                report.rejected += 1
                report.errors.append(SampleError.unknown_asset(index, sample.asset_id))
                continue
            shard = site_shard[spec.site]
            part = parts.get(shard)
            if part is None:
                part = parts[shard] = ([], [])
            part[0].append(sample)
            part[1].append(index)
        return parts


def _least_loaded(load: list[int]) -> int:
    return min(range(len(load)), key=lambda i: (load[i], i))
