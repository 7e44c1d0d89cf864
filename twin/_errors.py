"""The exceptions twin raises. Lookup and validation errors are ``ValueError`` subclasses."""

from __future__ import annotations


class TwinError(Exception):
    """Base class of every error twin raises on purpose."""


class ModelError(TwinError, ValueError):
    """A fleet model (or a change to it) is malformed; the message names the field and value."""


class UnknownAsset(TwinError, ValueError):
    """An asset id is not in the fleet model."""

    def __init__(self, asset_id: str, hint: str = "") -> None:
        self.asset_id = asset_id
        super().__init__(f"unknown asset {asset_id!r}{hint}")


class UnknownPath(TwinError, ValueError):
    """A roll-up path names no owner, region, site or group of the model."""

    def __init__(self, path: str, hint: str = "") -> None:
        self.path = path
        super().__init__(f"unknown path {path!r}{hint}")


class InvalidCommand(TwinError, ValueError):
    """A command names a field the asset's kind does not accept, or a value out of bounds."""


class AssetUnavailable(TwinError):
    """A command was refused because the asset is not online.

    ``state`` is the asset's state when the command arrived and ``last_seen`` the arrival time
    of its last valid sample (``None`` if it never reported).
    """

    def __init__(self, asset_id: str, state: str, last_seen: float | None) -> None:
        self.asset_id = asset_id
        self.state = state
        self.last_seen = last_seen
        seen = "never reported" if last_seen is None else f"last seen at {last_seen:.3f}"
        super().__init__(f"asset {asset_id!r} is {state} ({seen}); commands need it online")


class IngestError(TwinError, ValueError):
    """A batch could not be read as a whole (not msgpack, wrong version, wrong shape).

    Nothing of it was applied or stored. A malformed *sample* does not raise: it is rejected
    and reported in the ingest report, and its batch-mates are applied.
    """


class FleetClosed(TwinError):
    """The fleet was used after ``close()``."""
