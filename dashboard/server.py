"""Running the dashboard under uvicorn, inside ``callmon serve`` or on its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn

from dashboard.app import create_app
from dashboard.auth import SupervisorAuth
from dashboard.settings import OWN_FIELDS, DashboardSettings
from streamer import redis_client
from streamer.service import Mount, Service
from streamer.settings import is_loopback

log = logging.getLogger(__name__)


def supervisor_auth(settings) -> SupervisorAuth:
    """The credential check; refuses to expose an open dashboard beyond loopback."""
    auth = SupervisorAuth(user=settings.supervisor_user, password=settings.supervisor_password,
                          token=settings.supervisor_token)
    if not auth.enabled and not is_loopback(settings.host):
        raise ValueError(
            f"the dashboard would listen on {settings.host} without a credential: set "
            "CALLMON_SUPERVISOR_PASSWORD (HTTP basic) or CALLMON_SUPERVISOR_TOKEN")
    return auth


def header_timeout_protocol(timeout_s: float):
    """uvicorn's HTTP/1.1 protocol with a deadline on request headers.

    uvicorn times out idle keep-alive connections but not a peer that sends half a request
    and waits: 300 such sockets held descriptors for minutes and starved ingest and the
    health checks. Here a connection must finish its request headers within ``timeout_s``
    of connecting (or of the first byte of its next request), or it is closed.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._waiting_for_headers():
                self._arm()
            super().data_received(data)
            if not self._waiting_for_headers():
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


class DashboardServer:
    """uvicorn in the current event loop, with a request-header deadline and a bound on
    concurrent connections (beyond it: 503)."""

    def __init__(self, app, *, host: str, port: int, header_timeout_s: float = 10.0,
                 max_connections: int = 1000) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    lifespan="on", access_log=False,
                                                    timeout_graceful_shutdown=2,
                                                    http=header_timeout_protocol(header_timeout_s),
                                                    limit_concurrency=max_connections))
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(), name="dashboard")
        while not self.server.started:
            if self.task.done():
                self.task.result()  # raises the start-up error
                raise RuntimeError("dashboard failed to start")
            await asyncio.sleep(0.01)

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.task is not None:
            self.server.should_exit = True
            await self.task


def build_dashboard(settings, *, redis_url: str, model=None, service=None) -> DashboardServer:
    app = create_app(redis_url=redis_url, auth=supervisor_auth(settings),
                     max_upload_bytes=settings.max_upload_bytes,
                     predict_concurrency=settings.predict_concurrency,
                     predict_queue=settings.predict_queue, model=model, service=service,
                     model_loader=None if model is not None else _loader(settings),
                     public_metrics=settings.public_metrics)
    return DashboardServer(app, host=settings.host, port=settings.dashboard_port,
                           header_timeout_s=settings.http_header_timeout_s,
                           max_connections=settings.dashboard_max_connections)


async def redis_problem(url: str) -> str | None:
    """Why Redis at ``url`` does not answer a PING, or ``None`` when it does."""
    client = redis_client.connect(url)
    try:
        await client.ping()
    except Exception as exc:  # refused, timed out, auth, cluster discovery: all said alike
        return str(exc) or type(exc).__name__
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
    return None


def _loader(settings):
    def load():
        from models import load_model

        return load_model(settings.model_path, settings.device, variant=settings.model_variant,
                          threads=settings.threads)

    return load


async def run_dashboard(settings) -> None:
    """``callmon dashboard``: the UI and API alone, against an existing Redis."""
    import signal

    if not settings.redis_url:
        raise ValueError("callmon dashboard needs --redis-url (or REDIS_URL)")
    dashboard = build_dashboard(settings, redis_url=settings.redis_url)
    await dashboard.start()
    print(f"callmon dashboard: http://{settings.host}:{dashboard.port}/", flush=True)
    if problem := await redis_problem(settings.redis_url):
        # Started all the same (Redis may come up after the dashboard), but said at once:
        # a mistyped URL used to show nothing until a supervisor found the page empty.
        log.warning("Redis at %s is not reachable (%s); the dashboard starts degraded: "
                    "/healthz says so and the API answers 503 until it is",
                    redis_client.display_url(settings.redis_url), problem)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await dashboard.stop()


class DashboardComponent:
    """The dashboard inside ``callmon serve``: shares the service's model and Redis, and
    shows its node's counters and health."""

    def __init__(self, service: Service, settings: DashboardSettings) -> None:
        self.host = settings.host
        self.server = build_dashboard(settings, redis_url=service.redis_url,
                                      model=service.model, service=service)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    @property
    def port(self) -> int:
        return self.server.port

    def banner(self) -> str:
        return f"callmon dashboard: open http://{self.host}:{self.port}/"

    def runtime_info(self) -> dict:
        return {"dashboard": f"http://{self.host}:{self.port}"}


def mount(**overrides) -> Mount:
    """How the dashboard mounts itself on ``callmon serve``: its settings are the service's
    plus its own (``CALLMON_*``, then ``overrides``: ``dashboard_port`` …)."""
    unknown = set(overrides) - OWN_FIELDS
    if unknown:
        raise TypeError(f"not dashboard settings: {sorted(unknown)}")

    def settings_for(settings) -> DashboardSettings:
        return DashboardSettings(**{**settings.model_dump(), **overrides})

    def check(settings) -> list[tuple[str, int, str]]:
        dashboard = settings_for(settings)
        supervisor_auth(dashboard)  # refuse an open dashboard beyond loopback before starting
        return [("dashboard", dashboard.dashboard_port, "--dashboard-port")]

    return Mount("dashboard", lambda service: DashboardComponent(
        service, settings_for(service.settings)), check)
