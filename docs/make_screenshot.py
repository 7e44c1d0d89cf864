"""Regenerate docs/live-view.png: the live view of a small simulated fleet.

    .venv/bin/python docs/make_screenshot.py [--out docs/live-view.png]

Runs about 70 assets for ten minutes of virtual time (a few never report, a few fall silent
part-way, one crash-loops into quarantine), then dispatches acme's batteries for a quarter of
a minute (one of them ignores its setpoint), serves the live view on a free port, drills into
a site with a missing asset, and has Debian's Chromium (headless, driven by Playwright) take
the picture. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
from pathlib import Path
from typing import Any

import structlog
from playwright.sync_api import expect, sync_playwright

from twin import Fleet, FleetModel, Sample, VirtualClock
from twin.control.transport import RecordingTransport
from twin.web import LiveServer

START = 1767225600.0     # 2026-01-01T00:00:00Z
KINDS: list[tuple[str, dict[str, float]]] = [
    ("turbine", {"rated_kw": 3000.0}),
    ("battery", {"rated_kw": 5.0, "capacity_kwh": 13.5}),
    ("charger", {"rated_kw": 22.0}),
]
LAYOUT = {"acme": {"north": 3, "south": 2}, "nordwind": {"coast": 3}}


def model_dict(rng: random.Random) -> dict[str, Any]:
    owners = []
    n = 0
    for owner, regions in LAYOUT.items():
        regions_out = []
        for region, sites in regions.items():
            sites_out = []
            for s in range(sites):
                assets = []
                for _ in range(rng.randint(6, 11)):
                    kind, fields = rng.choices(KINDS, weights=[2, 5, 3])[0]
                    assets.append({"id": f"{kind[0]}-{n:03d}", "kind": kind, **fields})
                    n += 1
                sites_out.append({"id": f"{region}-{s + 1}", "assets": assets})
            regions_out.append({"id": region, "sites": sites_out})
        owners.append({"id": owner, "regions": regions_out})
    return {"defaults": {"report_interval_s": 10, "offline_after_s": 30}, "owners": owners}


def power(kind: str, rated: float, t: float, rng: random.Random) -> float:
    if kind == "turbine":
        return rated * max(0.0, 0.55 + 0.3 * math.sin(t / 150) + rng.uniform(-0.05, 0.05))
    if kind == "battery":
        return rated * 0.8 * math.sin(t / 200 + rng.uniform(-0.2, 0.2))
    return -rated * rng.choice((0.0, 0.5, 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("live-view.png")))
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    # the crash loop is on purpose: keep its supervisor logs off the terminal
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    rng = random.Random(args.seed)
    model = FleetModel.from_dict(model_dict(rng))
    clock = VirtualClock(start=START)
    ids = sorted(model.assets)
    never = set(rng.sample(ids, 4))
    drop_at = {a: rng.uniform(120, 500) for a in rng.sample(sorted(set(ids) - never), 5)}
    crashy = rng.choice(sorted(set(ids) - never - set(drop_at)))
    batteries = [a for a in ids if model.assets[a].kind == "battery" and a not in never
                 and a not in drop_at and a != crashy
                 and model.sites[model.assets[a].site].owner == "acme"]
    stubborn = batteries[0]                     # acknowledges, but charges when told not to

    def report(t: float) -> None:
        samples = []
        for a in ids:
            if a in never or drop_at.get(a, math.inf) <= t:
                continue
            value = power(model.assets[a].kind, model.assets[a].rated_kw, t, rng)
            if a == stubborn:
                value = -2.0
            elif a in batteries:
                value = fleet.asset(a).desired.get("setpoint_kw", value)
            samples.append(Sample(a, clock.now(), {"power_kw": value, **(
                {"soc_pct": 60.0} if a in batteries else {})}))
        fleet.ingest(samples)

    with Fleet(model, clock=clock, seed=args.seed,
               transport=RecordingTransport(auto_ack=True)) as fleet, \
            LiveServer(fleet, port=0) as server:       # attached first: it samples the sparklines
        for step in range(60):                  # ten minutes, a report every 10 s
            report(step * 10.0)
            if step in (20, 21, 22, 23):
                fleet.inject_fault(crashy, "firmware parser bug")
            fleet.advance(10)
        dispatch = fleet.dispatch("acme", 40.0, duration_s=3600)
        for second in range(15):               # a control tick a second
            report(600.0 + second)
            fleet.advance(1)
        site = next(s.path for s in model.sites.values()
                    if any(a in drop_at for a in s.assets))
        shoot(server.url, site, dispatch.id, args.out)
    print(f"wrote {args.out} (site {site} drilled down)")


def shoot(url: str, site: str, dispatch_id: str, out: str) -> None:
    """Open the page, drill into ``site``, wait for the dispatch's row, take the picture."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 820})
            page.goto(url)
            row = page.locator(f'tr[data-path="{site}"]')
            expect(row.locator("td.reporting")).to_contain_text("/", timeout=10_000)
            row.locator("td.name").click()
            expect(page.locator("#assets tbody tr").first).to_be_visible()
            expect(page.locator("#transitions li").first).to_contain_text("went")
            expect(page.locator("#clock")).to_contain_text("UTC")
            expect(page.locator(f'#dispatches tr[data-dispatch="{dispatch_id}"]')).to_be_visible()
            page.screenshot(path=out, full_page=True)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
