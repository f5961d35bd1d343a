"""Composition: build the model, Redis, scheduler, monitor and ingest server from Settings,
run them, and shut down gracefully."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamer import redis_client
from streamer.alerts import AlertConfig, alert_config_from
from streamer.calls import WindowingConfig
from streamer.monitor import Monitor
from streamer.nodes import CallClaims, Heartbeat, Reaper
from streamer.publisher import RedisPublisher
from streamer.redis_server import EmbeddedRedis
from streamer.scheduler import InferenceScheduler
from streamer.server import IngestConfig, IngestServer
from streamer.settings import Settings, is_loopback, runtime_file

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


class Service:
    """Everything ``callmon serve`` runs, started and stopped in order.

    Args:
        settings: configuration.
        model: an already loaded :class:`models.EmotionModel` (tests inject one); loaded
            from ``settings`` when omitted.
    """

    def __init__(self, settings: Settings, *, model=None, dashboard: bool = True) -> None:
        self.settings = settings
        self.model = model
        self.embedded_redis: EmbeddedRedis | None = None
        self.redis: Any = None
        self.publisher: RedisPublisher | None = None
        self.scheduler: InferenceScheduler | None = None
        self.monitor: Monitor | None = None
        self.ingest: IngestServer | None = None
        self.with_dashboard = dashboard
        self.dashboard: Any = None
        self.heartbeat: Heartbeat | None = None
        self.reaper: Reaper | None = None
        self.started_at = time.time()

    async def start(self) -> None:
        from models.inference import PREDICT_BATCH

        s = self.settings
        if self.model is None:
            self.model = await asyncio.to_thread(load_serving_model, s)
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
                        url)
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
        await asyncio.to_thread(self.model.run_windows, np.zeros(
            (max(s.max_batch, PREDICT_BATCH), self.model.window_samples), dtype=np.float32))
        self.scheduler = InferenceScheduler(self.model.run_windows, max_batch=s.max_batch,
                                            max_wait_ms=s.max_wait_ms,
                                            max_pending_per_stream=s.max_pending_per_stream)
        self.scheduler.start()
        card = self.model.card
        self.monitor = Monitor(labels=self.model.labels, scheduler=self.scheduler,
                               publisher=self.publisher,
                               windowing=WindowingConfig(window_s=card.window_s, hop_s=s.hop_s),
                               alerts=alert_config(s, self.model.card.alerts),
                               max_calls=s.max_calls, node=s.node, claims=self.claims)
        self.ingest = IngestServer(self.monitor, ingest_config(s), health=self.health)
        await self.ingest.start()
        if self.with_dashboard:
            from dashboard.server import build_dashboard

            self.dashboard = build_dashboard(s, redis_url=url, model=self.model, service=self)
            await self.dashboard.start()

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
            "model": {"name": self.model.card.name, "variant": self.model.variant,
                      "labels": list(self.model.labels)} if self.model else None,
            "live_calls": len(self.monitor.calls) if self.monitor else 0,
            "node": self.settings.node,
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    async def stop(self, *, timeout_s: float = 8.0) -> None:
        """Graceful: stop accepting, end live calls (``call_ended`` with reason
        ``shutdown``), score in-flight windows, flush alerts to Redis."""
        if self.ingest:
            await self.ingest.stop_accepting()
        if self.dashboard:
            await self.dashboard.stop()
        if self.monitor:
            await self.monitor.shutdown()
        if self.ingest:
            await self.ingest.wait_connections(timeout_s / 2)
            await self.ingest.close()
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


def load_serving_model(s: Settings):
    """The model ``serve`` runs: ONNX Runtime, or PyTorch (``--backend``; see Settings)."""
    from models import load_model
    from models.card import ModelCard
    from models.inference import resolve_model_path
    from models.torch_backend import TORCH_VARIANT, load_torch_model, torch_available

    backend = s.backend
    if backend == "auto":
        directory = resolve_model_path(s.model_path)
        has_weights = directory.is_dir() and TORCH_VARIANT in ModelCard.load(directory).files
        wants_cuda = s.device.startswith("cuda") or s.device == "auto"
        backend = "torch" if has_weights and wants_cuda and torch_available(cuda=True) else "onnx"
    if backend == "torch":
        device = "cuda" if s.device == "auto" else s.device
        return load_torch_model(s.model_path, device, threads=s.threads,
                                max_batch=max(s.max_batch, 32))
    return load_model(s.model_path, s.device, variant=s.model_variant, threads=s.threads)


def check_ports(settings: Settings, *, dashboard: bool) -> None:
    """Refuse to start when a port is taken, before anything (an embedded Redis, the
    model) is started that would then have to be cleaned up."""
    import socket

    wanted = [("ingest", settings.port)] + ([("dashboard", settings.dashboard_port)]
                                           if dashboard else [])
    for what, port in wanted:
        if port == 0:
            continue
        with socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((settings.host, port))
            except OSError as exc:
                raise ValueError(f"the {what} port {settings.host}:{port} is not free "
                                 f"({exc.strerror}): is another callmon running? Choose "
                                 f"another with --{'port' if what == 'ingest' else what + '-port'}"
                                 ) from None


def check_exposure(settings: Settings) -> None:
    """Refuse to open ingest beyond loopback without a token, unless told it is on purpose."""
    if (not is_loopback(settings.host) and not settings.ingest_token
            and not settings.insecure_ingest):
        raise ValueError(
            f"ingest would listen on {settings.host} without a token: set "
            "CALLMON_INGEST_TOKEN, or pass --insecure-ingest if authentication happens in "
            "front of callmon")


async def run(settings: Settings, *, dashboard: bool = True) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully."""
    check_exposure(settings)
    if dashboard:
        from dashboard.server import supervisor_auth

        supervisor_auth(settings)  # refuse an open dashboard beyond loopback before starting
    check_ports(settings, dashboard=dashboard)
    service = Service(settings, dashboard=dashboard)
    try:
        await service.start()
    except BaseException:
        await service.stop()  # whatever started (an embedded Redis above all) is stopped
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    announced = announce(settings, service)
    print(f"callmon ingest: ws://{settings.host}:{service.ingest.port}/v1/stream "  # type: ignore[union-attr]
          f"(Twilio: /v1/twilio) · Redis: {service.redis_url}", flush=True)
    if service.dashboard is not None:
        print(f"callmon dashboard: open http://{settings.host}:{service.dashboard.port}/",
              flush=True)
    try:
        await stop.wait()
        log.info("shutting down")
        await service.stop()
    finally:
        if announced is not None:
            announced.unlink(missing_ok=True)


def announce(settings: Settings, service: Service) -> Path | None:
    """Write the runtime file (``streamer.settings.runtime_file``) of this serve process."""
    import json
    import os

    path = runtime_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "pid": os.getpid(), "redis_url": service.redis_url,
            "ingest": f"ws://{settings.host}:{service.ingest.port}",  # type: ignore[union-attr]
            "dashboard": (f"http://{settings.host}:{service.dashboard.port}"
                          if service.dashboard is not None else None)}) + "\n")
    except OSError as exc:
        log.warning("could not write %s: %s", path, exc)
        return None
    return path
