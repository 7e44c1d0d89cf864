"""The live view in a real browser: Playwright drives Debian's Chromium (headless).

A small fleet runs in virtual time; the test silences one asset and watches the page, without
reloading it, turn that site's row to ``n-1/n`` and list the asset as missing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from twin import Fleet, FleetModel, Sample, VirtualClock
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
