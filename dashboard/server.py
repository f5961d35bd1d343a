"""Running the dashboard under uvicorn, inside ``callmon serve`` or on its own."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from dashboard.app import create_app
from dashboard.auth import SupervisorAuth
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


class DashboardServer:
    """uvicorn in the current event loop."""

    def __init__(self, app, *, host: str, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    lifespan="on", access_log=False,
                                                    timeout_graceful_shutdown=2))
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
                     max_upload_bytes=settings.max_upload_bytes, model=model, service=service,
                     model_loader=None if model is not None else _loader(settings),
                     public_metrics=settings.public_metrics)
    return DashboardServer(app, host=settings.host, port=settings.dashboard_port)


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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await dashboard.stop()
