"""Stateful property test: a fleet's roll-ups always equal a brute-force recount.

A Hypothesis state machine drives a small fleet (2 owners x 2 regions x 2 sites x 3 assets,
plus the extra group ``all-turbines-of-o0``) on a ``VirtualClock``, on one shard and on two,
through random interleavings of:

* ingest: batches of samples for live, decommissioned and never-known ids (and the odd
  non-``Sample`` object), device times around now, far in the future and far in the past,
  power values inside and outside the kind's bounds, NaN/inf, wrong types, unknown signals;
* advance: the clock moves 0..100 s and timers fire (offline detection, restarts);
* inject_fault (1-3 times in a row, enough to quarantine) and release of a quarantined asset;
* command: valid and invalid payloads to a random asset;
* model changes: MoveAsset (a rule of its own, often of an asset waiting out a restart
  backoff), DecommissionAsset, AddAsset, MoveSite (also to the other owner) and AddSite.

After every step: ``twin.testing.assert_consistent`` (every roll-up equals its recount), and
against a shadow kept by the test (independent of ``fleet.model``): the set of roll-up paths,
each roll-up's expected count (= reporting + offline + unknown + quarantined) and per-kind
counts/power/capacity, the model itself, decommissioned ids raising ``UnknownAsset``, each
asset's site path and desired view (changed by accepted commands only), the liveness rule
(online implies seen within ``offline_after_s``), every recorded state transition legal and
agreeing with the asset's state, and every asset answering an (invalid, empty) command as its
state says, "restarting" only briefly after a fault, without any asset changing as a result.
Each ``IngestReport`` must sum to its batch size, have one error per rejected sample, and, for
samples whose outcome the shadow can predict (assets not in the middle of a supervised
restart), match it exactly.

Deterministic (``derandomize=True``, no example database); about 15 s for both machines.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from twin import (
    AddAsset,
    AddSite,
    AssetUnavailable,
    DecommissionAsset,
    Fleet,
    FleetModel,
    InvalidCommand,
    ModelVersion,
    MoveAsset,
    MoveSite,
    Sample,
    SupervisionPolicy,
    TwinError,
    UnknownAsset,
    VirtualClock,
)
from twin.testing import assert_consistent, fleet_dict, members

START = 1767225600.0
OFFLINE_AFTER_S = 30.0          # fleet_dict's default, used by every asset here
ALLOWED_SKEW_S = 300.0          # Defaults.allowed_skew_s
RETENTION_S = 30 * 86400.0      # Defaults.retention_s
OWNERS = ("o0", "o1")
REGIONS = ("o0/r0", "o0/r1", "o1/r0", "o1/r1")
STATES = ("unknown", "online", "offline", "quarantined")

# each kind's signals and their bounds (twin.core.kinds): (lo, hi, scale) or "bool"
SIGNALS: dict[str, dict[str, Any]] = {
    "turbine": {"power_kw": (-0.05, 1.1, "rated_kw"), "wind_speed_ms": (0.0, 75.0, None),
                "rotor_rpm": (0.0, 40.0, None), "power_limit_kw": (0.0, 1.0, "rated_kw")},
    "battery": {"power_kw": (-1.1, 1.1, "rated_kw"), "soc_pct": (0.0, 100.0, None),
                "energy_kwh": (0.0, 1.0, "capacity_kwh"), "setpoint_kw": (-1.0, 1.0, "rated_kw")},
    "charger": {"power_kw": (-1.1, 0.05, "rated_kw"), "session_active": "bool",
                "session_energy_kwh": (0.0, 1000.0, None),
                "power_limit_kw": (0.0, 1.0, "rated_kw")},
}
# the one command field of each kind and its bounds, as multiples of rated_kw
COMMAND = {"turbine": ("power_limit_kw", 0.0, 1.0), "battery": ("setpoint_kw", -1.0, 1.0),
           "charger": ("power_limit_kw", 0.0, 1.0)}
NEW_ASSET_FIELDS = {"turbine": {"rated_kw": 2000.0},
                    "battery": {"rated_kw": 7.5, "capacity_kwh": 20.0},
                    "charger": {"rated_kw": 11.0}}

LEGAL = ({("unknown", "online"), ("offline", "online"), ("online", "offline"),
          ("quarantined", "unknown")}
         | {(s, "quarantined") for s in ("unknown", "online", "offline")}
         | {(s, "decommissioned") for s in STATES})

# -- strategies ---------------------------------------------------------------------------------

# an index, taken modulo the (sorted) list it picks from; small ones often, so that the same
# few assets and sites meet faults, moves and samples in one run
PICK = st.one_of(st.integers(0, 3), st.integers(0, 10_000))
# which live assets to pick from: any, those online, or the troubled ones (see pick_live)
FOCUS = st.sampled_from(["any", "any", "online", "troubled"])

TS_SPEC = st.one_of(
    st.tuples(st.just("off"), st.integers(-60, 10)),            # near now, repeats likely
    st.tuples(st.just("off"), st.integers(-1000, 1000).map(lambda n: n / 10)),
    st.tuples(st.just("off"), st.sampled_from([ALLOWED_SKEW_S, ALLOWED_SKEW_S + 1, 1e6,
                                               -RETENTION_S, -RETENTION_S - 1, -1e9])),
    st.tuples(st.just("raw"), st.sampled_from([math.nan, math.inf, "now", None, True])),
)

POWER_SPEC = st.one_of(
    st.tuples(st.just("frac"), st.integers(-130, 130).map(lambda n: n / 100)),  # x rated_kw
    st.tuples(st.just("frac"), st.sampled_from([-1.1, -0.05, 0.0, 0.05, 1.1])),
    st.tuples(st.just("value"), st.sampled_from([0, 1, -1, math.nan, math.inf, -math.inf,
                                                 "12.5", True, None, 1e12])),
)
SIGNALS_SPEC = st.one_of(
    st.tuples(st.just("power"), POWER_SPEC, st.none()),
    st.tuples(st.just("power"), POWER_SPEC, st.none()),
    # another signal of the asset's kind (picked by index), with or without power_kw
    st.tuples(st.sampled_from(["other", "power+other"]), POWER_SPEC,
              st.tuples(st.integers(0, 2), st.sampled_from([0.0, 12.0, 75.0, 100.0, 1001.0,
                                                            -1.0, True, False, math.nan]))),
    st.tuples(st.just("unknown_signal"), POWER_SPEC, st.none()),
    st.tuples(st.just("empty"), st.none(), st.none()),
)

TARGET = st.sampled_from(["any"] * 4 + ["online", "troubled", "ghost", "retired", "junk"])
SAMPLE_SPEC = st.tuples(TARGET, PICK, TS_SPEC, SIGNALS_SPEC)
GHOSTS = ("ghost-0", "ghost-1", None, 7, ["o0-r0-s0-a0"])   # never-known and non-str ids

CHANGE_SPEC = st.one_of(                # the model changes besides MoveAsset (its own rule)
    st.tuples(st.just("move_site"), PICK, PICK),                      # site, to region
    st.tuples(st.just("decommission_asset"), PICK, FOCUS),
    st.tuples(st.just("add_asset"), PICK, st.sampled_from(sorted(NEW_ASSET_FIELDS))),
    st.tuples(st.just("add_site"), st.sampled_from(REGIONS)),
)

PAYLOAD_SPEC = st.one_of(
    st.tuples(st.just("frac"), st.integers(-20, 120).map(lambda n: n / 100)),  # in/out bounds
    st.tuples(st.just("frac"), st.sampled_from([0.0, 1.0])),
    st.tuples(st.just("value"), st.sampled_from([math.nan, math.inf, "5", True, None])),
    st.tuples(st.just("wrong_field"), st.just(1.0)),
    st.tuples(st.just("empty"), st.none()),
)


def _power_value(spec: tuple[str, Any], rated: float) -> Any:
    how, x = spec
    return x * rated if how == "frac" else x


# -- the oracle ---------------------------------------------------------------------------------


def classify(kind: str, rated: float, capacity: float | None, signals: Any) -> str | bool:
    """"rejected" if the signals are malformed, else whether they are anomalous."""
    if type(signals) is not dict or not signals:
        return "rejected"
    anomalous = False
    for name, value in signals.items():
        bounds = SIGNALS[kind].get(name)
        if bounds is None:
            return "rejected"
        if bounds == "bool":
            if type(value) is not bool:
                return "rejected"
            continue
        if type(value) not in (int, float):
            return "rejected"
        lo, hi, scale = bounds
        factor = {"rated_kw": rated, "capacity_kwh": capacity or 0.0, None: 1.0}[scale]
        if not lo * factor <= value <= hi * factor:
            anomalous = True
    return anomalous


def predict_outcome(kind: str, rated: float, capacity: float | None, now: float,
                    last_ts: float | None, ts: Any, signals: Any) -> str:
    """The outcome a running (not restarting, not quarantined) asset gives a sample."""
    if type(ts) not in (int, float) or not math.isfinite(ts):
        return "rejected"
    anomalous = classify(kind, rated, capacity, signals)
    if anomalous == "rejected":
        return "rejected"
    if ts > now + ALLOWED_SKEW_S:
        return "future"
    if ts < now - RETENTION_S:
        return "stale"
    if last_ts is not None and ts <= last_ts:
        if ts == last_ts:
            return "duplicate"
        return "anomalous" if anomalous else "late"
    return "anomalous" if anomalous else "accepted"


def command_is_valid(kind: str, rated: float, payload: dict[str, Any]) -> bool:
    field, lo, hi = COMMAND[kind]
    if set(payload) != {field}:
        return False
    value = payload[field]
    return (type(value) in (int, float) and math.isfinite(value)
            and lo * rated <= value <= hi * rated)


# -- the state machine --------------------------------------------------------------------------


class FleetMachine(RuleBasedStateMachine):
    shards = 1

    def __init__(self) -> None:
        super().__init__()
        self.fleet: Fleet | None = None

    # shadow of the model, kept independently of fleet.model
    @initialize(seed=st.integers(0, 3))
    def start(self, seed: int) -> None:
        raw = fleet_dict(owners=2, regions=2, sites=2, assets=3, seed=seed)
        self.clock = VirtualClock(start=START)
        self.now = START
        self.site_region: dict[str, str] = {}           # site id -> "owner/region"
        self.asset_site: dict[str, str] = {}            # live asset id -> site id
        self.kind: dict[str, str] = {}
        self.rated: dict[str, float] = {}
        self.capacity: dict[str, float] = {}
        for owner in raw["owners"]:
            for region in owner["regions"]:
                for site in region["sites"]:
                    self.site_region[site["id"]] = f"{owner['id']}/{region['id']}"
                    for asset in site["assets"]:
                        self.asset_site[asset["id"]] = site["id"]
                        self.kind[asset["id"]] = asset["kind"]
                        self.rated[asset["id"]] = float(asset["rated_kw"])
                        if "capacity_kwh" in asset:
                            self.capacity[asset["id"]] = float(asset["capacity_kwh"])
        self.groups: dict[str, set[str]] = {name: set(ids)
                                            for name, ids in raw.get("groups", {}).items()}
        self.retired: set[str] = set()
        self.desired: dict[str, dict[str, Any]] = {}
        self.quarantined: list[str] = []                # as seen after the last step
        self.state_of: dict[str, str] = {}              # as seen after the last step
        self.unsettled: dict[str, int] = {}             # asset -> long advances still needed
        self.faulted: set[str] = set()                  # assets that ever had a fault
        self.last_transition: dict[str, str] = {}
        self.transitions_seen = 0
        self.new_ids = 0
        self.fleet = Fleet(FleetModel.from_dict(raw), clock=self.clock, shards=self.shards,
                           seed=0, supervision=SupervisionPolicy(max_restarts=2, within_s=60))

    def teardown(self) -> None:
        if self.fleet is not None:
            self.fleet.close()

    # -- helpers --------------------------------------------------------------------------

    def live(self) -> list[str]:
        return sorted(self.asset_site)

    def pick_live(self, i: int, focus: str = "any") -> str:
        ids = self.live()
        if focus == "online":
            ids = [a for a in ids if self.state_of.get(a) == "online"] or ids
        elif focus == "troubled":     # restarting, else ever faulted
            ids = ([a for a in ids if a in self.unsettled]
                   or [a for a in ids if a in self.faulted] or ids)
        return ids[i % len(ids)]

    def restarting(self, asset_id: str, state: str) -> bool:
        """The asset may be suspended by its supervisor (a fault was injected recently):
        its samples may be deferred and its commands refused as "restarting". A quarantined
        asset is not restarting: its actor is stopped until released."""
        return state != "quarantined" and self.unsettled.get(asset_id, 0) > 0

    def site_path(self, site_id: str) -> str:
        return f"{self.site_region[site_id]}/{site_id}"

    def expected_members(self, path: str) -> set[str]:
        if path in self.groups:
            return self.groups[path] & set(self.asset_site)
        sites = {s for s, region in self.site_region.items()
                 if path in (region, region.split("/")[0], self.site_path(s))}
        return {a for a, s in self.asset_site.items() if s in sites}

    def expected_paths(self) -> set[str]:
        return ({*OWNERS, *REGIONS} | {self.site_path(s) for s in self.site_region}
                | set(self.groups))

    def check_version(self, version: Any) -> None:
        assert isinstance(version, ModelVersion), version
        assert version.effective == self.now

    # -- rules: data ------------------------------------------------------------------------

    def make_signals(self, asset_id: Any, spec: tuple[str, Any, Any]) -> Any:
        how, power, other = spec
        kind = self.kind.get(asset_id, "turbine") if isinstance(asset_id, str) else "turbine"
        signals: dict[str, Any] = {}
        if how in ("power", "power+other", "unknown_signal"):
            signals["power_kw"] = _power_value(power, self.rated.get(asset_id, 1.0)
                                               if isinstance(asset_id, str) else 1.0)
        if how in ("other", "power+other"):
            index, value = other
            others = sorted(name for name in SIGNALS[kind] if name != "power_kw")
            signals[others[index % len(others)]] = value
        if how == "unknown_signal":
            signals["bogus_signal"] = 1.0
        return signals

    @rule(batch=st.lists(SAMPLE_SPEC, max_size=8))
    def ingest(self, batch: list[tuple[str, int, tuple[str, Any], tuple[str, Any, Any]]]
               ) -> None:
        assert self.fleet is not None
        now = self.now
        items: list[Any] = []
        for target, i, (ts_how, ts_x), sig in batch:
            asset_id: Any
            if target in ("any", "online", "troubled") and self.asset_site:
                asset_id = self.pick_live(i, target)
            elif target == "retired" and self.retired:
                asset_id = sorted(self.retired)[i % len(self.retired)]
            else:
                asset_id = GHOSTS[i % len(GHOSTS)]
            ts = now + ts_x if ts_how == "off" else ts_x
            signals = self.make_signals(asset_id, sig)
            if target == "junk":
                items.append({"asset_id": asset_id, "ts": ts, "signals": signals})
            else:
                items.append(Sample(asset_id, ts, signals))

        # predict what the shadow can: per asset, from its view before the batch
        views = {s.asset_id: self.fleet.asset(s.asset_id) for s in items
                 if type(s) is Sample and isinstance(s.asset_id, str)
                 and s.asset_id in self.asset_site}
        last_ts = {a: v.last_sample_ts for a, v in views.items()}
        predicted: list[str | None] = []
        for s in items:
            if type(s) is not Sample or not isinstance(s.asset_id, str) or s.asset_id not in views:
                predicted.append("rejected")
            elif views[s.asset_id].state == "quarantined":
                predicted.append("quarantined")        # stopped: refused, whatever it holds
            elif self.restarting(s.asset_id, views[s.asset_id].state):
                predicted.append(None)                 # may be deferred: not predicted
            else:
                a = s.asset_id
                outcome = predict_outcome(self.kind[a], self.rated[a], self.capacity.get(a),
                                          now, last_ts[a], s.ts, s.signals)
                if outcome == "accepted":
                    last_ts[a] = s.ts
                predicted.append(outcome)
        note(f"ingest at {now}: {items!r}")
        note(f"  predicted: {predicted}")

        report = self.fleet.ingest(items)
        note(f"  report: {report}")
        counts = report.counts()
        assert report.total == len(items), (report, len(items))
        assert sum(counts.values()) == len(items)
        assert len(report.errors) == report.rejected, report.errors
        assert sorted(e.index for e in report.errors) == sorted({e.index
                                                                  for e in report.errors})
        assert all(0 <= e.index < len(items) for e in report.errors)
        expected = Counter(p for p in predicted if p is not None)
        if None in predicted:
            for name, n in expected.items():
                assert counts[name] >= n, (name, counts, predicted)
        else:
            assert counts == {name: expected.get(name, 0) for name in counts}, (
                f"report {counts} but the shadow predicts {dict(expected)} for "
                f"{predicted}")
        rejected_at = {i for i, p in enumerate(predicted) if p == "rejected"}
        assert rejected_at <= {e.index for e in report.errors}
        for a, ts in last_ts.items():
            if views[a].state == "quarantined" or self.restarting(a, views[a].state):
                continue
            view = self.fleet.asset(a)
            assert view.last_sample_ts == ts, (a, view.last_sample_ts, ts)
            if ts != views[a].last_sample_ts:                # something was accepted
                assert view.state == "online", (a, view.state)
                assert view.last_seen == now

    @rule(seconds=st.one_of(st.sampled_from([0.5, 1.0, 10.0, 29.0, 30.0, 31.0, 0.0, 100.0]),
                            st.integers(0, 1000).map(lambda n: n / 10)))
    def advance(self, seconds: float) -> None:
        assert self.fleet is not None
        target = self.fleet.advance(seconds)
        self.now = self.now + seconds
        assert target == self.now == self.clock.now()
        if seconds >= 0.5:
            for a in list(self.unsettled):
                self.unsettled[a] -= 1
                if self.unsettled[a] <= 0:
                    del self.unsettled[a]

    # -- rules: supervision and control ----------------------------------------------------------

    @precondition(lambda self: bool(self.asset_site))
    @rule(pick=PICK, focus=FOCUS, times=st.sampled_from([3, 2, 1]))
    def inject_fault(self, pick: int, focus: str, times: int) -> None:
        """1-3 faults in a row into an asset not already restarting. The first restart is
        immediate, the second after a backoff of at most 0.5 s (the actor is suspended and a
        third fault waits in its mailbox), the third failure within 60 s quarantines."""
        assert self.fleet is not None
        asset_id = self.pick_live(pick, focus)
        if asset_id in self.unsettled:
            return                    # keeps the shadow's bound on restarts small and sure
        note(f"inject_fault({asset_id!r}) x{times}")
        for _ in range(times):
            self.fleet.inject_fault(asset_id)
        # A restart fires at the first advance that reaches its due time, and may then run a
        # deferred fault, which may suspend the actor again. So each injected fault may need
        # one advance of >= 0.5 s before the actor surely runs again. (The invariant forgets
        # this as soon as the actor is seen running, or quarantined, i.e. stopped.)
        self.unsettled[asset_id] = times
        self.faulted.add(asset_id)

    @rule(pick=PICK)
    def release(self, pick: int) -> None:
        """Release a quarantined asset (a no-op step while none is: a precondition here
        would make Hypothesis discard many runs)."""
        assert self.fleet is not None
        if not self.quarantined:
            return
        asset_id = self.quarantined[pick % len(self.quarantined)]
        note(f"release({asset_id!r})")
        assert self.fleet.asset(asset_id).state == "quarantined"
        self.fleet.release(asset_id)
        assert self.fleet.asset(asset_id).state == "unknown"
        self.quarantined.remove(asset_id)

    @precondition(lambda self: bool(self.asset_site))
    @rule(pick=PICK, focus=FOCUS, spec=PAYLOAD_SPEC)
    def command(self, pick: int, focus: str, spec: tuple[str, Any]) -> None:
        assert self.fleet is not None
        asset_id = self.pick_live(pick, focus)
        kind, rated = self.kind[asset_id], self.rated[asset_id]
        field, lo, hi = COMMAND[kind]
        how, x = spec
        if how == "frac":
            payload: dict[str, Any] = {field: lo * rated + x * (hi - lo) * rated}
        elif how == "value":
            payload = {field: x}
        elif how == "wrong_field":
            payload = {"not_a_command": x}
        else:
            payload = {}
        state = self.fleet.asset(asset_id).state
        valid = command_is_valid(kind, rated, payload)
        note(f"command({asset_id!r}, {payload!r}) in state {state}, valid={valid}")
        restarting = self.restarting(asset_id, state)
        event(f"command to a {state} asset{' (restarting)' if restarting else ''}")
        try:
            receipt = self.fleet.command(asset_id, payload)
        except AssetUnavailable as refused:
            assert restarting or state != "online", (asset_id, state)
            assert restarting or refused.state == state
            return
        except InvalidCommand:
            assert restarting or (state == "online" and not valid), (asset_id, state, payload)
            return
        except TwinError as error:
            # Fleet.command documents AssetUnavailable for any asset not online (quarantined
            # and restarting ones included), InvalidCommand for a bad payload: nothing else
            raise AssertionError(f"command to {asset_id!r} in state {state!r} raised "
                                 f"{error!r}") from error
        assert restarting or (state == "online" and valid), (asset_id, state, payload)
        expected = {**self.desired.get(asset_id, {}), field: float(payload[field])}
        assert dict(receipt.desired) == expected, (receipt.desired, expected)
        self.desired[asset_id] = expected

    # -- rules: model changes ---------------------------------------------------------------------

    @rule(change=CHANGE_SPEC)
    def apply_change(self, change: tuple[Any, ...]) -> None:
        """One model change, applied now: ``(op, *picks)``."""
        op = change[0]
        if op == "decommission_asset" and not self.asset_site:
            op, change = "add_asset", ("add_asset", 0, "turbine")
        getattr(self, f"_{op}")(*change[1:])

    @precondition(lambda self: bool(self.asset_site))
    @rule(pick=PICK, focus=st.sampled_from(["troubled", "any", "online"]), to=PICK)
    def move_asset(self, pick: int, focus: str, to: int) -> None:
        """MoveAsset to another site (of the same shard or not), often of an asset that is
        restarting or was faulted."""
        assert self.fleet is not None
        asset_id = self.pick_live(pick, focus)
        others = sorted(s for s in self.site_region if s != self.asset_site[asset_id])
        site = others[to % len(others)]
        note(f"apply(MoveAsset({asset_id!r}, {site!r}))")
        if asset_id in self.unsettled:
            event("move of a restarting asset")
        self.check_version(self.fleet.apply(MoveAsset(asset_id, site)))
        self.asset_site[asset_id] = site

    def _decommission_asset(self, pick: int, focus: str) -> None:
        assert self.fleet is not None
        asset_id = self.pick_live(pick, focus)
        note(f"apply(DecommissionAsset({asset_id!r}))")
        self.check_version(self.fleet.apply(DecommissionAsset(asset_id)))
        del self.asset_site[asset_id]
        self.desired.pop(asset_id, None)
        self.unsettled.pop(asset_id, None)
        self.faulted.discard(asset_id)
        if asset_id in self.quarantined:
            self.quarantined.remove(asset_id)
        self.retired.add(asset_id)
        with pytest.raises(UnknownAsset):
            self.fleet.asset(asset_id)

    def _add_asset(self, to: int, kind: str) -> None:
        assert self.fleet is not None
        sites = sorted(self.site_region)
        site = sites[to % len(sites)]
        asset_id = f"new-a{self.new_ids}"
        self.new_ids += 1
        raw = {"id": asset_id, "kind": kind, **NEW_ASSET_FIELDS[kind]}
        note(f"apply(AddAsset({site!r}, {raw!r}))")
        self.check_version(self.fleet.apply(AddAsset(site, raw)))
        self.asset_site[asset_id] = site
        self.kind[asset_id] = kind
        self.rated[asset_id] = NEW_ASSET_FIELDS[kind]["rated_kw"]
        if "capacity_kwh" in NEW_ASSET_FIELDS[kind]:
            self.capacity[asset_id] = NEW_ASSET_FIELDS[kind]["capacity_kwh"]
        assert self.fleet.asset(asset_id).state == "unknown"

    def _move_site(self, pick: int, to: int) -> None:
        assert self.fleet is not None
        sites = sorted(self.site_region)
        site = sites[pick % len(sites)]
        regions = [r for r in REGIONS if r != self.site_region[site]]
        region = regions[to % len(regions)]
        note(f"apply(MoveSite({site!r}, {region!r}))")
        self.check_version(self.fleet.apply(MoveSite(site, region)))
        self.site_region[site] = region

    def _add_site(self, to: str) -> None:
        assert self.fleet is not None
        site = f"new-s{self.new_ids}"
        self.new_ids += 1
        note(f"apply(AddSite({to!r}, {site!r}))")
        self.check_version(self.fleet.apply(AddSite(to, site)))
        self.site_region[site] = to

    # -- the invariant ----------------------------------------------------------------------------

    @invariant()
    def rollups_equal_recount(self) -> None:
        fleet = self.fleet
        if fleet is None:
            return
        assert self.clock.now() == self.now

        # the model follows the changes applied
        model = fleet.model
        assert set(model.assets) == set(self.asset_site)
        assert set(model.sites) == set(self.site_region)
        for a, site in self.asset_site.items():
            assert model.assets[a].site == site
        for s, region in self.site_region.items():
            assert model.sites[s].region_path == region
        for a in self.retired:
            with pytest.raises(UnknownAsset):
                fleet.asset(a)

        # the assets themselves
        views = {a: fleet.asset(a) for a in self.asset_site}
        for a, view in views.items():
            assert view.site == self.site_path(self.asset_site[a]), (a, view.site)
            assert view.kind == self.kind[a]
            assert view.state in STATES, (a, view.state)
            assert dict(view.desired) == self.desired.get(a, {}), (
                f"{a}: desired {view.desired}, but only {self.desired.get(a, {})} was "
                "accepted")
            if view.state == "online":
                assert view.last_seen is not None
                assert view.last_seen + OFFLINE_AFTER_S > self.now, (
                    f"{a} is online but was last seen at {view.last_seen}, now {self.now}")
            elif view.state == "offline":
                assert view.last_seen is not None
                assert view.last_seen + OFFLINE_AFTER_S <= self.now
        self.state_of = {a: v.state for a, v in views.items()}

        self.quarantined = sorted(a for a, v in views.items() if v.state == "quarantined")
        if self.quarantined:
            event("some asset quarantined")
        for a in self.quarantined:
            self.unsettled.pop(a, None)                # stopped: no restart pending any more
        assert fleet.metrics()["assets"] == len(self.asset_site)

        # every transition is legal and the latest one per asset is its state
        total = fleet.metrics()["transitions"]
        fresh = total - self.transitions_seen
        self.transitions_seen = total
        for t in fleet.transitions(limit=fresh) if fresh else []:
            assert (t.old, t.new) in LEGAL, t
            assert t.at <= self.now
            if t.asset_id in self.last_transition:
                assert self.last_transition[t.asset_id] == t.old, t
            self.last_transition[t.asset_id] = t.new
        for a, view in views.items():
            assert self.last_transition.get(a, "unknown") == view.state, (
                a, self.last_transition.get(a), view.state)
        for a in self.retired:
            assert self.last_transition.get(a) == "decommissioned", a

        # the roll-ups
        rollups = fleet.rollups()
        assert set(rollups) == self.expected_paths()
        assert_consistent(fleet)
        for path, r in rollups.items():
            expect = self.expected_members(path)
            assert members(model, path) == expect, path
            assert r.reporting + r.offline + r.unknown + r.quarantined == r.expected, path
            assert r.expected == len(expect), (path, r.expected, sorted(expect))
            per_kind: dict[str, dict[str, Any]] = {}
            for a in expect:
                view = views[a]
                k = per_kind.setdefault(self.kind[a], {
                    "expected": 0, "reporting": 0, "offline": 0, "unknown": 0,
                    "quarantined": 0, "power_w": 0, "capacity_w": 0})
                k["expected"] += 1
                k["capacity_w"] += round(self.rated[a] * 1000.0)
                if view.state == "online":
                    k["reporting"] += 1
                    power = view.reported.get("power_kw")
                    k["power_w"] += 0 if power is None else round(power * 1000.0)
                else:
                    k[view.state] += 1
            expected_kinds = {
                kind: {**{n: v for n, v in c.items() if not n.endswith("_w")},
                       "power_kw": c["power_w"] / 1000.0,
                       "capacity_kw": c["capacity_w"] / 1000.0}
                for kind, c in per_kind.items()}
            actual_kinds = {kind: kr.counts() for kind, kr in r.kinds.items()}
            assert actual_kinds == expected_kinds, (path, actual_kinds, expected_kinds)
            assert r.missing == tuple(sorted(a for a in expect
                                             if views[a].state != "online")), path

        # Every asset answers a command as its state says: an empty one is refused as invalid
        # if online, else as unavailable in that state, or as "restarting" while its actor
        # waits out a restart backoff, which the shadow allows only for a while after a fault
        # (an actor answering otherwise runs, so nothing is pending for it any more). Refused
        # commands change nothing: no asset may differ afterwards (if one does, a step left
        # work waiting in a running actor's mailbox, and the probes' kernel runs did it).
        answers: dict[str, str] = {}
        for a in views:
            try:
                fleet.command(a, {})
            except InvalidCommand:
                answers[a] = "online"
            except AssetUnavailable as refused:
                answers[a] = refused.state
            except TwinError as error:
                answers[a] = repr(error)
            else:
                answers[a] = "accepted"
        after = {a: fleet.asset(a) for a in views}
        changed = {a: {"state": (views[a].state, after[a].state),
                       "last_sample_ts": (views[a].last_sample_ts, after[a].last_sample_ts),
                       "restarts": (views[a].restarts, after[a].restarts)}
                   for a in views if (views[a].state, views[a].last_sample_ts, views[a].restarts)
                   != (after[a].state, after[a].last_sample_ts, after[a].restarts)}
        assert not changed, (
            f"refused empty commands changed assets {changed}: the last step left their "
            "messages waiting in a running actor's mailbox")
        for a, answer in answers.items():
            state = views[a].state
            if answer == "restarting":
                assert self.restarting(a, state), (
                    f"{a} ({state}) is still restarting, long after its last fault "
                    f"(the restart backoff is at most 0.5 s and time moved on since)")
            else:
                assert answer in STATES, (
                    f"{a} ({state}): an empty command gave {answer}; Fleet.command "
                    "documents AssetUnavailable or InvalidCommand")
                assert answer == state, (a, state, answer)
                self.unsettled.pop(a, None)


SETTINGS = settings(max_examples=60, stateful_step_count=30, deadline=None, derandomize=True,
                    database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


class OneShardMachine(FleetMachine):
    shards = 1


class TwoShardMachine(FleetMachine):
    shards = 2


TestInvariantsOneShard = OneShardMachine.TestCase
TestInvariantsOneShard.settings = SETTINGS
TestInvariantsTwoShards = TwoShardMachine.TestCase
TestInvariantsTwoShards.settings = SETTINGS
