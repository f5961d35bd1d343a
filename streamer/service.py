"""Composition: build the model, Redis, scheduler, monitor and ingest from Settings, run
them with whatever mounts itself on the service (the dashboard does), and shut down
gracefully."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from streamer import aio, redis_client
from streamer.alerts import AlertConfig, alert_config_from
from streamer.calls import WindowingConfig
from streamer.ingest.audiosocket import AudioSocketServer
from streamer.ingest.config import IngestConfig
from streamer.ingest.transport import IngestServer
from streamer.metrics import NodeStats
from streamer.monitor import Monitor
from streamer.nodes import CallClaims, Heartbeat, Reaper
from streamer.publisher import RedisPublisher
from streamer.scheduler import InferenceScheduler
from streamer.settings import Settings, is_loopback, runtime_file
from streamer.tools.redis_server import EmbeddedRedis

log = logging.getLogger(__name__)


def alert_config(settings: Settings, card_alerts: dict | None = None) -> AlertConfig:
    """The alert rules: the model card's thresholds, overridden by explicit settings."""
    return alert_config_from(
        card_alerts,
        smoothing=settings.alert_smoothing, baseline=settings.alert_baseline,
        alert_roles=tuple(r.strip() for r in settings.alert_roles.split(",") if r.strip()),
        consecutive=settings.alert_consecutive, clear_hold_s=settings.alert_clear_hold_s,
        frustration_on=settings.frustration_on, frustration_off=settings.frustration_off,
        distress_on=settings.distress_on, distress_off=settings.distress_off,
    )


def ingest_config(settings: Settings) -> IngestConfig:
    """The ingest limits: every IngestConfig field that Settings also has, by name."""
    shared = {f.name for f in dataclasses.fields(IngestConfig)} & set(Settings.model_fields)
    return IngestConfig(token=settings.ingest_token,
                        **{name: getattr(settings, name) for name in shared})


class Component(Protocol):
    """A part that runs on the service's lifecycle (the dashboard, mounted by the command
    line that composes them)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def banner(self) -> str:
        """One line for the console: where to reach it."""
        ...

    def runtime_info(self) -> dict[str, Any]:
        """What it adds to the runtime file (streamer.settings.runtime_file)."""
        ...


@dataclass(frozen=True)
class Mount:
    """How a component mounts itself on a :class:`Service`.

    Attributes:
        name: the component's name (``service.components[name]``).
        build: makes the component once the service's model, Redis and monitor run.
        check: validates settings before anything starts (raises ValueError) and returns
            the ports it will bind, as ``(what, port, option)``.
    """

    name: str
    build: Callable[[Service], Component]
    check: Callable[[Settings], list[tuple[str, int, str]]] = field(default=lambda s: [])


class Service:
    """Everything ``callmon serve`` runs, started and stopped in order.

    Args:
        settings: configuration.
        model: an already loaded :class:`models.EmotionModel` (tests inject one); loaded
            from ``settings`` when omitted.
        mounts: components started after ingest and stopped before it (the dashboard).
    """

    def __init__(self, settings: Settings, *, model=None, mounts: Sequence[Mount] = ()) -> None:
        self.settings = settings
        self.model = model
        self.embedded_redis: EmbeddedRedis | None = None
        self.redis: Any = None
        self.publisher: RedisPublisher | None = None
        self.scheduler: InferenceScheduler | None = None
        self.monitor: Monitor | None = None
        self.ingest: IngestServer | None = None
        self.audiosocket: AudioSocketServer | None = None
        self.mounts = tuple(mounts)
        self.components: dict[str, Component] = {}
        self.heartbeat: Heartbeat | None = None
        self.reaper: Reaper | None = None
        self.started_at = time.time()

    async def start(self) -> None:
        from models.inference import PREDICT_BATCH

        s = self.settings
        if self.model is None:
            self.model = await asyncio.to_thread(load_serving_model, s)
        try:  # before anything starts: a bad rule is a one-line refusal, nothing to undo
            alerts = alert_config(s, self.model.card.alerts)
        except ValueError as exc:
            raise ValueError(f"bad alert rules (the model card's alerts, under CALLMON_* "
                             f"settings): {exc}") from None
        url = s.redis_url
        if not url:
            self.embedded_redis = EmbeddedRedis(
                data_dir=Path(s.redis_dir) if s.redis_dir else None).start()
            url = self.embedded_redis.url
        self.redis = redis_client.connect(url)
        self.publisher = RedisPublisher(self.redis, node=s.node)
        self.publisher.live_calls = lambda: [
            c.start_event for c in (self.monitor.calls.values() if self.monitor else [])
            if c.start_event is not None and not c.ended]
        self.publisher.start()
        if not await self.publisher.first_attempt(3.0):
            log.warning("Redis at %s is not reachable; starting degraded, alerts will be held",
                        redis_client.display_url(url))
        self.claims = CallClaims(self.redis, s.node, ttl_s=s.heartbeat_ttl_s)
        self.heartbeat = Heartbeat(self.redis, s.node, interval_s=s.heartbeat_s,
                                   ttl_s=s.heartbeat_ttl_s,
                                   info=lambda: {"calls": len(self.monitor.calls)
                                                 if self.monitor else 0},
                                   claims=(self.claims, lambda: list(self.monitor.calls)
                                           if self.monitor else []))
        self.heartbeat.start()
        self.reaper = Reaper(self.redis, interval_s=s.heartbeat_s, own_node=s.node)
        self.reaper.start()
        # Run the largest batch once now: ONNX Runtime's memory arena grows to the peak batch
        # and keeps it, so memory is at its ceiling from the start, and the first busy moment
        # pays no allocation (see also enable_mem_pattern in models/ort.py).
        batch = scheduler_batch(s, self.model)
        await asyncio.to_thread(self.model.run_windows, np.zeros(
            (max(batch, PREDICT_BATCH), self.model.window_samples), dtype=np.float32))
        self.scheduler = InferenceScheduler(self.model.run_windows, max_batch=batch,
                                            max_wait_ms=s.max_wait_ms,
                                            max_pending_per_stream=s.pending_per_stream,
                                            max_age_s=s.max_window_age_s)
        self.scheduler.start()
        card = self.model.card
        self.monitor = Monitor(labels=self.model.labels, scheduler=self.scheduler,
                               publisher=self.publisher,
                               windowing=WindowingConfig(window_s=card.window_s, hop_s=s.hop_s),
                               alerts=alerts,
                               max_calls=s.max_calls, node=s.node, claims=self.claims)
        config = ingest_config(s)
        self.ingest = IngestServer(self.monitor, config, health=self.health)
        await self.ingest.start()
        if config.audiosocket_port is not None:
            self.audiosocket = AudioSocketServer(self.monitor, config)
            await self.audiosocket.start()
        for mount in self.mounts:
            component = mount.build(self)
            self.components[mount.name] = component
            await component.start()

    def stats(self) -> NodeStats | None:
        """This node's counters, for /metrics (None before the monitor runs)."""
        if self.monitor is None or self.scheduler is None or self.publisher is None:
            return None
        m, sch, pub = self.monitor.stats, self.scheduler.stats, self.publisher
        return NodeStats(
            live_calls=len(self.monitor.calls), windows=m.windows,
            silent_windows=m.silent_windows, scored=sch.scored, dropped=sch.dropped,
            alerts_raised=m.alerts_raised, alerts_cleared=m.alerts_cleared,
            calls_started=m.calls_started, redis_connected=pub.connected,
            undelivered_events=pub.undelivered, inference_ms=sch.inference_ms,
            batch_sizes=sch.batch_sizes, latency_ms=m.latency_ms)

    @property
    def redis_url(self) -> str:
        return self.settings.redis_url or self.embedded_redis.url  # type: ignore[union-attr]

    def health(self) -> dict:
        pub = self.publisher
        redis_ok = bool(pub and pub.connected)
        return {
            "status": "ok" if redis_ok else "degraded",
            "redis": {"connected": redis_ok, "last_error": pub.last_error if pub else None,
                      "degraded_since": pub.degraded_since if pub else None,
                      "undelivered_events": pub.undelivered if pub else 0},
            "model": {"name": self.model.card.name, "backbone": self.model.card.backbone,
                      "variant": self.model.variant,
                      "labels": list(self.model.labels)} if self.model else None,
            "live_calls": len(self.monitor.calls) if self.monitor else 0,
            "node": self.settings.node,
            "event_loop": aio.loop_name(),
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    async def stop(self, *, timeout_s: float = 8.0) -> None:
        """Graceful: stop accepting, end live calls (``call_ended`` with reason
        ``shutdown``), score in-flight windows, flush alerts to Redis."""
        if self.ingest:
            await self.ingest.stop_accepting()
        if self.audiosocket:
            await self.audiosocket.stop_accepting()
        for component in reversed(list(self.components.values())):
            await component.stop()
        if self.monitor:
            await self.monitor.shutdown()
        if self.ingest:
            await self.ingest.wait_connections(timeout_s / 2)
            await self.ingest.close()
        if self.audiosocket:
            await self.audiosocket.close(timeout_s / 4)
        if self.scheduler:
            await self.scheduler.stop(drain=True, timeout_s=timeout_s / 4)
        if self.publisher:
            await self.publisher.stop(flush_timeout_s=timeout_s / 4)
        for task in (self.reaper, self.heartbeat):
            if task is not None:
                await task.stop()
        if self.redis is not None:
            await self.redis.aclose()
        if self.embedded_redis:
            self.embedded_redis.close()


def scheduler_batch(s: Settings, model) -> int:
    """The most windows the scheduler hands the model at once. An ingest worker of ``serve
    --workers`` has one request in flight to the model process, so it scores at most a batch
    per round trip: with 32 (the default), 9 workers on an H100 host fell behind at 10 000
    calls (1 111 windows/s each against a ~30 ms round trip) and dropped windows. When the
    model process is on a GPU it asks its workers for up to ``WORKER_MAX_BATCH`` windows per
    request (``RemoteModel.worker_batch``); a worker waits no longer for them (``max_wait_ms``
    still bounds the wait), it only catches up in one request when windows have piled up. On
    a CPU a large batch only holds every window in it longer, so the batch stays as set."""
    return max(s.max_batch, getattr(model, "worker_batch", None) or 0)


def load_serving_model(s: Settings, *, max_batch: int | None = None):
    """The model ``serve`` runs: ONNX Runtime, or PyTorch (``--backend``; see Settings).

    Args:
        max_batch: the largest batch the caller will pass (default: the scheduler's,
            ``s.max_batch``); the PyTorch backend captures CUDA graphs up to it and splits
            larger batches.
    """
    from models import load_model
    from models.card import ModelCard
    from models.inference import resolve_model_path
    from models.torch_backend import TORCH_VARIANT, load_torch_model, torch_available

    if s.inference_socket:  # an ingest worker of serve --workers: the parent runs the model
        from streamer.inference_server import RemoteModel

        return RemoteModel(s.inference_socket)
    backend = s.backend
    if backend == "auto":
        directory = resolve_model_path(s.model_path)
        has_weights = directory.is_dir() and TORCH_VARIANT in ModelCard.load(directory).files
        wants_cuda = s.device.startswith("cuda") or s.device == "auto"
        backend = "torch" if has_weights and wants_cuda and torch_available(cuda=True) else "onnx"
    if backend == "torch":
        device = "cuda" if s.device == "auto" else s.device
        return load_torch_model(s.model_path, device, threads=s.threads,
                                max_batch=max(max_batch or s.max_batch, 32),
                                compile=s.torch_compile)
    return load_model(s.model_path, s.device, variant=s.model_variant, threads=s.threads)


def check_ports(settings: Settings, extra: Sequence[tuple[str, int, str]] = ()) -> None:
    """Refuse to start when a port is taken, before anything (an embedded Redis, the
    model) is started that would then have to be cleaned up."""
    import socket

    wanted = [("ingest", settings.port, "--port")]
    if settings.audiosocket_port is not None:
        wanted.append(("AudioSocket", settings.audiosocket_port, "--audiosocket-port"))
    for what, port, option in [*wanted, *extra]:
        if not port:
            continue
        with socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((settings.host, port))
            except OSError as exc:
                raise ValueError(f"the {what} port {settings.host}:{port} is not free "
                                 f"({exc.strerror}): is another callmon running? Choose "
                                 f"another with {option}") from None


def check_exposure(settings: Settings) -> None:
    """Refuse to open ingest beyond loopback without a token, unless told it is on purpose."""
    if (not is_loopback(settings.host) and not settings.ingest_token
            and not settings.insecure_ingest):
        raise ValueError(
            f"ingest would listen on {settings.host} without a token: set "
            "CALLMON_INGEST_TOKEN, or pass --insecure-ingest if authentication happens in "
            "front of callmon")


async def run(settings: Settings, *, mounts: Sequence[Mount] = ()) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully."""
    check_exposure(settings)
    ports = [port for mount in mounts for port in mount.check(settings)]  # before starting
    if not settings.reuse_port:  # a worker's siblings already hold the shared ports
        check_ports(settings, ports)
    service = Service(settings, mounts=mounts)
    try:
        await service.start()
    except BaseException:
        await service.stop()  # whatever started (an embedded Redis above all) is stopped
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Of serve --workers, the first worker (with the dashboard) says how to reach it.
    first = os.environ.get("CALLMON_WORKER_INDEX", "0") == "0"
    announced = announce(settings, service) if first else None
    if first:
        redis_shown = redis_client.display_url(service.redis_url)
        print(f"callmon ingest: ws://{settings.host}:{service.ingest.port}"  # type: ignore[union-attr]
              f"{{{','.join(service.ingest.adapters)}}} · Redis: {redis_shown}",  # type: ignore[union-attr]
              flush=True)
        if service.audiosocket is not None:
            print(f"callmon AudioSocket: tcp://{settings.host}:{service.audiosocket.port}",
                  flush=True)
        for component in service.components.values():
            print(component.banner(), flush=True)
    try:
        await stop.wait()
        log.info("shutting down")
        await service.stop()
    finally:
        if announced is not None:
            announced.unlink(missing_ok=True)


def announce(settings: Settings, service: Service) -> Path | None:
    """Write the runtime file (``streamer.settings.runtime_file``) of this serve process:
    readable by this user alone, as the Redis URL in it may hold a password."""
    import json

    path = runtime_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = {"pid": os.getpid(), "redis_url": service.redis_url,
                "ingest": f"ws://{settings.host}:{service.ingest.port}"}  # type: ignore[union-attr]
        for component in service.components.values():
            info.update(component.runtime_info())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(fd, 0o600)  # a file left by an older serve keeps its mode otherwise
            f.write(json.dumps(info) + "\n")
    except OSError as exc:
        log.warning("could not write %s: %s", path, exc)
        return None
    return path
