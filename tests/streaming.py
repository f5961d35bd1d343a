"""Helpers for end-to-end streaming tests: a running service on loopback, test calls built
from real RAVDESS clips, and condition waits."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np

from dashboard.server import mount
from dashboard.settings import OWN_FIELDS
from models.corpora import load_audio
from streamer.service import Service
from streamer.settings import Settings

RAVDESS_CODES = {"neutral": "01", "calm": "02", "happy": "03", "sad": "04", "angry": "05",
                 "fearful": "06"}


def actor_clips(ravdess: Path, actor: str, emotion: str, n: int, *, intensity: str | None = None
                ) -> list[np.ndarray]:
    """``n`` speech clips of one actor and emotion (16 kHz float32)."""
    pattern = f"Actor_{actor}/03-01-{RAVDESS_CODES[emotion]}-{intensity or '*'}-*-*-{actor}.flac"
    files = sorted(glob.glob(str(ravdess / pattern)))[:n]
    assert len(files) == n, f"only {len(files)} clips match {pattern}"
    return [load_audio(f) for f in files]


def calm_then_angry(ravdess: Path, actor: str) -> tuple[np.ndarray, float]:
    """A customer who is calm for about 20 s, then angry (RAVDESS's strong intensity)
    for about 15 s.

    Returns:
        16 kHz audio and the second at which the anger starts.
    """
    calm = actor_clips(ravdess, actor, "calm", 6)
    angry = actor_clips(ravdess, actor, "angry", 4, intensity="02")
    onset = sum(len(c) for c in calm) / 16_000
    return np.concatenate(calm + angry), onset


# Tests replay recordings at up to 8x real time (Twilio: 20 ms per track, 800 messages/s):
# allow it; the defaults refuse beyond 4x and 500 messages/s.
# They check the plumbing (an alert gets through outages, limits, protocols), so they run
# responsive alert rules that raise within seconds of an onset; the shipped model's own,
# stricter rules (its card) are measured by `callmon calibrate` and exercised by
# test_stream_e2e.py::test_shipped_alert_rules_end_to_end.
RESPONSIVE = {"frustration_on": 0.55, "frustration_off": 0.3, "distress_on": 0.6,
              "distress_off": 0.35, "alert_consecutive": 2, "alert_smoothing": 0.6}
REPLAY = {"max_speed": 16.0, "max_messages_per_s": 2000.0, **RESPONSIVE}


async def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Wait until ``predicate()`` holds, checking every 20 ms."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


def service_settings(redis_url: str, overrides: dict) -> tuple[Settings, list]:
    """Streamer settings on free ports, and the dashboard mounted with its own settings
    (``overrides`` may hold either kind)."""
    own = {k: v for k, v in overrides.items() if k in OWN_FIELDS}
    rest = {k: v for k, v in overrides.items() if k not in OWN_FIELDS}
    settings = Settings(port=0, redis_url=redis_url, **{"node": "test-node", **REPLAY, **rest})
    return settings, [mount(**{"dashboard_port": 0, **own})]


@contextlib.asynccontextmanager
async def running_service(model, redis_url: str, **overrides) -> AsyncIterator[Service]:
    settings, mounts = service_settings(redis_url, overrides)
    service = Service(settings, mounts=mounts, model=model)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


class ServiceThread:
    """A Service (ingest + dashboard) running in its own thread and event loop, for tests
    that drive it from synchronous code (HTTP clients, a browser)."""

    def __init__(self, model, redis_url: str, **overrides) -> None:
        import threading

        self.model = model
        self.redis_url = redis_url
        self.overrides = overrides
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.service: Service | None = None

    def __enter__(self) -> ServiceThread:
        self.thread.start()
        settings, mounts = service_settings(self.redis_url, self.overrides)
        self.service = Service(settings, mounts=mounts, model=self.model)
        self.run(self.service.start(), timeout=60)
        return self

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro):
        """Start ``coro`` on the service's loop; returns a concurrent Future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    @property
    def ingest_url(self) -> str:
        return f"ws://127.0.0.1:{self.service.ingest.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.service.components['dashboard'].port}"

    def __exit__(self, *exc) -> None:
        self.run(self.service.stop(), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
