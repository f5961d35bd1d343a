"""The REST API against a real Redis and a real streamer, over real HTTP."""

from __future__ import annotations

import asyncio
import io
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr

from streamer.tools.client import stream_native

from .streaming import ServiceThread, actor_clips, calm_then_angry


@pytest.fixture
def service(shipped_model, redis_server):
    with ServiceThread(shipped_model, redis_server.url, max_upload_bytes=2_000_000) as svc:
        yield svc


def wav_bytes(audio: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_calls_alerts_and_acknowledgement(service, ravdess_dir, call_actors):
    audio, onset = calm_then_angry(ravdess_dir, call_actors[2])
    http = httpx.Client(base_url=service.http_url, timeout=10)
    future = service.submit(stream_native(service.ingest_url + "/v1/stream", audio[:, None],
                                          rate=16000, call_id="api-call", speed=6,
                                          metadata={"agent": "Ann"}))
    wait_until(lambda: any(c["call_id"] == "api-call" for c in http.get("/api/v1/calls").json()),
               20, "the call to be listed")
    live = http.get("/api/v1/calls").json()[0]
    assert live["agent"] == "Ann" and live["live"] is True and "timeline" not in live
    wait_until(lambda: len(http.get("/api/v1/calls/api-call").json()["timeline"]) >= 3, 30,
               "three windows")
    # With history, each live call comes with the points its sparkline draws, in one request.
    listed = http.get("/api/v1/calls", params={"history": 2}).json()[0]
    later = [[w["end_s"], w["frustration"], w["distress"]]
             for w in http.get("/api/v1/calls/api-call").json()["timeline"]
             if w["role"] == "customer" and w["frustration"] is not None]
    assert len(listed["history"]) == 2 and listed["history"][0] in later
    assert later[later.index(listed["history"][0]) + 1] == listed["history"][1]
    assert listed["call_time_s"] == listed["history"][1][0]  # a mono call: customer only
    for history in ("0", "1001", "many"):
        assert http.get("/api/v1/calls", params={"history": history}).status_code == 422
    outcome = future.result(120)
    assert http.get("/api/v1/calls").json() == []  # ended calls leave the live grid
    call = http.get("/api/v1/calls/api-call").json()
    assert call["live"] is False and call["end"]["reason"] == "stop"
    assert len(call["timeline"]) == len(outcome.windows)
    assert len(http.get("/api/v1/calls/api-call", params={"tail": 5}).json()["timeline"]) == 5
    for tail in ("99999999999999999999", "0", "-3", "many"):  # a 500 before issue 11
        assert http.get("/api/v1/calls/api-call", params={"tail": tail}).status_code == 422

    log = http.get("/api/v1/alerts", params={"since": "0"}).json()
    raised = [a for a in log if a["type"] == "alert" and a["state"] == "raised"]
    assert raised and raised[0]["call_id"] == "api-call" and raised[0]["ack"] is None
    assert raised[0]["call_time_s"] > onset
    ack_url = f"/api/v1/alerts/{raised[0]['id']}/ack"
    # A note is kept with the acknowledgement (it used to be accepted and dropped), within
    # its length limit.
    assert http.post(ack_url, json={"note": "x" * 501}).status_code == 422
    ack = http.post(ack_url, json={"note": "called the customer back"}).json()
    assert ack["by"] == "supervisor" and ack["at"] > 0
    assert ack["note"] == "called the customer back"
    again = http.post(ack_url, headers={"X-Supervisor": "bob"}, json={}).json()
    assert again == ack  # the first acknowledgement stands
    log = http.get("/api/v1/alerts", params={"since": "0"}).json()
    assert next(a for a in log if a["id"] == raised[0]["id"])["ack"] == ack
    # The call page's alert periods: the call's own alerts, raised and cleared (at the
    # latest when the call ended), in the log's order, read without the log.
    history = http.get("/api/v1/calls/api-call").json()["alert_history"]
    assert [a["id"] for a in history] == [a["id"] for a in log if a["type"] == "alert"]
    assert history[0] == {k: v for k, v in raised[0].items() if k != "stream_id"} | {"ack": ack}
    assert history[-1]["state"] == "cleared"
    only = http.get("/api/v1/alerts", params={"since": "0", "type": "alert,call_ended"}).json()
    assert [a["id"] for a in only] == [a["id"] for a in log if a["type"] != "call_started"]
    wrong = http.get("/api/v1/alerts", params={"type": "alert,window"})
    assert wrong.status_code == 422 and "'window'" in wrong.json()["detail"]
    assert http.get("/api/v1/alerts", params={"since": "10m"}).json()[0]["type"] == "call_started"

    assert http.get("/api/v1/calls/nope").status_code == 404
    assert http.post("/api/v1/alerts/nope/ack", json={}).status_code == 404
    bogus = http.get("/api/v1/alerts", params={"since": "bogus"})
    assert bogus.status_code == 422 and "neither a duration" in bogus.json()["detail"]
    for since in ("bogus", ""):  # "" reached store.ended_calls unchecked: a 500 (fuzzing)
        assert http.get("/api/v1/ended-calls", params={"since": since}).status_code == 422
        assert http.get("/api/v1/alerts", params={"since": since}).status_code == 422
    ended = http.get("/api/v1/ended-calls", params={"since": "1h"}).json()
    assert ended[0]["call_id"] == "api-call" and ended[0]["alerts_raised"] >= 1
    assert ended[0]["peak_frustration"] >= raised[0]["score"] - 1e-3
    metrics = http.get("/metrics").text
    assert "callmon_windows_scored_total" in metrics and "callmon_alerts_raised_total 1" in metrics
    assert 'callmon_window_latency_ms_bucket{le="+Inf"}' in metrics
    assert "callmon_dashboard_streams_behind_total 0" in metrics
    health = http.get("/healthz").json()
    assert health["status"] == "ok" and health["model"]["variant"] == "int8"
    assert "/api/v1/predict" in http.get("/openapi.json").json()["paths"]
    # The API docs page works offline: Swagger UI is served from the dashboard itself.
    docs = http.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert len(http.get("/docs-assets/swagger-ui-bundle.js").content) > 500_000
    assert http.get("/docs-assets/swagger-ui.css").status_code == 200


def test_predict(service, ravdess_dir, call_actors):
    http = httpx.Client(base_url=service.http_url, timeout=30)
    clips = actor_clips(ravdess_dir, call_actors[2], "angry", 3, intensity="02")
    ten_s = np.concatenate(clips)[: 10 * 16000]
    r = http.post("/api/v1/predict", files={"file": ("call.wav", wav_bytes(ten_s, 16000))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] in body["scores"] and abs(sum(body["scores"].values()) - 1) < 1e-3
    assert body["duration_s"] == 10.0 and len(body["windows"]) == 8
    assert body["windows"][-1]["end_s"] == 10.0
    # 8 kHz telephone audio is resampled and scored the same way.
    tel = soxr.resample(ten_s, 16000, 8000)
    r8 = http.post("/api/v1/predict", files={"file": ("tel.wav", wav_bytes(tel, 8000))})
    assert r8.status_code == 200 and r8.json()["sample_rate_in"] == 8000
    short = http.post("/api/v1/predict", files={"file": ("s.flac", wav_bytes(ten_s[:8000], 16000))})
    assert short.status_code == 200 and short.json()["windows"] == []
    # Digital silence: no speech, so no emotion (it used to answer "sad" 0.52).
    hush = http.post("/api/v1/predict",
                     files={"file": ("z.wav", wav_bytes(np.zeros(5 * 16000, np.float32), 16000))})
    assert hush.status_code == 200 and hush.json()["speech"] is False
    assert hush.json()["label"] is None and "no speech" in hush.json()["message"]
    assert all(w["speech"] is False and w["label"] is None for w in hush.json()["windows"])
    # A recording of the line ringing: a tone, no voice (it used to answer "sad" 0.56).
    from streamer.tools.line_sounds import cadenced_tone

    ringing = soxr.resample(cadenced_tone("ringback_uk", 10.0), 16000, 8000)
    rang = http.post("/api/v1/predict", files={"file": ("r.wav", wav_bytes(ringing, 8000))})
    assert rang.status_code == 200 and rang.json()["speech"] is False
    assert rang.json()["label"] is None and len(rang.json()["windows"]) == 8
    # Stereo: each channel scored as the streamer does (customer left, agent right).
    calm = np.concatenate(actor_clips(ravdess_dir, call_actors[2], "calm", 3))[: 10 * 16000]
    stereo = np.stack([ten_s, np.zeros_like(ten_s)], axis=1)
    stereo[: len(calm), 1] = calm
    both = http.post("/api/v1/predict", files={"file": ("s.wav", wav_bytes(stereo, 16000))})
    assert both.status_code == 200 and both.json()["channels_in"] == 2
    channels = both.json()["channels"]
    assert set(channels) == {"customer", "agent"}
    assert channels["customer"]["label"] == body["label"] == both.json()["label"]
    assert channels["customer"]["scores"] == body["scores"]
    assert channels["agent"]["speech"] is True
    assert channels["agent"]["scores"] != channels["customer"]["scores"]


def test_predict_uploads_take_turns_and_a_full_line_is_told_to_retry(
        shipped_model, redis_server, ravdess_dir, call_actors) -> None:
    """Scoring a long upload is seconds of CPU that a serve process's live calls share, and
    every upload sent at once ran at once. One is scored at a time, one more waits its turn,
    and the rest are told at once to retry (503, Retry-After) rather than queued without end."""
    from concurrent.futures import ThreadPoolExecutor

    speech = np.concatenate(actor_clips(ravdess_dir, call_actors[2], "calm", 8))
    two_minutes = soxr.resample(np.resize(speech, 120 * 16000), 16000, 8000)
    body = wav_bytes(two_minutes, 8000)
    with ServiceThread(shipped_model, redis_server.url, max_upload_bytes=2_000_000,
                       predict_concurrency=1, predict_queue=1) as svc:
        def upload(_: int) -> httpx.Response:
            return httpx.post(svc.http_url + "/api/v1/predict", timeout=120,
                              files={"file": ("call.wav", body)})

        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(upload, range(4)))
    assert sorted(r.status_code for r in responses) == [200, 200, 503, 503], \
        [(r.status_code, r.text[:100]) for r in responses]
    for busy in (r for r in responses if r.status_code == 503):
        assert busy.headers["retry-after"] == "5"
        assert busy.json()["detail"].startswith("busy: 1 upload(s) being scored and 1 waiting")
    first, second = (r.json() for r in responses if r.status_code == 200)
    assert first["duration_s"] == 120.0 and first["scores"] == second["scores"]


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        (b"this is not audio at all", 415, "not a readable audio file"),
        (b"", 422, "empty"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", 415, "not a readable audio file"),  # truncated header
    ],
)
def test_predict_rejects_bad_uploads(service, payload, status, message):
    r = httpx.post(service.http_url + "/api/v1/predict", files={"file": ("x.wav", payload)})
    assert r.status_code == status and message in r.json()["detail"]
    assert "object at 0x" not in r.json()["detail"]  # no Python reprs in error bodies


def test_predict_rejects_nan_and_oversize(service):
    nan = np.zeros(16000, np.float32)
    nan[100] = np.nan
    r = httpx.post(service.http_url + "/api/v1/predict",
                   files={"file": ("nan.wav", wav_bytes(nan, 16000, "FLOAT"))})
    assert r.status_code == 422 and "NaN" in r.json()["detail"]
    big = wav_bytes(np.zeros(16000 * 70, np.float32), 16000)  # 2.2 MB > 2 MB limit
    r = httpx.post(service.http_url + "/api/v1/predict", files={"file": ("big.wav", big)})
    assert r.status_code == 413
    zero = wav_bytes(np.zeros(0, np.float32), 16000)
    r = httpx.post(service.http_url + "/api/v1/predict", files={"file": ("zero.wav", zero)})
    assert r.status_code == 422


def test_supervisor_credential(shipped_model, redis_server):
    with ServiceThread(shipped_model, redis_server.url, supervisor_password="pw",
                       supervisor_token="tok") as svc:
        base = svc.http_url
        assert httpx.get(base + "/api/v1/calls").status_code == 401
        assert httpx.get(base + "/", auth=("supervisor", "wrong")).status_code == 401
        assert httpx.get(base + "/api/v1/calls", auth=("supervisor", "pw")).json() == []
        assert httpx.get(base + "/api/v1/calls",
                         headers={"Authorization": "Bearer tok"}).status_code == 200
        assert httpx.get(base + "/healthz").status_code == 200  # probes need no credential
        # Without the credential: only the status; no Redis address, errors or counters.
        assert httpx.get(base + "/healthz").json() == {"status": "ok"}
        full = httpx.get(base + "/healthz", auth=("supervisor", "pw")).json()
        assert "last_error" in full["streamer"]["redis"]
        for path in ("/metrics", "/openapi.json", "/docs"):
            assert httpx.get(base + path).status_code == 401, path
            assert httpx.get(base + path, auth=("supervisor", "pw")).status_code == 200, path
    with ServiceThread(shipped_model, redis_server.url, supervisor_password="pw",
                       public_metrics=True) as svc:
        assert httpx.get(svc.http_url + "/metrics").status_code == 200  # opted out: scrapers
        assert httpx.get(svc.http_url + "/openapi.json").status_code == 401


def test_dashboard_refuses_to_open_beyond_loopback_without_credential():
    from dashboard.server import supervisor_auth
    from dashboard.settings import DashboardSettings

    with pytest.raises(ValueError, match="without a credential"):
        supervisor_auth(DashboardSettings(host="0.0.0.0"))
    assert supervisor_auth(DashboardSettings(host="0.0.0.0", supervisor_password="x")).enabled


def test_one_bad_stored_event_does_not_blind_the_dashboard(service, redis_server):
    """A stored event the readers cannot decode (a lone surrogate, a truncated write) used
    to make /api/v1/calls, /calls/{id} and /alerts answer 500 for an hour: now it is
    skipped, and everything else is still listed."""
    import json

    import redis

    from dashboard import store
    from streamer import schema

    r = redis.Redis.from_url(redis_server.url)
    now = time.time()
    good = {"v": 1, "type": "call_started", "id": "e1", "call_id": "good", "roles": ["customer"],
            "sample_rate": 16000, "encoding": "pcm_s16le", "protocol": "native",
            "metadata": {}, "ts": now, "node": "n"}
    bad = json.dumps({**good, "id": "e2", "call_id": "bad", "metadata": {"agent": "\ud800"}})
    r.hset(schema.call_state_key("good"), mapping={"start": json.dumps(good),
                                                   "last:customer": "{truncated"})
    r.hset(schema.call_state_key("bad"), mapping={"start": bad})
    r.zadd(schema.LIVE_CALLS_KEY, {"good": now, "bad": now})
    r.rpush(schema.call_timeline_key("good"), json.dumps({"window_index": 0}), bad, "[[[")
    no_id = json.dumps({**good, "id": ["e3"], "call_id": "no-id"})  # read, but not a message
    x = schema.new_id()  # the id of each entry: what an acknowledgement of x finds
    for data in (bad, "not json", no_id, json.dumps(good)):
        r.xadd(schema.ALERTS_STREAM, {"id": x, "type": "call_started", "data": data})
    before = store.undecodable
    http = httpx.Client(base_url=service.http_url)
    calls = http.get("/api/v1/calls")
    assert calls.status_code == 200 and [c["call_id"] for c in calls.json()] == ["good"]
    one = http.get("/api/v1/calls/good")
    assert one.status_code == 200 and one.json()["timeline"] == [{"window_index": 0}]
    assert one.json()["last"] == {}
    assert http.get("/api/v1/calls/bad").status_code == 404
    log = http.get("/api/v1/alerts", params={"since": "0"})
    assert log.status_code == 200 and [e["call_id"] for e in log.json()] == ["good"]
    # Acknowledging reads the log from the id's time on: past the unreadable entries to
    # the readable one, which is no alert.
    ack = http.post(f"/api/v1/alerts/{x}/ack")
    assert ack.status_code == 404 and "no alert" in ack.json()["detail"]
    assert store.undecodable > before


def test_stored_events_without_the_fields_read_do_not_blind_the_dashboard(service,
                                                                           redis_server):
    """A stored message that decodes but lacks what the dashboard reads of it (a call start
    without its time: another writer, an older version) made the grid answer 500 for as long
    as the call's state was kept; an alert's score as a string, or metadata that is not an
    object, broke the page that drew it. Each such message is skipped, as an unreadable one
    is, and everything else is still listed."""
    import json

    import redis

    from dashboard import store
    from streamer import schema

    r = redis.Redis.from_url(redis_server.url)
    now = time.time()
    r.set(schema.node_key("shape-node"), "{}")
    start = {"v": 1, "type": "call_started", "id": schema.new_id(), "call_id": "", "node":
             "shape-node", "roles": ["customer"], "sample_rate": 8000, "encoding": "mulaw",
             "protocol": "twilio", "metadata": {"agent": "Ann"}, "ts": now}
    alert = {"v": 1, "type": "alert", "id": schema.new_id(), "call_id": "shape-fine",
             "role": "customer", "kind": "distress", "state": "raised", "score": 0.9,
             "threshold": 0.65, "window_index": 4, "call_time_s": 7.0, "raised_id": None,
             "reason": None, "ts": now, "node": "shape-node"}
    stringly = {**alert, "id": schema.new_id(), "score": "0.9"}
    states = {
        "shape-fine": {},
        "shape-no-ts": {"start": {k: v for k, v in start.items() if k != "ts"}},
        "shape-meta": {"start": {**start, "metadata": "vip"}},
        "shape-alert": {"alert:customer:distress": {"id": "x", "state": "raised"}},
        "shape-last": {"last:customer": {"frustration": "high", "distress": 0.1}},
        "shape-end": {"end": {"type": "call_ended"}},
    }
    for call_id, fields in states.items():
        fields = {"start": {**start, "call_id": call_id}, **fields}
        r.hset(schema.call_state_key(call_id),
               mapping={k: json.dumps({**v, "call_id": call_id} if k == "start" else v)
                        for k, v in fields.items()})
        r.zadd(schema.LIVE_CALLS_KEY, {call_id: now})
    ended = {**start, "type": "call_ended", "reason": "stop", "duration_s": 30.0,
             "alerts_raised": 1, "peaks": {"customer": {"frustration": 0.2, "distress": 0.9}}}
    for call_id, changed in (("shape-ended", {}), (None, {}), ("shape-ended-peaks", {"peaks": [1]}),
                             ("shape-ended-meta", {"metadata": "x"}),
                             ("shape-ended-ts", {"ts": "late"})):
        event = {**ended, **changed, "id": schema.new_id(), "call_id": call_id}
        if call_id is None:
            del event["call_id"]
        r.xadd(schema.ALERTS_STREAM, {"id": event["id"], "type": "call_ended",
                                      "data": json.dumps(event)})
    for a in (stringly, alert):
        r.xadd(schema.ALERTS_STREAM, {"id": a["id"], "type": "alert", "data": json.dumps(a)})
        r.rpush(schema.call_alerts_key("shape-fine"), json.dumps(a))
    r.hset(schema.ACKS_KEY, alert["id"], json.dumps({"by": 5, "at": "noon"}))
    before = store.undecodable
    http = httpx.Client(base_url=service.http_url)

    calls = http.get("/api/v1/calls", params={"history": 10})
    assert calls.status_code == 200, calls.text
    listed = {c["call_id"]: c for c in calls.json() if c["call_id"].startswith("shape-")}
    assert sorted(listed) == ["shape-alert", "shape-fine", "shape-last"]
    assert listed["shape-alert"]["alerts"] == {} and listed["shape-last"]["last"] == {}
    for call_id in ("shape-no-ts", "shape-meta", "shape-end"):
        assert http.get(f"/api/v1/calls/{call_id}").status_code == 404
    one = http.get("/api/v1/calls/shape-fine")
    assert one.status_code == 200 and [a["id"] for a in one.json()["alert_history"]] == [
        alert["id"]]
    assert one.json()["alert_history"][0]["ack"] is None  # its acknowledgement is unreadable
    gone = http.get("/api/v1/ended-calls", params={"since": "1h"})
    assert gone.status_code == 200
    assert [e["call_id"] for e in gone.json() if e["call_id"].startswith("shape-")] == [
        "shape-ended"]
    feed = http.get("/api/v1/alerts", params={"since": "1h", "type": "alert"})
    assert feed.status_code == 200
    assert [a["id"] for a in feed.json() if a["call_id"] == "shape-fine"] == [alert["id"]]
    assert store.undecodable > before


def test_half_sent_requests_are_dropped_and_log_storms_are_held(shipped_model, redis_server):
    """300 half-sent requests held the dashboard's descriptors for minutes (issue 11): a
    request's headers must now arrive within the deadline; the rest still answers."""
    import logging
    import socket

    from streamer.logfilter import RepeatFilter

    with ServiceThread(shipped_model, redis_server.url, http_header_timeout_s=1.0) as svc:
        port = int(svc.http_url.rsplit(":", 1)[1])
        socks = []
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
            socks.append(s)
        assert httpx.get(svc.http_url + "/healthz").status_code == 200
        time.sleep(2.0)
        closed = 0
        for s in socks:
            s.settimeout(0.2)
            try:
                closed += s.recv(100) == b""
            except TimeoutError:
                pass  # still held open by the server
            except ConnectionError:
                closed += 1
            s.close()
        assert closed == 50
        # A slow but complete request within the deadline is served.
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.3)
        s.sendall(b"Host: x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        s.close()
    f = RepeatFilter(interval_s=60)
    rec = [logging.LogRecord("asyncio", logging.ERROR, "x.py", 7, "accept failed", None, None)
           for _ in range(1000)]
    assert sum(f.filter(r) for r in rec) == 1


def test_live_hub_reads_redis_only_while_a_browser_watches(redis_server):
    from dashboard.hub import LiveHub
    from streamer import redis_client, schema

    async def scenario() -> None:
        client = redis_client.connect(redis_server.url)
        hub = LiveHub(client, linger_s=0.2)
        try:
            await client.publish(schema.call_channel("c-1"), "before anyone watched")
            assert not hub.relaying  # nobody watches: no subscription at all
            sub = await hub.subscribe()
            assert hub.relaying and hub.connected
            await client.publish(schema.call_channel("c-1"), "w1")
            assert await asyncio.wait_for(sub.take(), 5) == ["w1"]
            second = await hub.subscribe()  # a second browser shares the subscription
            hub.unsubscribe(sub)
            await asyncio.sleep(0.4)
            assert hub.relaying  # one browser is still there
            await client.publish(schema.ALERTS_CHANNEL, "a1")
            assert await asyncio.wait_for(second.take(), 5) == ["a1"]
            hub.unsubscribe(second)
            assert hub.relaying  # lingers: a page reload does not resubscribe
            await asyncio.sleep(0.5)
            assert not hub.relaying and not hub.connected
            third = await hub.subscribe()  # and comes back for the next browser
            await client.publish(schema.call_channel("c-2"), "w2")
            assert await asyncio.wait_for(third.take(), 5) == ["w2"]
        finally:
            await hub.stop()
            await client.aclose()

    asyncio.run(scenario())



def test_a_browser_that_falls_behind_is_told_to_reload_not_left_short(redis_server):
    """A browser that did not read its live stream fast enough (a slow link, a dashboard of
    a thousand calls) silently lost its oldest messages, alerts and call ends among them:
    cards of ended calls stayed, alerts never showed, until the page was reloaded by hand.
    Its stream now ends instead, and the browser reconnects and reloads (EventSource does,
    the page reloads on every connection)."""
    from dashboard.hub import LiveHub
    from streamer import redis_client, schema

    async def scenario() -> None:
        client = redis_client.connect(redis_server.url)
        hub = LiveHub(client, queue_max=5)
        try:
            slow, quick = await hub.subscribe(), await hub.subscribe()
            heard: list[str] = []
            for k in range(6):
                await client.publish(schema.call_channel("c-1"), f"w{k}")
                while len(heard) <= k:  # the other keeps up, taking what is queued at once
                    heard += await asyncio.wait_for(quick.take(), 5)
            assert heard == [f"w{k}" for k in range(6)]
            assert await asyncio.wait_for(slow.take(), 5) is None  # told: it fell behind
            assert slow not in hub.subscribers and hub.dropped == 1
        finally:
            await hub.stop()
            await client.aclose()

    asyncio.run(scenario())

def test_a_call_ending_while_the_live_list_is_read_is_not_listed(redis_server) -> None:
    """The publisher's end writes remove the call from the live set and store its end; a
    reader that took the live set before and the state after saw an ended call in the live
    grid (a CI run: ``live: False`` in ``/api/v1/calls``). That mid-end state is set here."""
    import asyncio

    from dashboard import store
    from streamer import redis_client, schema
    from streamer.schema import CallEvent

    async def scenario() -> list[dict]:
        client = redis_client.connect(redis_server.url)
        try:
            call = {"call_id": "ending", "roles": ("customer",), "sample_rate": 16000,
                    "encoding": "pcm_s16le", "protocol": "native"}
            start = CallEvent(id=schema.new_id(), type="call_started", **call)
            end = CallEvent(id=schema.new_id(), type="call_ended", reason="stop",
                            duration_s=3.0, **call)
            await client.zadd(schema.LIVE_CALLS_KEY, {"ending": start.ts})
            await client.hset(schema.call_state_key("ending"),
                              mapping={"start": schema.dumps(start), "end": schema.dumps(end)})
            try:
                return await store.live_calls(client)
            finally:
                await client.delete(schema.call_state_key("ending"))
                await client.zrem(schema.LIVE_CALLS_KEY, "ending")
        finally:
            await client.aclose()

    assert [c["call_id"] for c in asyncio.run(scenario())] == []


@pytest.mark.parametrize("pipeline_rows", [4000, 12])
def test_many_live_calls_are_listed_together_each_with_its_own_alerts(redis_server, monkeypatch,
                                                                      pipeline_rows) -> None:
    """The grid reads the live calls' states in a few pipelines (of ``PIPELINE_ROWS``: here
    one, or two calls each) and every acknowledgement in one read (a grid of 2 000 calls
    took over a second read call by call): each call must still get its own state and each
    alert its own acknowledgement, and calls without a readable state, or already ended,
    are left out."""
    import json

    from dashboard import store

    monkeypatch.setattr(store, "PIPELINE_ROWS", pipeline_rows)
    from streamer import redis_client, schema
    from streamer.schema import CallEvent

    async def scenario() -> tuple[list[dict], list[dict | None]]:
        client = redis_client.connect(redis_server.url)
        try:
            ids = [f"c{k:02d}" for k in range(40)]
            for k, call_id in enumerate(ids):
                start = CallEvent(id=schema.new_id(), type="call_started", call_id=call_id,
                                  roles=("customer",), sample_rate=8000, encoding="mulaw",
                                  protocol="native", metadata={"agent": f"agent {k}"})
                await client.zadd(schema.LIVE_CALLS_KEY, {call_id: start.ts})
                if k == 7:
                    continue  # in the live set, no state hash
                state = {"start": schema.dumps(start) if k != 8 else "{truncated",
                         "last:customer": json.dumps({"window_index": k, "frustration": k / 100,
                                                      "distress": 0.0})}
                if k % 3 == 0:
                    state["alert:customer:frustration"] = json.dumps(
                        {"id": f"alert-{k}", "state": "raised", "kind": "frustration",
                         "call_id": call_id, "role": "customer", "score": 0.6,
                         "call_time_s": 5.0, "ts": start.ts})
                if k == 9:
                    state["end"] = schema.dumps(CallEvent(
                        id=schema.new_id(), type="call_ended", call_id=call_id,
                        roles=("customer",), sample_rate=8000, encoding="mulaw",
                        protocol="native", reason="stop", duration_s=1.0))
                await client.hset(schema.call_state_key(call_id), mapping=state)
                if k % 6:  # customer and agent windows in turn, the 3rd customer's silent
                    await client.rpush(schema.call_timeline_key(call_id), *[json.dumps({
                        "call_id": call_id, "role": "agent" if i % 2 else "customer",
                        "window_index": i // 2, "end_s": 3.0 + i,
                        "frustration": None if i == 4 else i / 10, "distress": 0.5})
                        for i in range(k % 6)])
            for k in (3, 12, 33):
                await store.acknowledge(client, f"alert-{k}", by=f"sup {k}")
            return (await store.live_calls(client, history=2),
                    await store.call_summaries(client, ["c12", "nobody", "c13", "c09"]))
        finally:
            await client.aclose()

    calls, some = asyncio.run(scenario())
    listed = {c["call_id"]: c for c in calls}
    assert sorted(listed) == [f"c{k:02d}" for k in range(40) if k not in (7, 8, 9)]
    for call_id, call in listed.items():
        k = int(call_id[1:])
        assert call["agent"] == f"agent {k}" and call["last"]["customer"]["window_index"] == k
        # the customer's scored windows among the last 4 (2 per role), and the call time
        assert (call["history"], call["call_time_s"]) == {
            0: ([], 0.0), 1: ([[3.0, 0.0, 0.5]], 3.0), 2: ([[3.0, 0.0, 0.5]], 4.0),
            3: ([[3.0, 0.0, 0.5], [5.0, 0.2, 0.5]], 5.0),
            4: ([[3.0, 0.0, 0.5], [5.0, 0.2, 0.5]], 6.0), 5: ([[5.0, 0.2, 0.5]], 7.0)}[k % 6]
        assert "timeline" not in call
        alerts = call["alerts"]
        assert list(alerts) == (["customer:frustration"] if k % 3 == 0 else [])
        if alerts:
            alert = alerts["customer:frustration"]
            assert alert["id"] == f"alert-{k}"
            assert (alert["ack"] or {}).get("by") == (f"sup {k}" if k in (3, 12, 33) else None)
    # an active unacknowledged alert ranks first, then the customer's score
    assert [c["call_id"] for c in calls[:3]] == ["c39", "c36", "c30"]
    assert [c and c["call_id"] for c in some] == ["c12", None, "c13", "c09"]
    assert "timeline" not in some[0]
    assert some[0]["alerts"]["customer:frustration"]["ack"]["by"] == "sup 12"
    assert some[3]["live"] is False


def test_a_busy_log_gives_the_latest_alerts_and_every_call_its_own(redis_server,
                                                                   monkeypatch) -> None:
    """The dashboard loaded the feed with the earliest 500 entries of the last hour, and
    a call page with the earliest 5 000 of the whole log: on a busy log, call events from
    the hour's first minutes, and none of the newest alerts. The log is read in chunks
    (made small here so that reads cross them)."""
    import asyncio

    from dashboard import store
    from streamer import redis_client, schema
    from streamer.publisher import PublisherConfig, queue_event
    from streamer.schema import Alert, CallEvent

    monkeypatch.setattr(store, "LOG_FIRST_CHUNK", 3)  # 3, 6, 7, 7, ...
    monkeypatch.setattr(store, "LOG_CHUNK", 7)
    call = {"roles": ("customer",), "sample_rate": 8000, "encoding": "mulaw",
            "protocol": "twilio"}

    def alert(call_id: str, state: str = "raised", raised_id: str | None = None) -> Alert:
        return Alert(id=schema.new_id(), call_id=call_id, role="customer", kind="distress",
                     state=state, score=0.9, threshold=0.7, window_index=9, call_time_s=12.0,
                     raised_id=raised_id)

    async def scenario():
        client = redis_client.connect(redis_server.url)
        try:
            first, last = alert("early"), alert("late")
            cleared = alert("late", "cleared", last.id)
            pipe = client.pipeline(transaction=False)
            queue_event(pipe, first, PublisherConfig())
            for k in range(600):
                queue_event(pipe, CallEvent(id=schema.new_id(), type="call_started",
                                            call_id=f"busy-{k}", **call), PublisherConfig())
            for event in (last, cleared, last, cleared):  # written twice (a retry)
                queue_event(pipe, event, PublisherConfig())
            await pipe.execute()
            await store.acknowledge(client, last.id, by="sup")
            return (first, last, cleared,
                    await store.alerts_since(client, "1h"),
                    await store.alerts_since(client, "1h", types=frozenset({"alert"}),
                                             latest=True, limit=2),
                    await store.alerts_since(client, "1h", types=frozenset({"alert"})),
                    await store.alerts_since(client, "0", latest=True, limit=10),
                    await store.call_alerts(client, "late"),
                    await store.call_alerts(client, "nobody"),
                    await store.find_alert(client, first.id))
        finally:
            await client.aclose()

    (first, last, cleared, earliest, feed, alerts, tail, late, nobody,
     found) = asyncio.run(scenario())
    assert len(earliest) == 500 and earliest[0]["id"] == first.id
    assert last.id not in {e["id"] for e in earliest}  # what the feed used to load
    assert [a["id"] for a in feed] == [last.id, cleared.id]  # the latest two, oldest first
    assert feed[0]["ack"]["by"] == "sup" and feed[1]["ack"] is None
    assert [a["id"] for a in alerts] == [first.id, last.id, cleared.id]  # each once
    assert [e["id"] for e in tail][-2:] == [last.id, cleared.id] and len(tail) == 10
    order = [tuple(map(int, e["stream_id"].split("-"))) for e in tail]
    assert order == sorted(order)
    assert [a["id"] for a in late] == [last.id, cleared.id] and late[0]["ack"]["by"] == "sup"
    assert nobody == [] and found["id"] == first.id


def test_an_acknowledgement_reads_the_log_from_its_alerts_time(redis_server) -> None:
    """An alert's id holds the time it was made (UUIDv7): an acknowledgement looks for the
    alert from a little before then on, not through the whole log newest first, which an
    unknown id (a stale page, a mistyped call to the API) read to its start, up to the 100 000
    entries the publisher keeps. An alert held through a Redis outage and written late is
    still found; an id that is no alert's is answered without reading the log."""
    import json
    import uuid

    import redis

    from dashboard import store
    from streamer import redis_client, schema
    from streamer.schema import Alert

    now = time.time()

    def alert(made: float) -> Alert:
        return Alert(id=schema.new_id(at=made), call_id="c", role="customer", kind="distress",
                     state="raised", score=0.9, threshold=0.7, window_index=9,
                     call_time_s=12.0, ts=made)

    old, held, recent = alert(now - 3600), alert(now - 1200), alert(now)
    r = redis.Redis.from_url(redis_server.url)
    r.flushdb()

    def write(entry: Alert | str, at: float, seq: int = 0) -> None:
        fields = ({"id": entry.id, "type": "alert", "data": schema.dumps(entry)}
                  if isinstance(entry, Alert) else {"id": entry, "type": "call_started",
                                                   "data": json.dumps({"id": entry})})
        r.xadd(schema.ALERTS_STREAM, fields, id=f"{int(at * 1000)}-{seq}")

    write(old, now - 3600)
    for k in range(500):
        write(schema.new_id(at=now - 1800), now - 1800, k)
    write(held, now - 60)  # made 20 minutes earlier, written when Redis came back
    write(recent, now)

    class Counting:
        """The client, counting the log entries read."""

        def __init__(self, client) -> None:
            self.client, self.read = client, 0

        async def xrange(self, *args, **kwargs):
            entries = await self.client.xrange(*args, **kwargs)
            self.read += len(entries)
            return entries

        async def xrevrange(self, *args, **kwargs):
            entries = await self.client.xrevrange(*args, **kwargs)
            self.read += len(entries)
            return entries

    async def look(alert_id: str) -> tuple[str | None, int]:
        client = Counting(redis_client.connect(redis_server.url))
        try:
            found = await store.find_alert(client, alert_id)
        finally:
            await client.client.aclose()
        return (found or {}).get("id"), client.read

    def find(alert_id: str) -> tuple[str | None, int]:
        return asyncio.run(look(alert_id))

    assert find(recent.id) == (recent.id, 2)  # the last five minutes: two entries
    assert find(held.id) == (held.id, 2)
    assert find(old.id)[0] == old.id
    assert find(schema.new_id()) == (None, 2)  # unknown, made now
    assert find(schema.new_id(at=now + 86400)) == (None, 0)
    for not_an_id in ("nope", str(uuid.uuid4()), "01a22857-ebb6-7fee-a4d3-f3d06906cfa9x"):
        assert find(not_an_id) == (None, 0)


def test_the_alert_log_pages_on_from_the_last_stream_id(service, redis_server) -> None:
    """``GET /api/v1/alerts`` says to page on with ``since`` = the last ``stream_id``: the
    next page began with that entry again, so a client paging one at a time never got past
    it. A stream id now means the entries after it (as ``callmon alerts --since`` reads)."""
    import redis

    from streamer import schema
    from streamer.schema import CallEvent

    r = redis.Redis.from_url(redis_server.url)
    before = (r.xinfo_stream(schema.ALERTS_STREAM)["last-generated-id"].decode()
              if r.exists(schema.ALERTS_STREAM) else "0-1")
    ids = []
    for k in range(5):
        event = CallEvent(id=schema.new_id(), type="call_started", call_id=f"paged-{k}",
                          roles=("customer",), sample_rate=8000, encoding="mulaw",
                          protocol="twilio")
        r.xadd(schema.ALERTS_STREAM, {"id": event.id, "type": event.type,
                                      "data": schema.dumps(event)})
        ids.append(event.id)
    http = httpx.Client(base_url=service.http_url)

    def page(since: str, limit: int, **params) -> list[dict]:
        answer = http.get("/api/v1/alerts", params={"since": since, "limit": limit, **params})
        assert answer.status_code == 200, answer.text
        return answer.json()

    walked, since = [], before
    while len(walked) < 10 and (one := page(since, 1)):
        walked.append(one[0]["id"])
        since = one[0]["stream_id"]
    assert walked == ids
    assert [e["id"] for e in page(before, 2)] == ids[:2]
    assert [e["id"] for e in page(before, 2, latest="true")] == ids[3:]
    third = page(before, 3)[-1]["stream_id"]
    assert [e["id"] for e in page(third, 500)] == ids[3:]


@pytest.mark.parametrize("stored", [
    b'{"score": NaN}', b'{"score": -Infinity}', b'{"score": 1e999}', b'{"agent": "\\ud800"}',
    b'"\xed\xa0\x80"', '{"agent": "\ud800"}', b'{"truncated', b"[" * 100_000,
])
def test_a_stored_message_that_cannot_be_served_is_refused(stored) -> None:
    """What the API could not answer as UTF-8 JSON (a lone surrogate escaped or encoded, a
    NaN or infinity, a truncated or too deep message) is read as nothing."""
    from dashboard import store

    before = store.undecodable
    assert store._decode(stored) is None
    assert store.undecodable == before + 1


def test_stored_messages_keep_every_character_and_number() -> None:
    from dashboard import store

    assert store._decode(b'{"agent": "\\ud83d\\ude00 Zo\\u00eb", "n": [1, -2.5e3, 0.125]}') == {
        "agent": "\U0001f600 Zoë", "n": [1, -2500.0, 0.125]}
    assert store._decode('{"agent": "Zoë"}'.encode()) == {"agent": "Zoë"}
    assert store._decode(b'"\\\\ud800"') == "\\ud800"  # an escaped backslash, not a surrogate


def test_sparkline_points_are_read_as_decoding_would_read_them() -> None:
    """The grid's sparklines match a few fields of each stored window result instead of
    decoding it whole (hundreds of rows per call, in the event loop that serves ingest).
    What they read must be what decoding reads, for every shape of result, a call id that
    tries to look like fields included, and a row that is not ``schema.dumps``'s is decoded."""
    import json

    from dashboard import store
    from streamer import schema
    from streamer.schema import WindowResult

    scores = {"neutral": 0.5, "happy": 0.1, "sad": 0.1, "angry": 0.2, "fearful": 0.1}
    tricky = 'c"x","role":"agent","channel":0,"window_index":1,"start_s":0,"end_s":99,\\'
    results = [
        WindowResult(call_id="c-1", role="customer", channel=0, window_index=4, start_s=4.0,
                     end_s=7.0, speech=True, speech_ratio=0.8, scores=scores,
                     frustration=0.25, distress=1e-7, latency_ms=12.5),
        WindowResult(call_id="c-1", role="agent", channel=1, window_index=5, start_s=5.0,
                     end_s=8.0, speech=True, speech_ratio=0.8, scores=scores,
                     frustration=0.5, distress=0.125),
        WindowResult(call_id="c-1", role="customer", channel=0, window_index=6, start_s=6.0,
                     end_s=9.0, speech=False, speech_ratio=0.0, scores=None,
                     frustration=None, distress=None),
        WindowResult(call_id=tricky, role="customer", channel=0, window_index=7, start_s=7,
                     end_s=10, speech=True, speech_ratio=1.0, scores=scores,
                     frustration=0, distress=1),
        WindowResult(call_id="é€😀", role="customer", channel=0, window_index=8, start_s=8.0,
                     end_s=11.0, speech=True, speech_ratio=1.0, scores=scores,
                     frustration=0.75, distress=0.0),
    ]
    rows = [schema.dumps(r).encode() for r in results]
    assert all(store._SPARK_ROW.match(row) for row in rows)  # the fast path, every one
    for row in rows:
        w = json.loads(row)
        assert store._spark_point(row) == (w["role"], w["end_s"], w["frustration"],
                                           w["distress"])
    # Not as schema.dumps writes: decoded, or refused as decoding refuses it.
    spaced = json.dumps(json.loads(rows[0])).encode()
    assert store._spark_point(spaced) == ("customer", 7.0, 0.25, 1e-7)
    for bad in (rows[0].replace(b'"frustration":0.25', b'"frustration":NaN'),
                rows[0].replace(b'"end_s":7.0', b'"end_s":1e999'), rows[0][:-40], b"[]",
                rows[0].replace(b'"frustration":0.25', b'"frustration":"high"')):
        assert store._spark_point(bad) is None
    history, call_time = store.sparkline(rows, 2)
    assert history == [[10, 0, 1], [11.0, 0.75, 0.0]] and call_time == 11.0
