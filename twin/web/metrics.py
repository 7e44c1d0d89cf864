"""The live view's own counters, exposed next to the fleet's on ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from twin.web.server import WebState


class WebCollector(Collector):
    """The live view's own counters, next to the fleet's."""

    def __init__(self, state: WebState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state, hub = self.state, self.state.hub
        sent = state.counters["ws_updates_sent"] + sum(c.slots.flushed for c in hub.clients)
        superseded = (state.counters["ws_updates_superseded"]
                      + sum(c.slots.superseded for c in hub.clients))
        out_bytes = state.counters["ws_bytes_sent"] + sum(c.bytes_sent for c in hub.clients)
        yield GaugeMetricFamily("twin_web_clients", "Websocket clients connected",
                                value=len(hub.clients))
        yield CounterMetricFamily("twin_web_connections", "Websocket connections accepted",
                                  value=state.counters["ws_connections"])
        yield CounterMetricFamily("twin_web_updates", "Messages pushed to websocket clients",
                                  value=sent)
        yield CounterMetricFamily("twin_web_updates_superseded",
                                  "Updates replaced by a newer value before they were sent",
                                  value=superseded)
        yield CounterMetricFamily("twin_web_sent_bytes", "Bytes of JSON pushed to websockets",
                                  value=out_bytes)
        yield CounterMetricFamily("twin_web_auth_failures", "Requests refused for a missing or "
                                  "wrong bearer token", value=state.counters["auth_failures"])
        yield CounterMetricFamily("twin_web_auth_rate_limited", "Requests refused because "
                                  "their address failed too often",
                                  value=state.counters["auth_rate_limited"])
