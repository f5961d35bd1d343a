"""How many windows a second ``serve --workers``' model process can take in over its Unix
socket, with a model that costs no CPU: each batch is staged into one buffer (as the PyTorch
backend stages into pinned memory) and then the process sleeps ``--gpu-ms`` (the GPU's share,
with the GIL released). ``--clients`` processes (the ingest workers) each send ``--windows``
windows per request, one request in flight, as fast as they are answered.

``--busy-thread`` adds a Python thread that never waits to the model process: any thread
holding the GIL there (a batch being prepared, the event loop) makes every other thread wait
for it after each system call, so a request read in many small pieces stalls many times.

    python docs/results/bench_inference_transport.py --busy-thread --out result.json

Run it from another tree (PYTHONPATH=that tree) to compare two versions of the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from models.card import ModelCard
from models.inference import DEFAULT_MODEL_DIR, WindowScorer
from streamer.inference_server import InferenceServer, RemoteModel


class StagingOnlyModel(WindowScorer):
    """The shipped card's labels and window; scoring is a copy into a staging buffer and a
    sleep, so the transport is all that is measured."""

    def __init__(self, gpu_s: float, max_batch: int = 256) -> None:
        self.card = ModelCard.load(DEFAULT_MODEL_DIR)
        self.labels = tuple(self.card.labels)
        self.variant = "staging-only"
        self.gpu_s = gpu_s
        self.host = np.empty((max_batch, self.window_samples), np.float32)

    @property
    def on_gpu(self) -> bool:
        return True

    def run_windows(self, windows: np.ndarray) -> np.ndarray:
        return self.run_window_parts([windows])

    def run_window_parts(self, parts) -> np.ndarray:
        start = 0
        for part in parts:
            n = min(len(part), len(self.host) - start)
            self.host[start : start + n] = part[:n]
            start += len(part)
        time.sleep(self.gpu_s)
        return np.zeros((start, len(self.labels)), np.float32)


def _client(path: str, windows: int, seconds: float, rates) -> None:
    model = RemoteModel(path)
    rng = np.random.default_rng(0)
    batch = (0.1 * rng.standard_normal((windows, model.window_samples))).astype(np.float32)
    done, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        model.run_windows(batch)
        done += windows
    rates.put(done / (time.monotonic() - started))


async def measure(*, clients: int, windows: int, seconds: float, gpu_ms: float,
                  busy_thread: bool) -> dict:
    path = Path(tempfile.mkdtemp()) / "inference.sock"
    server = InferenceServer(StagingOnlyModel(gpu_ms / 1000), path)
    await server.start()
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    if busy_thread:
        threading.Thread(target=spin, daemon=True).start()
    spawn = multiprocessing.get_context("spawn")
    rates = spawn.Queue()
    procs = [spawn.Process(target=_client, args=(str(path), windows, seconds, rates))
             for _ in range(clients)]
    for p in procs:
        p.start()
    total = sum([await asyncio.to_thread(rates.get) for _ in procs])
    for p in procs:
        p.join()
    stop.set()
    await server.close()
    window_bytes = 4 * server.model.window_samples
    return {"clients": clients, "windows_per_request": windows, "gpu_ms": gpu_ms,
            "busy_thread": busy_thread, "windows_per_s": round(total),
            "gb_per_s": round(total * window_bytes / 1e9, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--windows", type=int, default=128)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--gpu-ms", type=float, default=8.5, help="per batch (H200, 256: 8.5)")
    p.add_argument("--busy-thread", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    row = asyncio.run(measure(clients=args.clients, windows=args.windows, seconds=args.seconds,
                              gpu_ms=args.gpu_ms, busy_thread=args.busy_thread))
    print(json.dumps(row))
    if args.out:
        Path(args.out).write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
