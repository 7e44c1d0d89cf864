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
        self.hint = hint
        super().__init__(f"unknown asset {asset_id!r}{hint}")

    def __reduce__(self) -> tuple[type[UnknownAsset], tuple[str, str]]:
        return (UnknownAsset, (self.asset_id, self.hint))     # it may cross a process


class UnknownPath(TwinError, ValueError):
    """A roll-up path names no owner, region, site or group of the model."""

    def __init__(self, path: str, hint: str = "") -> None:
        self.path = path
        self.hint = hint
        super().__init__(f"unknown path {path!r}{hint}")

    def __reduce__(self) -> tuple[type[UnknownPath], tuple[str, str]]:
        return (UnknownPath, (self.path, self.hint))


class InvalidCommand(TwinError, ValueError):
    """A command names a field the asset's kind does not accept, or a value out of bounds."""


class VersionConflict(TwinError):
    """``if_version`` did not match the asset's desired version: someone else commanded it
    since the caller last looked. Nothing was changed."""

    def __init__(self, asset_id: str, expected: int, actual: int) -> None:
        self.asset_id = asset_id
        self.expected = expected
        self.actual = actual
        super().__init__(f"asset {asset_id!r}: if_version={expected} does not match its desired "
                         f"version {actual}; read it again and decide anew")


class DispatchConflict(TwinError, ValueError):
    """A dispatch was refused: some of its assets are already in an active dispatch, or it
    has ended and can no longer be changed."""


class UnknownCommand(TwinError, LookupError):
    """No command or dispatch of that id is known to this fleet."""

    def __init__(self, what: str, ident: str) -> None:
        self.what = what
        self.ident = ident
        super().__init__(f"unknown {what} {ident!r}")

    def __reduce__(self) -> tuple[type[UnknownCommand], tuple[str, str]]:
        return (UnknownCommand, (self.what, self.ident))


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

    def __reduce__(self) -> tuple[type[AssetUnavailable], tuple[str, str, float | None]]:
        return (AssetUnavailable, (self.asset_id, self.state, self.last_seen))


class IngestError(TwinError, ValueError):
    """A batch could not be read as a whole (not msgpack, wrong version, wrong shape).

    Nothing of it was applied or stored. A malformed *sample* does not raise: it is rejected
    and reported in the ingest report, and its batch-mates are applied.
    """


class FleetClosed(TwinError):
    """The fleet was used after ``close()``."""


class ShardDown(TwinError):
    """A shard host (a process holding some sites' asset actors) is down: restarting, or
    failed for good after too many restarts. Its assets count as ``unknown`` meanwhile."""

    def __init__(self, index: int, status: str, reason: str = "") -> None:
        self.index = index
        self.status = status
        self.reason = reason
        why = f": {reason}" if reason else ""
        super().__init__(f"shard {index} is {status}{why}")

    def __reduce__(self) -> tuple[type[ShardDown], tuple[int, str, str]]:
        return (ShardDown, (self.index, self.status, self.reason))
