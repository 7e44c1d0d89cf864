"""How commands leave the runtime: a transport takes deliveries and reports acknowledgements.

The runtime hands a transport :class:`Delivery` values (one command each: its id, the asset,
the desired values, the asset's desired version and the lease's end). A transport reports
back through the :class:`Acknowledgements` it was attached to: ``delivered`` once the device
(or the broker that holds the message for it) has it, ``rejected`` with the device's reason.
A delivery not acknowledged within ``ack_timeout_s`` is sent again with the same command id,
so a device can drop a repeat. Device adapters (MQTT, OCPP) implement this interface.

``send`` runs on the fleet's thread with its control lock held, in the order commands were
issued: hand the work to a queue rather than wait on a network. Acknowledgements may come from
any thread, at once (inside ``send``) or later.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, overload

import numpy as np


@dataclass(frozen=True, slots=True)
class Delivery:
    command_id: str
    asset_id: str
    desired: Mapping[str, Any]
    desired_version: int
    expires_at: float | None      # unix time the lease ends; None: until superseded
    attempt: int                  # 1 for the first send, then 2, 3, ... (same command id)


class DeliveryBatch(Sequence[Delivery]):
    """Many deliveries of one field (a dispatch tick), as columns: a sequence of
    :class:`Delivery` made on demand, so a transport that speaks in bulk never pays for
    100,000 small objects. ``command_id`` of item ``i`` is ``str(first_seq + i)``."""

    __slots__ = ("asset_ids", "expires_at", "field", "first_seq", "values")

    def __init__(self, first_seq: int, asset_ids: Sequence[str], field: str,
                 values: np.ndarray, expires_at: float | None) -> None:
        self.first_seq = first_seq
        self.asset_ids = asset_ids
        self.field = field
        self.values = values
        self.expires_at = expires_at

    def __len__(self) -> int:
        return len(self.asset_ids)

    @overload
    def __getitem__(self, index: int) -> Delivery: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Delivery]: ...

    def __getitem__(self, index: int | slice) -> Delivery | Sequence[Delivery]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        seq = self.first_seq + index
        return Delivery(str(seq), self.asset_ids[index], {self.field: float(self.values[index])},
                        seq, self.expires_at, 1)

    def __iter__(self) -> Iterator[Delivery]:
        return (self[i] for i in range(len(self)))

    def command_ids(self) -> list[str]:
        return [str(s) for s in range(self.first_seq, self.first_seq + len(self))]


class Acknowledgements(Protocol):
    """What a transport calls back (the fleet implements it; any thread may call)."""

    def delivered(self, command_id: str) -> None: ...

    def rejected(self, command_id: str, reason: str) -> None: ...

    def delivered_many(self, command_ids: Sequence[str]) -> None:
        """Many commands acknowledged at once (cheaper than one call each)."""

    def delivered_batch(self, batch: DeliveryBatch) -> None:
        """Every command of ``batch`` acknowledged at once (a transport that speaks in bulk)."""


class CommandTransport(ABC):
    """Base class of transports: :meth:`attach` keeps the acknowledgement handle."""

    acks: Acknowledgements | None = None

    def attach(self, acks: Acknowledgements) -> None:
        self.acks = acks

    @abstractmethod
    def send(self, deliveries: Sequence[Delivery]) -> None:
        """Take these deliveries (a list, or a :class:`DeliveryBatch`); do not block."""


CommandSink = Callable[[str, Mapping[str, Any]], None]


class SinkTransport(CommandTransport):
    """A plain callable ``sink(asset_id, desired)`` as a transport: a call that returns counts
    as delivered; one that raises is not acknowledged, so the delivery is tried again."""

    def __init__(self, sink: CommandSink) -> None:
        self.sink = sink

    def send(self, deliveries: Sequence[Delivery]) -> None:
        acks = self.acks
        for delivery in deliveries:
            try:
                self.sink(delivery.asset_id, delivery.desired)
            except Exception:          # the device did not get it: the retry timer resends
                continue
            if acks is not None:
                acks.delivered(delivery.command_id)


class RecordingTransport(CommandTransport):
    """Keeps every delivery and acknowledges nothing by itself: tests and simulations decide
    (``ack``, ``reject``, or silence for a lost message)."""

    def __init__(self, *, auto_ack: bool = False) -> None:
        self.auto_ack = auto_ack
        self.sent: list[Delivery] = []

    def send(self, deliveries: Sequence[Delivery]) -> None:
        self.sent.extend(deliveries)
        if self.auto_ack and self.acks is not None:
            for delivery in deliveries:
                self.acks.delivered(delivery.command_id)

    def take(self) -> list[Delivery]:
        sent, self.sent = self.sent, []
        return sent

    def ack(self, delivery: Delivery) -> None:
        assert self.acks is not None, "attach the transport to a fleet first"
        self.acks.delivered(delivery.command_id)

    def reject(self, delivery: Delivery, reason: str) -> None:
        assert self.acks is not None, "attach the transport to a fleet first"
        self.acks.rejected(delivery.command_id, reason)
