"""``callmon serve --workers N``: one model process, N ingest processes.

The parent loads the model once and serves it on a Unix socket
(:class:`~streamer.inference_server.InferenceServer`), starts the embedded Redis when none is
configured, and runs N workers: each is a whole ``callmon serve`` (ingest, windowing, voice
gate, alerts, Redis publishing; the first one also the dashboard) whose model is the parent's
(:class:`~streamer.inference_server.RemoteModel`) and whose ports are shared with its
siblings (``SO_REUSEPORT``: the kernel spreads new connections over them). Each worker is a
node of the cluster (its own call claims and heartbeat), so a worker that dies has its calls
ended as ``lost`` by the others, and the parent starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from streamer import children
from streamer.inference_server import InferenceServer
from streamer.redis_client import display_url
from streamer.service import Mount, check_exposure, check_ports, load_serving_model
from streamer.settings import Settings
from streamer.tools.redis_server import EmbeddedRedis

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0)
#: The most windows the model process scores in one pass, whatever each worker sends.
INFERENCE_BATCH = 256


def worker_argv(argv: Sequence[str], index: int) -> list[str]:
    """The parent's own ``serve`` arguments for worker ``index``: without ``--workers``, and
    with ``--no-dashboard`` for every worker but the first."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    if index > 0 and "--no-dashboard" not in out:
        out.append("--no-dashboard")
    return out


async def run_workers(settings: Settings, argv: Sequence[str], *,
                      mounts: Sequence[Mount] = ()) -> None:
    """Run until SIGINT/SIGTERM; then stop the workers (each ends its calls gracefully),
    the model process and the embedded Redis."""
    check_exposure(settings)
    check_ports(settings, [port for mount in mounts for port in mount.check(settings)])
    embedded: EmbeddedRedis | None = None
    redis_url = settings.redis_url
    if not redis_url:
        embedded = EmbeddedRedis(data_dir=Path(settings.redis_dir) if settings.redis_dir else None)
        embedded.start()
        redis_url = embedded.url
    runtime = Path(tempfile.mkdtemp(prefix="callmon-workers-"))
    server: InferenceServer | None = None
    procs: dict[int, subprocess.Popen] = {}
    try:
        # The model takes the server's coalesced batches whole (the PyTorch backend split
        # them into 32-window graph replays when it was loaded for the scheduler's batch).
        batch = max(INFERENCE_BATCH, settings.max_batch)
        model = await asyncio.to_thread(load_serving_model, settings, max_batch=batch)
        server = InferenceServer(model, runtime / "inference.sock", max_batch=batch,
                                 max_wait_ms=settings.max_wait_ms / 2)
        await server.start()
        env = {**os.environ, "REDIS_URL": redis_url, "CALLMON_WORKERS": "1",
               "CALLMON_INFERENCE_SOCKET": str(server.path), "CALLMON_REUSE_PORT": "1"}

        def spawn(index: int) -> subprocess.Popen:
            return children.popen(
                [sys.executable, "-m", "callmon_cli", "serve", *worker_argv(argv, index)],
                env={**env, "CALLMON_WORKER_INDEX": str(index)})

        for i in range(settings.workers):
            procs[i] = spawn(i)
        print(f"callmon: {settings.workers} ingest workers on port {settings.port}, one model "
              f"process ({model.variant}), Redis {display_url(redis_url)}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        restarts: dict[int, int] = {}
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            for i, proc in list(procs.items()):
                if stop.is_set() or proc.poll() is None:
                    continue
                n = restarts.get(i, 0)
                delay = RESTART_BACKOFF_S[min(n, len(RESTART_BACKOFF_S) - 1)]
                log.warning("worker %d exited with %s; starting a new one in %.0f s", i,
                            proc.returncode, delay)
                restarts[i] = n + 1
                await asyncio.sleep(delay)
                procs[i] = spawn(i)
    finally:
        await _stop_all(procs)
        if server is not None:
            await server.close()
        if embedded is not None:
            embedded.close()
        await asyncio.to_thread(shutil.rmtree, runtime, True)


async def _stop_all(procs: dict[int, subprocess.Popen], timeout_s: float = 15.0) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in procs.values():
        try:
            await asyncio.to_thread(proc.wait, max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
