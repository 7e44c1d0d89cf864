"""The live view in a real browser: Playwright drives Debian's Chromium (headless).

A small fleet runs in virtual time; one test silences an asset and watches the page, without
reloading it, turn that site's row to ``n-1/n`` and list the asset as missing; another starts
a dispatch through the HTTP API and watches the dispatch panel show its target and what it
achieves, and the rows of a battery that ignores its setpoint say "1 not following".
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from twin import Fleet, FleetModel, Sample, VirtualClock
from twin.control.transport import RecordingTransport
from twin.web import LiveServer

CHROMIUM = "/usr/bin/chromium"
REQUIRED = os.environ.get("TWIN_REQUIRE_BROWSER") == "1"
SITE = "acme/north/alpha"


def _needs_browser() -> Any:
    """playwright.sync_api, or a skip (a failure when TWIN_REQUIRE_BROWSER=1, as in CI)."""
    problems = []
    if not Path(CHROMIUM).exists():
        problems.append(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright import sync_api
    except ImportError:
        problems.append("the playwright Python package is not installed")
    if problems:
        reason = "the browser test needs " + "; ".join(problems)
        if REQUIRED:
            pytest.fail(f"TWIN_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return sync_api


@pytest.fixture
def small_fleet(clock: VirtualClock) -> Iterator[Fleet]:
    model = FleetModel.from_dict({
        "defaults": {"report_interval_s": 10, "offline_after_s": 30},
        "owners": [{"id": "acme", "regions": [{"id": "north", "sites": [
            {"id": "alpha", "assets": [
                {"id": "t-01", "kind": "turbine", "rated_kw": 3000},
                {"id": "t-02", "kind": "turbine", "rated_kw": 3000},
                {"id": "t-03", "kind": "turbine", "rated_kw": 3000}]},
            {"id": "beta", "assets": [
                {"id": "b-01", "kind": "battery", "rated_kw": 5000, "capacity_kwh": 13500}]}]}]}],
    })
    with Fleet(model, clock=clock) as fleet:
        yield fleet


def report(fleet: Fleet, clock: VirtualClock, silent: str = "") -> None:
    fleet.ingest([Sample(a, clock.now(), {"power_kw": 2000.0 + i * 100})
                  for i, a in enumerate(fleet.model.assets) if a != silent])


def test_a_silenced_asset_turns_its_site_to_n_minus_1_and_is_listed_missing_live(
        small_fleet: Fleet, clock: VirtualClock) -> None:
    sync_api = _needs_browser()
    expect = sync_api.expect
    report(small_fleet, clock)
    with LiveServer(small_fleet, port=0) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.goto(server.url)
            row = page.locator(f'tr[data-path="{SITE}"]')
            expect(row.locator("td.reporting")).to_have_text("3/3", timeout=10_000)
            expect(row.locator("td.power")).to_have_text("6.30")
            page.evaluate("window.__sameDocument = true")
            row.locator("td.name").click()
            silent_row = page.locator('#assets tr[data-asset="t-03"]')
            expect(silent_row.locator(".state")).to_have_text("online")

            for _ in range(4):              # t-03 falls silent; 40 s of virtual time pass
                small_fleet.advance(10)
                report(small_fleet, clock, silent="t-03")

            expect(row.locator("td.reporting")).to_have_text("2/3")
            expect(row.locator("td.reporting")).to_have_class(re.compile(r"\bdegraded\b"))
            expect(row.locator("td.missing")).to_have_text("t-03")
            expect(page.locator('tr[data-path="acme"] td.reporting')).to_have_text("3/4")
            expect(silent_row).to_have_class(re.compile(r"\bmissing\b"))
            expect(silent_row.locator(".state")).to_have_text("offline")
            expect(silent_row.locator("td.reported")).to_have_class(re.compile(r"\bstale\b"))
            expect(silent_row.locator("td.reported .age")).to_contain_text("s ago")
            expect(page.locator("#transitions li").first).to_contain_text("t-03 went offline")
            assert page.evaluate("window.__sameDocument") is True     # never reloaded
        finally:
            browser.close()


@pytest.fixture
def battery_fleet(clock: VirtualClock) -> Iterator[Fleet]:
    """Two 100 kW batteries at one site (a transport that acknowledges at once) and a
    turbine at another."""
    model = FleetModel.from_dict({
        "defaults": {"report_interval_s": 10, "offline_after_s": 30},
        "owners": [{"id": "acme", "regions": [{"id": "north", "sites": [
            {"id": "alpha", "assets": [{"id": "t-01", "kind": "turbine", "rated_kw": 3000}]},
            {"id": "beta", "assets": [
                {"id": "b-01", "kind": "battery", "rated_kw": 100, "capacity_kwh": 200},
                {"id": "b-02", "kind": "battery", "rated_kw": 100, "capacity_kwh": 200}]}]}]}],
    })
    with Fleet(model, clock=clock, transport=RecordingTransport(auto_ack=True)) as fleet:
        yield fleet


def batteries_report(fleet: Fleet, clock: VirtualClock) -> None:
    """b-01 follows its setpoint; b-02 is stuck at 30 kW whatever it is asked."""
    setpoint = fleet.asset("b-01").desired.get("setpoint_kw", 0.0)
    fleet.ingest([Sample("t-01", clock.now(), {"power_kw": 1000.0}),
                  Sample("b-01", clock.now(), {"power_kw": setpoint, "soc_pct": 50.0}),
                  Sample("b-02", clock.now(), {"power_kw": 30.0, "soc_pct": 50.0})])


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def test_a_dispatch_started_over_http_shows_target_and_achieved_and_who_does_not_follow(
        battery_fleet: Fleet, clock: VirtualClock) -> None:
    sync_api = _needs_browser()
    expect = sync_api.expect
    fleet = battery_fleet
    batteries_report(fleet, clock)
    with LiveServer(fleet, port=0) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.goto(server.url)
            site = page.locator('tr[data-path="acme/north/beta"]')
            expect(site.locator("td.reporting")).to_have_text("2/2", timeout=10_000)
            expect(page.locator("#dispatch-panel")).to_be_hidden()
            page.evaluate("window.__sameDocument = true")

            started = post_json(server.url + "api/dispatch", {
                "path": "acme/north/beta", "target_kw": 150, "duration_s": 3600})
            row = page.locator(f'#dispatches tr[data-dispatch="{started["id"]}"]')
            expect(row.locator("td.target")).to_have_text("150")
            expect(row.locator("td.eligible")).to_have_text("2/2")

            # b-02 stays at 30 kW: past its dead time and settle time it is "not following",
            # left out of the dispatch, and b-01 takes what it can (its 100 kW)
            for _ in range(30):
                fleet.advance(1)
                batteries_report(fleet, clock)
                if fleet.rollup("acme/north/beta").not_following:
                    break
            fleet.advance(1)                    # one more tick: b-01 at its new setpoint
            batteries_report(fleet, clock)
            fleet.advance(1)
            report = fleet.get_dispatch(started["id"]).report()
            assert report is not None and report.achieved_kw == 130.0      # 100 + b-02's 30

            expect(row.locator("td.target")).to_have_text("150")
            expect(row.locator("td.achieved")).to_have_text("130")
            expect(row.locator("td.achieved")).to_have_class(re.compile(r"\boff\b"))
            expect(row.locator("td.allocated")).to_have_text("100")
            expect(row.locator("td.eligible")).to_have_text("1/2")
            expect(row.locator("td.excluded")).to_have_text("1 not following its setpoint")
            expect(row.locator("td.binding")).to_contain_text("1 eligible asset")
            following = site.locator("td.missing .following")
            expect(following).to_have_text("1 not following")
            expect(following).to_have_attribute("title", "not following their setpoint: b-02")
            expect(page.locator('tr[data-path="acme"] td.missing')).to_have_text(
                "1 not following")
            expect(page.locator('tr[data-path="acme/north/alpha"] td.missing')).to_have_text("")

            fleet.get_dispatch(started["id"]).cancel()
            expect(page.locator("#dispatch-panel")).to_be_hidden()
            assert page.evaluate("window.__sameDocument") is True     # never reloaded
        finally:
            browser.close()
