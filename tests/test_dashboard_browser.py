"""The supervisor's view in a real headless Chromium (Debian's package, driven by Playwright):
a call streamed through the ingest server appears, raises a frustration alert, and the
acknowledgement made in the page persists in Redis."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from streamer.tools.client import stream_native

from .streaming import ServiceThread, actor_clips, calm_then_angry

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


# Calls as another node would announce them, for the tests that play one's part in Redis.
ELSEWHERE = "elsewhere"


def _started(call_id: str):
    from streamer import schema
    from streamer.schema import CallEvent

    return CallEvent(id=schema.new_id(), type="call_started", call_id=call_id,
                     roles=("customer",), sample_rate=8000, encoding="mulaw",
                     protocol="twilio", node=ELSEWHERE)


def _ended(call_id: str, duration_s: float):
    from streamer import schema
    from streamer.schema import CallEvent

    return CallEvent(id=schema.new_id(), type="call_ended", call_id=call_id,
                     roles=("customer",), sample_rate=8000, encoding="mulaw",
                     protocol="twilio", reason="stop", duration_s=duration_s,
                     alerts_raised=0, node=ELSEWHERE)


def _window(call_id: str, index: int) -> str:
    from streamer import schema
    from streamer.schema import WindowResult

    return schema.dumps(WindowResult(
        call_id=call_id, role="customer", channel=0, window_index=index,
        start_s=float(index), end_s=index + 3.0, speech=True, speech_ratio=0.8,
        scores={"neutral": 0.6, "happy": 0.1, "sad": 0.1, "angry": 0.1, "fearful": 0.1},
        frustration=0.2, distress=0.1, node=ELSEWHERE))


def _go_live(r, *call_ids: str) -> None:
    """The calls live on a node that is alive (so no reaper ends them)."""
    from streamer import schema

    r.set(schema.node_key(ELSEWHERE), "{}")
    for call_id in call_ids:
        start = _started(call_id)
        r.zadd(schema.LIVE_CALLS_KEY, {call_id: start.ts})
        r.hset(schema.call_state_key(call_id), mapping={"start": schema.dumps(start)})


def _announce(r, event) -> None:
    """An alert or call event into the alert log and onto its channel."""
    from streamer import schema

    r.xadd(schema.ALERTS_STREAM, {"id": event.id, "type": event.type,
                                  "data": schema.dumps(event)})
    r.publish(schema.ALERTS_CHANNEL, schema.dumps(event))


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
        assert page.locator("#calls .empty").count() == 0  # "No live calls." is gone
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
        # and its alerts listed under it, with who acknowledged them
        page.wait_for_selector(f'#call-alerts li[data-alert="{alert_id}"] .acked-by',
                               timeout=10_000)
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


def only_card(page, call_id: str) -> None:
    """Wait until the grid shows exactly the card of ``call_id`` (filters re-render on the
    next animation frame, so the previous grid may still be there for a moment)."""
    page.wait_for_function(
        "id => { const cards = document.querySelectorAll('#calls .card');"
        " return cards.length === 1 && cards[0].dataset.call === id; }", arg=call_id,
        timeout=10_000)


def test_filters_notifications_ended_calls_and_a_live_call_page(browser, shipped_model,
                                                                redis_server, ravdess_dir,
                                                                call_actors):
    """What a supervisor uses beyond the grid: notifications (opt-in, remembered), filters
    and search (remembered), a call page that follows the call live and says clearly when a
    call id is unknown, the list of ended calls with their peaks, and the layout at a wide
    screen, a laptop and a phone."""
    audio, onset = calm_then_angry(ravdess_dir, call_actors[2])
    # A calm caller who stays on the line longer than the angry one (all eight of the
    # actor's calm clips, streamed slower), so the filter steps always see both calls.
    calm_audio = np.concatenate(actor_clips(ravdess_dir, call_actors[0], "calm", 8))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with ServiceThread(shipped_model, redis_server.url) as svc:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.goto(svc.http_url + "/")
        page.wait_for_selector("#status.on", timeout=15_000)
        # Notifications: off by default; switched on, they stay on after a reload.
        assert page.get_attribute("#notify", "aria-pressed") == "false"
        page.click("#notify")
        page.reload()
        page.wait_for_selector('#notify[aria-pressed="true"]', timeout=5_000)

        angry = svc.submit(stream_native(svc.ingest_url + "/v1/stream", audio[:, None],
                                         rate=16000, call_id="angry-1", speed=2,
                                         metadata={"agent": "Ann", "queue": "billing"}))
        calm = svc.submit(stream_native(svc.ingest_url + "/v1/stream", calm_audio[:, None],
                                        rate=16000, call_id="calm-2", speed=1.2,
                                        metadata={"agent": "Raj", "queue": "sales"}))
        page.wait_for_selector('.card[data-call="angry-1"]', timeout=20_000)
        page.wait_for_selector('.card[data-call="calm-2"]', timeout=20_000)

        # The call page opened by URL: the header counts live calls, the chart grows.
        call_page = context.new_page()
        call_page.goto(svc.http_url + "/#/call/angry-1")
        call_page.wait_for_selector("#call-charts svg polyline", timeout=20_000)
        call_page.wait_for_function(
            "document.getElementById('summary').textContent.includes('live call')", timeout=10_000)
        assert "(live)" in call_page.inner_text("#call-title")
        points = call_page.eval_on_selector("#call-charts svg polyline",
                                            "p => p.getAttribute('points').split(' ').length")
        call_page.wait_for_function(
            f"document.querySelector('#call-charts svg polyline').getAttribute('points')"
            f".split(' ').length > {points + 2}", timeout=20_000)
        assert "distress alert" in call_page.inner_text("#legend")

        # Filters and search narrow the grid, and are remembered.
        page.select_option("#f-queue", "sales")
        only_card(page, "calm-2")
        assert "showing 1 of 2" in page.inner_text("#f-count")
        page.reload()
        page.wait_for_selector('.card[data-call="calm-2"]', timeout=15_000)
        assert page.eval_on_selector("#f-queue", "s => s.value") == "sales"
        assert page.locator("#calls .card").count() == 1
        page.select_option("#f-queue", "")
        page.fill("#f-search", "angry")
        only_card(page, "angry-1")
        page.fill("#f-search", "")
        page.select_option("#f-agent", "Raj")
        only_card(page, "calm-2")
        page.select_option("#f-agent", "")

        # The alert: notified (sound and, where allowed, a desktop notification); "only calls
        # in alert" keeps the alerting call; the sparkline is scaled and its threshold named.
        page.wait_for_selector("#alerts li.frustration.raised", timeout=90_000)
        page.wait_for_function("Number(document.body.dataset.notified || 0) >= 1", timeout=5_000)
        # Acknowledged on the call page, where a notification leads: the grid hears of it.
        ack = call_page.locator("#call-alerts li.frustration.raised button.ack")
        ack.wait_for(timeout=10_000)
        alert_id = ack.get_attribute("data-alert")
        ack.click()
        call_page.wait_for_selector(f'#call-alerts li[data-alert="{alert_id}"] .acked-by',
                                    timeout=10_000)
        page.wait_for_selector(f'#alerts li[data-alert="{alert_id}"] .acked-by', timeout=10_000)
        page.check("#f-alerting")
        only_card(page, "angry-1")
        spark = page.text_content('.card[data-call="angry-1"] svg.spark')
        assert "frustration alert" in spark
        assert page.get_attribute('.card[data-call="angry-1"] .dur', "title").startswith("call time")
        page.uncheck("#f-alerting")
        for name, size in (("dashboard-1400x900", (1400, 900)),
                           ("dashboard-1920x1080", (1920, 1080)), ("dashboard-phone", (390, 844))):
            page.set_viewport_size({"width": size[0], "height": size[1]})
            page.wait_for_timeout(300)
            overflow = page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{name}: the page is {overflow} px wider than the screen"
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        page.set_viewport_size({"width": 1400, "height": 900})
        call_page.screenshot(path=str(ARTIFACTS / "call-live.png"))
        angry.result(120)
        calm.result(120)

        # Ended: the call page says so without a reload; the grid lists both ended calls
        # with their length, alerts and peak frustration.
        call_page.wait_for_function(
            "document.getElementById('call-title').textContent.includes('(ended)')", timeout=20_000)
        page.wait_for_selector('#ended-rows tr[data-call="angry-1"]', timeout=20_000)
        page.wait_for_selector('#ended-rows tr[data-call="calm-2"]', timeout=20_000)
        cells = page.locator('#ended-rows tr[data-call="angry-1"] td').all_inner_texts()
        assert cells[3] == "Ann" and cells[4] == "billing" and cells[5] == "stop"
        assert int(cells[6]) >= 1 and float(cells[7]) > 0.5
        ended = httpx.get(svc.http_url + "/api/v1/ended-calls", params={"since": "1h"}).json()
        assert {e["call_id"] for e in ended} >= {"angry-1", "calm-2"}
        assert next(e for e in ended if e["call_id"] == "angry-1")["peak_frustration"] > 0.5

        # An unknown call id, opened after a real call: a clear message, no stale chart.
        call_page.goto(svc.http_url + "/#/call/no-such-call")
        call_page.wait_for_function(
            "document.getElementById('call-title').textContent.startsWith('No call no-such-call')",
            timeout=10_000)
        assert call_page.locator("#call-charts svg").count() == 0
        assert call_page.locator("#call-feed").is_hidden()
        context.close()


def test_an_alert_raised_over_an_hour_ago_and_still_active_is_in_the_feed(
        browser, shipped_model, redis_server) -> None:
    """The feed loads the last hour of the alert log: an alert raised 70 minutes into a
    long call and still active was missing from it (and from the unacknowledged count)
    while its card showed the badge. It comes from the live call's state as well now."""
    import time

    import redis

    from streamer import schema
    from streamer.schema import Alert, CallEvent

    r = redis.Redis.from_url(redis_server.url)
    now = time.time()
    r.set(schema.node_key("elsewhere"), "{}")  # a live node, so the call is not reaped
    start = CallEvent(id=schema.new_id(), type="call_started", call_id="long-call",
                      roles=("customer",), sample_rate=8000, encoding="mulaw",
                      protocol="twilio", metadata={"agent": "Kim"}, ts=now - 7200,
                      node="elsewhere")
    alert = Alert(id=schema.new_id(), call_id="long-call", role="customer", kind="distress",
                  state="raised", score=0.8, threshold=0.65, window_index=3000,
                  call_time_s=3002.0, ts=now - 4200, node="elsewhere")
    r.xadd(schema.ALERTS_STREAM, {"id": start.id, "type": start.type,
                                  "data": schema.dumps(start)}, id=f"{int(start.ts * 1000)}-0")
    r.xadd(schema.ALERTS_STREAM, {"id": alert.id, "type": alert.type,
                                  "data": schema.dumps(alert)}, id=f"{int(alert.ts * 1000)}-0")
    r.zadd(schema.LIVE_CALLS_KEY, {"long-call": start.ts})
    r.hset(schema.call_state_key("long-call"), mapping={
        "start": schema.dumps(start), "alert:customer:distress": schema.dumps(alert)})
    with ServiceThread(shipped_model, redis_server.url) as svc:
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(svc.http_url + "/")
        page.wait_for_selector('.card[data-call="long-call"] .badge.distress', timeout=15_000)
        page.wait_for_selector(f'#alerts li[data-alert="{alert.id}"] button.ack', timeout=10_000)
        assert "1 unacknowledged alert" in page.inner_text("#summary")
        page.close()


def test_the_ended_calls_panel_keeps_up_while_calls_end_one_after_another(
        browser, shipped_model, redis_server) -> None:
    """The panel reloaded 800 ms after the *last* call_ended it heard of, each one putting
    the reload off again: with calls ending every 300 ms (a few hundred live calls across
    the nodes) it never reloaded while they kept ending. It reloads at most every 800 ms
    now, and at least that soon after a call ends."""
    import threading
    import time

    import redis

    r = redis.Redis.from_url(redis_server.url)
    ending = 8.0
    with ServiceThread(shipped_model, redis_server.url) as svc:
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(svc.http_url + "/")
        page.wait_for_selector("#status.on", timeout=15_000)

        def end_calls() -> None:
            for k in range(int(ending / 0.3)):
                _announce(r, _ended(f"end-{k}", 60.0))
                time.sleep(0.3)

        ender = threading.Thread(target=end_calls)
        ender.start()
        try:
            page.wait_for_selector('#ended-rows tr[data-call="end-0"]',
                                   timeout=int(1000 * ending) + 5000)
            assert ender.is_alive(), "the panel waited until calls stopped ending"
        finally:
            ender.join()
        page.wait_for_selector(f'#ended-rows tr[data-call="end-{int(ending / 0.3) - 1}"]',
                               timeout=10_000)
        page.close()


def test_a_page_opened_while_calls_speak_asks_for_the_grid_once(browser, shipped_model,
                                                                  redis_server) -> None:
    """A window result for a call the page does not know makes it fetch that call. While the
    page was still loading the grid, every live call's next result did: tens of single-call
    requests on opening a page of 100 live calls, each reading its 360 latest windows from
    Redis, answered then thrown away by the grid's own answer. Now results for unknown calls
    wait for the grid, which holds them."""
    import threading
    import time

    import redis

    from streamer import schema

    r = redis.Redis.from_url(redis_server.url)
    ids = [f"talking-{k:02d}" for k in range(20)]
    _go_live(r, *ids)
    stop = threading.Event()

    def speak() -> None:  # every call's results, one every 20 ms each
        index = 0
        while not stop.is_set():
            for call_id in ids:
                r.publish(schema.call_channel(call_id), _window(call_id, index))
            index += 1
            time.sleep(0.02)

    speaker = threading.Thread(target=speak)
    with ServiceThread(shipped_model, redis_server.url) as svc:
        speaker.start()
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            asked: list[str] = []
            page.on("request", lambda request: asked.append(request.url))
            page.goto(svc.http_url + "/")
            page.wait_for_function(
                f"document.querySelectorAll('#calls .card').length === {len(ids)}",
                timeout=20_000)
            time.sleep(2)
            one_by_one = [u for u in asked if "/api/v1/calls/" in u]
            assert not one_by_one, f"{len(one_by_one)} calls fetched one by one"
            assert sum("/api/v1/calls?" in u for u in asked) == 1
            page.close()
        finally:
            stop.set()
            speaker.join()


def test_a_call_page_keeps_what_the_call_sent_while_the_page_was_fetched(
        browser, shipped_model, redis_server) -> None:
    """The call page dropped the call's messages that came while its own answer was on the
    way: a call that ended then stayed "(live)" on it, and a result that came then was
    missing from its timeline. They are kept now, and applied to the answer unless it holds
    them already. (The answer is held back here while the call sends a window and ends.)"""
    import time

    import redis

    from streamer import schema

    r = redis.Redis.from_url(redis_server.url)
    _go_live(r, "ending-1")
    r.rpush(schema.call_timeline_key("ending-1"), *[_window("ending-1", i) for i in range(5)])

    held: list[str] = []

    def held_back(route) -> None:
        if held:  # a later fetch of the page (after the grid's reload): as it comes
            route.continue_()
            return
        held.append(route.request.url)
        answer = route.fetch()  # read before the call's last window and its end
        last, end = _window("ending-1", 40), _ended("ending-1", 43.0)
        r.rpush(schema.call_timeline_key("ending-1"), last)
        r.publish(schema.call_channel("ending-1"), last)
        r.hset(schema.call_state_key("ending-1"), "end", schema.dumps(end))
        r.zrem(schema.LIVE_CALLS_KEY, "ending-1")
        _announce(r, end)
        time.sleep(1.5)  # the page hears both meanwhile
        route.fulfill(response=answer)

    with ServiceThread(shipped_model, redis_server.url) as svc:
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(svc.http_url + "/")
        page.wait_for_selector("#status.on", timeout=15_000)
        page.route("**/api/v1/calls/ending-1", held_back)
        page.evaluate("location.hash = '#/call/ending-1'")
        page.wait_for_function(
            "document.getElementById('call-title').textContent.includes('(ended)')",
            timeout=10_000)
        assert "0:43 of call time" in page.inner_text("#call-meta")
        assert page.evaluate("current.detail.timeline.map((w) => w.window_index)") == [
            0, 1, 2, 3, 4, 40]
        page.close()


def test_a_call_page_shows_a_window_heard_twice_once(browser, shipped_model,
                                                   redis_server) -> None:
    """A window result can be heard twice (a publish repeated after a Redis blip whose reply
    was lost): the grid's sparkline took it once, the call page's timeline twice."""
    import redis

    from streamer import schema

    r = redis.Redis.from_url(redis_server.url)
    _go_live(r, "twice-1")
    r.rpush(schema.call_timeline_key("twice-1"), *[_window("twice-1", i) for i in range(3)])
    with ServiceThread(shipped_model, redis_server.url) as svc:
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        # The page asks for the call twice: for its address, and again once its live socket
        # opens (the reload after every reconnect), which starts the call page afresh. The
        # windows go out after the second answer is shown (on a slow machine, the first was
        # still being replaced when the test read it: null).
        answers: list[str] = []
        page.on("response", lambda r: r.url.endswith("/api/v1/calls/twice-1")
                and answers.append(r.url))
        page.goto(svc.http_url + "/#/call/twice-1")
        page.wait_for_selector("#status.on", timeout=15_000)
        deadline = time.monotonic() + 10
        while len(answers) < 2 and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        assert len(answers) == 2, answers
        page.wait_for_function("current && current.detail", timeout=10_000)
        for index in (3, 3, 2, 4):  # 3 twice; 2 was in the page's answer already
            r.publish(schema.call_channel("twice-1"), _window("twice-1", index))
        shown = page.wait_for_function(
            "current.detail.timeline.some((w) => w.window_index === 4)"
            " && current.detail.timeline.map((w) => w.window_index)", timeout=10_000)
        assert shown.json_value() == [0, 1, 2, 3, 4]
        page.close()


def test_a_live_message_the_page_cannot_read_is_left_out(browser, shipped_model,
                                                       redis_server) -> None:
    """A live message that is not what the page reads (a window whose scores are not numbers,
    from a broken writer or another version) threw on every redraw of its card, which stopped
    the redraw of the grid and the feed, and left a point that is not a number in the call's
    sparkline for three minutes. It is left out, and what follows is shown."""
    import json

    import redis

    from streamer import schema

    r = redis.Redis.from_url(redis_server.url)
    _go_live(r, "odd-1")
    errors: list[str] = []
    with ServiceThread(shipped_model, redis_server.url) as svc:
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(svc.http_url + "/")
        page.wait_for_selector("#status.on", timeout=15_000)
        page.wait_for_selector('.card[data-call="odd-1"]', timeout=10_000)
        odd = json.loads(_window("odd-1", 5))
        for broken in ({**odd, "frustration": "high"}, {**odd, "end_s": None}):
            r.publish(schema.call_channel("odd-1"), json.dumps(broken))
        r.publish(schema.call_channel("odd-1"), "not json")
        r.publish(schema.call_channel("odd-1"), _window("odd-1", 6))
        page.wait_for_function("(calls.get('odd-1').history.at(-1) || {}).t === 9",
                               timeout=10_000)
        page.wait_for_timeout(1500)  # a redraw or two
        assert page.evaluate("calls.get('odd-1').history.map((p) => p.f)") == [0.2]
        assert "frustration 0.20" in page.inner_text('.card[data-call="odd-1"]')
        assert errors == []
        page.close()


def test_what_happens_while_the_grid_loads_is_not_undone_by_its_answer(
        browser, shipped_model, redis_server) -> None:
    """The grid applied what it heard while its live calls were being fetched, then
    replaced everything with the answer, read before: a call that ended meanwhile came back
    as a live card that nothing would ever remove, and an alert raised meanwhile was missing
    from the feed. What is heard meanwhile is applied after the answer now. (The answer is
    held back here while one call ends and another raises an alert.)"""
    import time

    import redis

    from streamer import schema
    from streamer.schema import Alert

    r = redis.Redis.from_url(redis_server.url)
    _go_live(r, "ghost-1", "loud-1")
    alert = Alert(id=schema.new_id(), call_id="loud-1", role="customer", kind="frustration",
                  state="raised", score=0.8, threshold=0.45, window_index=12,
                  call_time_s=15.0, node=ELSEWHERE)
    held = []

    def held_back(route) -> None:
        if held:
            route.continue_()
            return
        held.append(route)
        answer = route.fetch()  # both calls live, no alert yet
        end = _ended("ghost-1", 30.0)
        r.hset(schema.call_state_key("ghost-1"), "end", schema.dumps(end))
        r.zrem(schema.LIVE_CALLS_KEY, "ghost-1")
        r.hset(schema.call_state_key("loud-1"), "alert:customer:frustration",
               schema.dumps(alert))
        _announce(r, end)
        _announce(r, alert)
        time.sleep(1.5)  # the page hears both meanwhile
        route.fulfill(response=answer)

    with ServiceThread(shipped_model, redis_server.url) as svc:
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.route("**/api/v1/calls?history=*", held_back)
        page.goto(svc.http_url + "/")
        page.wait_for_selector('.card[data-call="loud-1"]', timeout=15_000)
        page.wait_for_selector(f'#alerts li[data-alert="{alert.id}"]', timeout=10_000)
        time.sleep(1)  # a render or two later
        assert page.locator('.card[data-call="ghost-1"]').count() == 0
        assert held, "the grid's answer was not held back"
        page.close()


def test_a_page_that_falls_behind_reconnects_and_shows_what_it_missed(
        browser, shipped_model, redis_server, monkeypatch) -> None:
    """The page's end of a stream ended for falling behind (see
    ``test_a_browser_that_falls_behind_is_told_to_reload_not_left_short``): it goes
    offline, reconnects after the pause the server asked for, and reloads, so a call that
    ended in the burst it missed is gone from the grid and the call that started is on it.
    (Falling behind is made easy here: a queue of 5 messages, and a burst of 200.)"""
    import functools
    import time

    import redis

    from dashboard import app as dashboard_app
    from dashboard.hub import LiveHub
    from streamer import schema

    monkeypatch.setattr(dashboard_app, "LiveHub", functools.partial(LiveHub, queue_max=5))
    r = redis.Redis.from_url(redis_server.url)
    _go_live(r, "leaving-1")
    with ServiceThread(shipped_model, redis_server.url) as svc:
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(svc.http_url + "/")
        page.wait_for_selector('.card[data-call="leaving-1"]', timeout=15_000)
        end = _ended("leaving-1", 30.0)
        r.hset(schema.call_state_key("leaving-1"), "end", schema.dumps(end))
        r.zrem(schema.LIVE_CALLS_KEY, "leaving-1")
        _go_live(r, "arriving-1")
        pipe = r.pipeline(transaction=False)  # one burst: more than the queue holds
        for index in range(200):
            pipe.publish(schema.call_channel("arriving-1"), _window("arriving-1", index))
        pipe.xadd(schema.ALERTS_STREAM, {"id": end.id, "type": end.type,
                                         "data": schema.dumps(end)})
        pipe.publish(schema.ALERTS_CHANNEL, schema.dumps(end))
        pipe.execute()
        page.wait_for_selector("#status.off", timeout=10_000)
        went_off = time.monotonic()
        page.wait_for_selector("#status.on", timeout=20_000)
        assert time.monotonic() - went_off > 3, "it reconnected before the pause"
        page.wait_for_selector('.card[data-call="arriving-1"]', timeout=10_000)
        page.wait_for_selector('.card[data-call="leaving-1"]', state="detached",
                               timeout=10_000)
        page.close()
