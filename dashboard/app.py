"""The supervisor dashboard and REST API (FastAPI).

No ``from __future__ import annotations`` here: FastAPI resolves the ``Annotated``
dependencies declared inside ``create_app`` at run time."""


import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from dashboard import store
from dashboard.auth import SupervisorAuth
from dashboard.hub import LiveHub
from dashboard.metrics import render_metrics
from dashboard.predict import AudioRejected, decode_upload, predict
from streamer import redis_client
from streamer.alerts_feed import stream_id_for
from streamer.nodes import Reaper

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_PREDICT_SECONDS = 600.0


MAX_NOTE_CHARS = 500
#: How long a browser whose live stream was ended for falling behind waits to reconnect.
BEHIND_RETRY_MS = 5000


def _json(content) -> bytes:
    """``content`` encoded as a JSON response encodes it (compact, UTF-8, no NaN)."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode()


class AckRequest(BaseModel):
    """Optional body of an acknowledgement."""

    note: str | None = Field(None, max_length=MAX_NOTE_CHARS,
                             description="what the supervisor did, shown with the acknowledgement")


PREDICT_PATH = "/api/v1/predict"
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file


class UploadGuard:
    """ASGI middleware for the upload endpoint: the credential is checked and the size
    limit applied *before* any of the body is read, and a body (chunked included) is cut
    off as soon as it passes the limit, so nothing unauthenticated or oversized is ever
    spooled to disk or memory."""

    def __init__(self, app, *, auth: SupervisorAuth, max_bytes: int) -> None:
        self.app = app
        self.auth = auth
        self.limit = max_bytes + MULTIPART_SLACK
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != PREDICT_PATH:
            await self.app(scope, receive, send)
            return
        try:
            self.auth(Request(scope))
        except HTTPException as exc:
            await JSONResponse({"detail": exc.detail}, exc.status_code,
                               headers=exc.headers)(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await self._too_big(scope, send)
            return
        received = 0
        refused = False

        async def limited():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit and not refused:
                    # Answer now and tell the app the client is gone; what it answers
                    # to that is dropped.
                    refused = True
                    await self._too_big(scope, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited, guarded)

    async def _too_big(self, scope, send) -> None:
        async def nothing():
            return {"type": "http.disconnect"}

        await JSONResponse({"detail": f"upload over {self.max_bytes} bytes"}, 413,
                           headers={"Connection": "close"})(scope, nothing, send)


@contextlib.contextmanager
def _bad_since(since: str | None) -> Iterator[None]:
    """A ``since`` that is no duration or stream id (or one Redis refuses) is the client's
    mistake: 422, not 500."""
    try:
        if since is not None:
            stream_id_for(since)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    try:
        yield
    except Exception as exc:
        if "Invalid stream ID" in str(exc):
            raise HTTPException(422, f"since={since!r} is not a stream id or duration") from exc
        raise


class Turns:
    """At most ``running`` holders at once and ``waiting`` in line; one more is refused
    (503, Retry-After) rather than queued without end."""

    def __init__(self, running: int, waiting: int) -> None:
        self.running, self.waiting = running, waiting
        self._slots = asyncio.Semaphore(running)
        self._in_line = 0

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if self._slots.locked() and self._in_line >= self.waiting:
            raise HTTPException(503, f"busy: {self.running} upload(s) being scored and "
                                f"{self._in_line} waiting; retry shortly",
                                headers={"Retry-After": "5"})
        self._in_line += 1
        try:
            await self._slots.acquire()
        finally:
            self._in_line -= 1
        try:
            yield
        finally:
            self._slots.release()


def create_app(*, redis_url: str, auth: SupervisorAuth, max_upload_bytes: int = 20 * 2**20,
               model=None, service=None, model_loader=None, public_metrics: bool = False,
               predict_concurrency: int = 1, predict_queue: int = 8) -> FastAPI:
    """Build the app.

    Args:
        redis_url: the Redis the streamer nodes publish to.
        auth: the supervisor credential check.
        model: an :class:`models.EmotionModel` for ``/api/v1/predict`` (shared with the
            streamer in ``callmon serve``); loaded by ``model_loader`` at start-up otherwise.
        service: the in-process streamer :class:`streamer.service.Service`, whose
            ``stats()`` snapshot ``/metrics`` exposes and whose ``health()`` ``/healthz``
            includes; ``None`` for a dashboard-only process.
        public_metrics: serve ``/metrics`` without the supervisor credential (scrapers).
        predict_concurrency, predict_queue: uploads scored at once, and waiting their turn
            (beyond: 503). Scoring a long upload is seconds of CPU that the live calls of a
            ``serve`` process share, so uploads take turns rather than all run at once.

    With a credential configured, everything but ``/healthz``'s one-line status needs it:
    the API, ``/metrics`` (unless public), ``/docs`` and ``/openapi.json``.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = redis_client.connect(redis_url, timeout_s=5.0)
        app.state.hub = LiveHub(app.state.redis)  # subscribes once a browser connects
        # A dashboard alone (no streamer in this process) still ends calls of dead nodes.
        reaper = Reaper(app.state.redis) if service is None else None
        if reaper is not None:
            reaper.start()
        app.state.model = model
        if app.state.model is None and model_loader is not None:
            app.state.model = await asyncio.to_thread(model_loader)
        yield
        await app.state.hub.stop()
        if reaper is not None:
            await reaper.stop()
        await app.state.redis.aclose()

    turns = Turns(predict_concurrency, predict_queue)
    app = FastAPI(title="callmon", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None,
                  description="Supervisor dashboard and REST API of the callmon speech-emotion "
                              "monitor. Message schemas: docs/schema.md.")
    Supervisor = Annotated[str, Depends(auth)]
    app.add_middleware(UploadGuard, auth=auth, max_bytes=max_upload_bytes)

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def redis_away(request: Request, exc: Exception) -> JSONResponse:
        # The API reads Redis: while it is away, say so (503, retry), never a 500.
        return JSONResponse({"detail": "Redis is unavailable; retry shortly"}, 503,
                            headers={"Retry-After": "2"})

    def credentialed(request: Request) -> bool:
        try:
            auth(request)
        except HTTPException:
            return False
        return True

    # The API description and its viewers, behind the credential like the API itself.
    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(_: Supervisor) -> JSONResponse:
        return JSONResponse(app.openapi())

    from swagger_ui_bundle import swagger_ui_path

    # Swagger UI from its wheel, not a CDN: the API docs work where the product runs.
    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger(_: Supervisor):
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title="callmon API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")

    @app.get("/", include_in_schema=False)
    async def index(_: Supervisor) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", tags=["ops"])
    async def healthz(request: Request) -> JSONResponse:
        """Redis and model state; 503 when Redis is unreachable. Without the supervisor
        credential (where one is configured) only the status: no hosts, errors or counts."""
        redis_ok = True
        try:
            await asyncio.wait_for(request.app.state.redis.ping(), 2.0)
        except Exception:
            redis_ok = False
        m = request.app.state.model
        body = {"status": "ok" if redis_ok else "degraded", "redis": {"connected": redis_ok},
                "model": {"loaded": m is not None, "name": m.card.name if m else None,
                          "variant": m.variant if m else None}}
        if service is not None:
            body["streamer"] = service.health()
            if service.health()["status"] != "ok":
                body["status"] = "degraded"
        if not credentialed(request):
            body = {"status": body["status"]}
        return JSONResponse(body, status_code=200 if redis_ok else 503)

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text format (needs the credential unless ``CALLMON_PUBLIC_METRICS``)."""
        if not public_metrics:
            auth(request)
        live = await request.app.state.redis.zcard(store.schema.LIVE_CALLS_KEY)
        hub: LiveHub = request.app.state.hub
        return PlainTextResponse(render_metrics(service.stats() if service is not None else None,
                                                live_calls=live, browsers=len(hub.subscribers),
                                                browsers_behind=hub.dropped),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/api/v1/calls", tags=["calls"], response_model=list[dict])
    async def list_calls(request: Request, _: Supervisor,
                         history: Annotated[int | None, Query(ge=1, le=1000)] = None
                         ) -> Response:
        """Live calls, most at-risk first; with ``history``, each with the customer's last
        ``history`` scored windows as ``[end_s, frustration, distress]`` and ``call_time_s``
        (what the grid's sparklines draw: one request, not one per call)."""
        calls = await store.live_calls(request.app.state.redis, history=history)
        # Encoded off the event loop, as the calls were decoded (see store.off_loop).
        return Response(await store.off_loop(_json, calls), media_type="application/json")

    @app.get("/api/v1/ended-calls", tags=["calls"])
    async def list_ended_calls(request: Request, _: Supervisor, since: str = "4h",
                               limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict]:
        """Calls that ended since ``since`` (a duration such as ``4h``, or a stream id),
        newest first, with their duration, alerts raised and peak customer frustration and
        distress."""
        with _bad_since(since):
            return await store.ended_calls(request.app.state.redis, since, limit=limit)

    @app.get("/api/v1/calls/{call_id}", tags=["calls"], response_model=dict)
    async def get_call(call_id: str, request: Request, _: Supervisor,
                       tail: Annotated[int | None, Query(ge=1, le=100_000)] = None
                       ) -> Response:
        """One call (live or ended in the last 24 h) with its window timeline (the last
        ``tail`` windows only, if given) and ``alert_history``: every alert raised and
        cleared on it, oldest first, the raises with their acknowledgements."""
        redis = request.app.state.redis
        call = await store.call_summary(redis, call_id)
        if call is None:
            raise HTTPException(404, f"no call {call_id!r}")
        timeline = await store.timeline_json(redis, call_id, tail=tail)
        history = await store.call_alerts(redis, call_id)
        # The timeline (up to 7 200 stored rows) goes out as stored, not decoded and
        # encoded again in the event loop (see store.timeline_json).
        return Response(_json(call)[:-1] + b',"timeline":' + timeline
                        + b',"alert_history":' + _json(history) + b"}",
                        media_type="application/json")

    @app.get("/api/v1/alerts", tags=["alerts"], response_model=list[dict])
    async def list_alerts(request: Request, _: Supervisor, since: str | None = None,
                          limit: int = 500,
                          entry_type: Annotated[str | None, Query(alias="type")] = None,
                          latest: bool = False) -> Response:
        """Alerts and call events from the log, oldest first: ``since`` is a stream id (the
        entries after it), ``0``, or a duration such as ``10m``; without it, everything
        kept. ``type``: only these (comma-separated: ``alert``, ``call_started``,
        ``call_ended``). Of more than ``limit``, the earliest (page on with ``since`` = the
        last ``stream_id``), or with ``latest=true`` the latest."""
        if not 1 <= limit <= 5000:
            raise HTTPException(422, "limit must be between 1 and 5000")
        types = None
        if entry_type is not None:
            types = frozenset(entry_type.split(","))
            if unknown := sorted(types - store.LOG_TYPES):
                raise HTTPException(422, f"type {','.join(unknown)!r}: the log holds "
                                         f"{', '.join(sorted(store.LOG_TYPES))}")
        with _bad_since(since):
            alerts = await store.alerts_since(request.app.state.redis, since, limit=limit,
                                              types=types, latest=latest)
        return Response(await store.off_loop(_json, alerts), media_type="application/json")

    @app.post("/api/v1/alerts/{alert_id}/ack", tags=["alerts"])
    async def ack_alert(alert_id: str, request: Request, who: Supervisor,
                        body: AckRequest | None = None) -> dict:
        """Acknowledge an alert; records who, when and an optional note, visible to every
        supervisor. The first acknowledgement stands: a later one gets it back."""
        redis = request.app.state.redis
        alert = await store.find_alert(redis, alert_id)
        if alert is None or alert.get("type") != "alert":
            raise HTTPException(404, f"no alert {alert_id!r}")
        return await store.acknowledge(redis, alert_id, by=who,
                                       note=body.note if body is not None else None)

    @app.get("/api/v1/events", tags=["live"])
    async def events(request: Request, _: Supervisor) -> StreamingResponse:
        """Server-Sent Events: every window result, alert, call event and acknowledgement."""
        hub: LiveHub = request.app.state.hub
        sub = await hub.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        messages = await asyncio.wait_for(sub.take(), 15.0)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if messages is None:
                        # Fell behind: the browser reconnects and reloads, after a pause
                        # long enough that a browser that stays slow does not reload the
                        # grid (a thousand calls' worth) over and over.
                        yield f"retry: {BEHIND_RETRY_MS}\n\n"
                        return
                    yield "".join(f"data: {message}\n\n" for message in messages)
            finally:
                hub.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post("/api/v1/predict", tags=["predict"])
    async def predict_file(request: Request, _: Supervisor,
                           file: Annotated[UploadFile, File(description="audio file")]) -> dict:
        """Score an uploaded audio file (anything libsndfile reads: WAV, FLAC, OGG, 8 kHz
        telephone audio included): the overall label, per-class confidences and, for
        clips longer than one window, a per-window timeline."""
        started = time.perf_counter()
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_upload_bytes + 4096:
            raise HTTPException(413, f"upload over {max_upload_bytes} bytes")
        data = await file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"upload over {max_upload_bytes} bytes")
        model_ = request.app.state.model
        if model_ is None:
            raise HTTPException(503, "no model loaded")
        async with turns.turn():
            try:
                audio, rate, channels = await asyncio.to_thread(
                    decode_upload, data, max_seconds=MAX_PREDICT_SECONDS)
            except AudioRejected as exc:
                raise HTTPException(exc.status, str(exc)) from exc
            result = await asyncio.to_thread(predict, model_, audio)
        result.update({"sample_rate_in": rate, "channels_in": channels,
                       "model": {"name": model_.card.name, "variant": model_.variant},
                       "elapsed_ms": round(1000 * (time.perf_counter() - started), 1)})
        return result

    return app


