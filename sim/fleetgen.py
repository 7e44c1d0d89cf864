"""The simulator's fleet: :func:`twin.fleetgen.generate_fleet` with the simulator's options and
errors (the generator itself is shared with ``twin demo`` and :mod:`twin.testing`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sim.config import SimConfigError
from twin.fleetgen import DEFAULT_REPORT_EVERY, apportion
from twin.fleetgen import generate_fleet as _generate


def generate_fleet(assets: int, *, owners: int = 3, regions: int = 8, sites: int | None = None,
                   mix: Mapping[str, float], seed: int = 7,
                   report_every: Mapping[str, float] = DEFAULT_REPORT_EVERY) -> dict[str, Any]:
    """A fleet model as the dict ``FleetModel.from_dict`` reads."""
    if regions < owners:
        raise SimConfigError(f"--regions: {regions} regions cannot be shared by {owners} owners "
                             "(every owner needs one)")
    return _generate(assets, owners=owners, regions=regions, sites=sites, mix=mix, seed=seed,
                     report_every=report_every)


__all__ = ["apportion", "generate_fleet"]
