"""A fleet's metrics: ``Fleet.metrics()`` and their Prometheus exposition.

The fleet keeps its counters as plain integers; :func:`fleet_metrics` reads them with the
shards' own counts, and a collector (``prometheus_client``) turns them into metric families at
scrape time, so there is one source of truth and nothing to keep in sync. Labels are
low-cardinality only (outcome, state): never an asset id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from twin.core.samples import OUTCOMES
from twin.fleet.core import FleetCore
from twin.runtime.calls import Metrics


def fleet_metrics(core: FleetCore, pending_changes: int, subscriptions: int,
                  control: dict[str, Any]) -> dict[str, Any]:
    """Every counter of the fleet and of its shards (under the fleet lock)."""
    shards = [m for _, m in core.call_up([(i, Metrics()) for i in core.up()])]
    out: dict[str, Any] = {}
    with core.view_lock:
        out.update(core.counters)
        out["transitions_by_state"] = dict(core.transition_counts)
        by_state: dict[str, int] = {}
        # keyed by state name: a roll-up's `reporting` counts the assets `online`
        for rollup in core.tree.top_level():
            for state, field in (("online", "reporting"), ("offline", "offline"),
                                 ("unknown", "unknown"), ("quarantined", "quarantined")):
                by_state[state] = by_state.get(state, 0) + getattr(rollup, field)
    for key in ("failures", "restarts", "quarantines", "escalations"):
        out[f"supervisor_{key}"] = sum(s[key] for s in shards)
    out["assets"] = sum(s["assets"] for s in shards)
    out["assets_by_state"] = by_state
    if core.persist is not None:
        writer = core.persist.store.writer
        out.update(store_queue_depth=writer.depth, store_rows_written=writer.written_rows,
                   store_write_retries=writer.retries, store_writes=writer.writes,
                   store_rows_failed=writer.failed_rows,
                   store_write_seconds=writer.write_seconds,
                   store_writer_restarts=writer.restarts,
                   store_log_offset=core.persist.last_offset)
    out["liveness_timer_arms"] = sum(s["wheel_arms"] for s in shards)
    out["shards"] = len(core.shards)
    out["shards_down"] = len(core.down)
    out["shard_restarts"] = sum(s.restarts for s in core.shard_states)
    out["subscriptions"] = subscriptions
    out["pending_changes"] = pending_changes
    out["model_version"] = core.model.version
    out.update(control)
    return out


class FleetCollector(Collector):
    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        m = self._read()
        samples = CounterMetricFamily("twin_samples", "Samples ingested, by outcome",
                                      labels=["outcome"])
        for outcome in OUTCOMES:
            samples.add_metric([outcome], m[f"samples_{outcome}"])
        yield samples
        yield CounterMetricFamily("twin_batches", "Batches ingested", value=m["batches"])
        yield CounterMetricFamily("twin_batches_refused",
                                  "Batches refused because the store was busy or away",
                                  value=m["batches_refused"])
        yield CounterMetricFamily("twin_batch_bytes", "Bytes of ingested batches (wire format)",
                                  value=m["batch_bytes"])
        transitions = CounterMetricFamily("twin_state_transitions",
                                          "Asset state transitions, by new state",
                                          labels=["state"])
        for state, n in sorted(m["transitions_by_state"].items()):
            transitions.add_metric([state], n)
        yield transitions
        for key, help_text in (("restarts", "Actor restarts by supervisors"),
                               ("failures", "Actor failures seen by supervisors"),
                               ("quarantines", "Actors quarantined after a crash loop"),
                               ("escalations", "Failures escalated to a parent supervisor")):
            yield CounterMetricFamily(f"twin_supervisor_{key}", help_text,
                                      value=m[f"supervisor_{key}"])
        yield CounterMetricFamily("twin_model_changes", "Model changes applied",
                                  value=m["model_changes"])
        yield CounterMetricFamily("twin_snapshots", "Snapshots taken", value=m["snapshots"])
        yield CounterMetricFamily("twin_subscriber_errors", "Subscription callbacks that raised",
                                  value=m["callback_errors"])
        yield GaugeMetricFamily("twin_assets", "Assets in the fleet", value=m["assets"])
        yield GaugeMetricFamily("twin_shards", "Shard hosts", value=m["shards"])
        yield GaugeMetricFamily("twin_shards_down",
                                "Shard hosts down now (their assets count as unknown)",
                                value=m["shards_down"])
        yield CounterMetricFamily("twin_shard_restarts",
                                  "Shard host processes restarted by the fleet supervisor",
                                  value=m["shard_restarts"])
        yield CounterMetricFamily("twin_shard_recoveries",
                                  "Restarted shard hosts refilled from snapshot and log",
                                  value=m["shard_recoveries"])
        states = GaugeMetricFamily("twin_assets_by_state", "Assets now in each state",
                                   labels=["state"])
        for state, n in sorted(m["assets_by_state"].items()):
            states.add_metric([state], n)
        yield states
        commands = CounterMetricFamily("twin_commands",
                                       "Commands that reached each state", labels=["state"])
        for state, n in sorted(m["commands_by_state"].items()):
            commands.add_metric([state], n)
        yield commands
        yield GaugeMetricFamily("twin_assets_not_following",
                                "Assets not following their setpoint now",
                                value=m["assets_not_following"])
        yield CounterMetricFamily("twin_command_resends_refused",
                                  "Resends the fleet's retry budget refused",
                                  value=m["command_resends_refused"])
        yield CounterMetricFamily("twin_command_acks_stale",
                                  "Acknowledgements of unknown or replaced commands",
                                  value=m["command_acks_stale"])
        yield GaugeMetricFamily("twin_dispatches_active", "Dispatches running now",
                                value=len(m["dispatches"]))
        for key, help_text in (("target_kw", "Dispatch target (after the ramp)"),
                               ("allocated_kw", "Dispatch setpoints issued, summed"),
                               ("achieved_kw", "Dispatch members' reported power, summed")):
            gauge = GaugeMetricFamily(f"twin_dispatch_{key}", help_text, labels=["dispatch"])
            for dispatch_id, figures in sorted(m["dispatches"].items()):
                gauge.add_metric([dispatch_id], figures[key])
            yield gauge
        if "store_queue_depth" in m:
            yield GaugeMetricFamily("twin_store_queue_depth",
                                    "Batches of derived rows waiting for the store writer",
                                    value=m["store_queue_depth"])
            yield CounterMetricFamily("twin_store_rows_written", "Derived rows written",
                                      value=m["store_rows_written"])
            yield CounterMetricFamily("twin_store_write_retries",
                                      "Store writes retried after a database error",
                                      value=m["store_write_retries"])
            yield CounterMetricFamily("twin_store_rows_failed",
                                      "Derived rows the database refused for good (the raw "
                                      "log keeps their samples)",
                                      value=m["store_rows_failed"])
            yield CounterMetricFamily("twin_store_write_seconds",
                                      "Time spent in store write transactions",
                                      value=m["store_write_seconds"])
            yield CounterMetricFamily("twin_store_writes", "Store write transactions",
                                      value=m["store_writes"])
            yield CounterMetricFamily("twin_store_writer_restarts",
                                      "Store writer processes restarted after dying",
                                      value=m["store_writer_restarts"])


def registry_for(read: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(read))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format."""
    return generate_latest(registry)
