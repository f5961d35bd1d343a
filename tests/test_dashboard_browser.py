"""The supervisor's view in a real headless Chromium (Debian's package, driven by Playwright):
a call streamed through the ingest server appears, raises a frustration alert, and the
acknowledgement made in the page persists in Redis."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from streamer.tools.client import stream_native

from .streaming import ServiceThread, calm_then_angry

CHROMIUM = os.environ.get("CALLMON_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("CALLMON_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        message = (f"Chromium not found at {CHROMIUM}: apt-get install chromium "
                   "(.ci/run does) or set CALLMON_CHROMIUM")
        if os.environ.get("CALLMON_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def test_supervisor_sees_the_alert_and_acknowledges_it(browser, shipped_model, redis_server,
                                                       ravdess_dir, call_actors):
    audio, onset = calm_then_angry(ravdess_dir, call_actors[2])
    calm_audio, _ = calm_then_angry(ravdess_dir, call_actors[0])
    with ServiceThread(shipped_model, redis_server.url) as svc:
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(svc.http_url + "/")
        page.wait_for_selector("#status.on", timeout=15_000)  # live updates connected
        # A second, calm call keeps going after the angry one, so the grid has two cards.
        calm = svc.submit(stream_native(svc.ingest_url + "/v1/stream", calm_audio[:, None],
                                        rate=16000, call_id="calm-call", speed=1.5,
                                        metadata={"agent": "Raj"}))
        angry = svc.submit(stream_native(svc.ingest_url + "/v1/stream", audio[:, None],
                                         rate=16000, call_id="angry-call", speed=2,
                                         metadata={"agent": "Ann", "queue": "billing",
                                                   "caller": "+44 20 7946 0018"}))
        page.wait_for_selector('.card[data-call="angry-call"]', timeout=20_000)
        page.wait_for_selector('.card[data-call="calm-call"]', timeout=20_000)
        # The alert shows in the feed and the card moves to the top of the grid.
        page.wait_for_selector("#alerts li.frustration.raised button.ack", timeout=90_000)
        button = page.locator("#alerts li.frustration.raised button.ack").first
        alert_id = button.get_attribute("data-alert")
        first_card = page.locator("#calls .card").first
        assert first_card.get_attribute("data-call") == "angry-call"
        assert "frustration" in first_card.inner_text()
        # Agent, queue and caller number from the call's metadata.
        assert "agent Ann · queue billing · caller +44 20 7946 0018" in first_card.inner_text()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
        button.click()
        page.wait_for_selector(f'#alerts li[data-alert="{alert_id}"] .acked-by', timeout=10_000)
        assert "acknowledged by supervisor" in page.inner_text(f'#alerts li[data-alert="{alert_id}"]')

        # Persisted: a fresh page and the API both show who acknowledged.
        log = httpx.get(svc.http_url + "/api/v1/alerts", params={"since": "0"}).json()
        ack = next(a for a in log if a.get("id") == alert_id)["ack"]
        assert ack["by"] == "supervisor"
        other = browser.new_page()
        other.goto(svc.http_url + "/")
        other.wait_for_selector(f'#alerts li[data-alert="{alert_id}"] .acked-by', timeout=15_000)

        # The call page: per-class timeline with the alert period shaded.
        page.goto(svc.http_url + "/#/call/angry-call")
        page.wait_for_selector("#call-charts svg polyline", timeout=10_000)
        assert page.locator("#call-charts rect.alert-period").count() >= 1
        page.screenshot(path=str(ARTIFACTS / "call.png"))
        angry.result(120)
        calm.result(120)

        # Once the calls end, every alert is resolved: one row per alert says how it ended and
        # for how long it was active, no Acknowledge button is left, nothing is counted.
        page.goto(svc.http_url + "/")
        page.wait_for_selector("#status.on", timeout=15_000)
        page.wait_for_function(
            "document.getElementById('summary').textContent.includes('0 live calls · 0 unacknowledged')",
            timeout=20_000)
        row = page.locator(f'#alerts li[data-alert="{alert_id}"]')
        assert "resolved" in row.get_attribute("class")
        text = row.inner_text()
        assert ("call ended after" in text or "cleared after" in text) and "into the call" in text
        assert page.locator("#alerts li.resolved button.ack").count() == 0
        assert page.locator("#alerts li").count() == len(
            [a for a in httpx.get(svc.http_url + "/api/v1/alerts", params={"since": "0"}).json()
             if a.get("type") == "alert" and a["state"] == "raised"])
