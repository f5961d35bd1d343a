"""``callmon bench predict``: end-to-end latency of ``POST /api/v1/predict`` for a 10 s clip
over real HTTP, next to the bare model time for the same audio (the ratio is the API's
overhead: upload, decoding, resampling)."""

from __future__ import annotations

import asyncio
import io
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.audio import MODEL_RATE_HZ


def _clip(data: Path, seconds: float) -> np.ndarray:
    from models.corpora import discover, load_audio

    items = discover(data)
    pieces, total = [], 0
    for u in items[:: max(1, len(items) // 40)]:
        pieces.append(load_audio(u.path))
        total += len(pieces[-1])
        if total >= seconds * MODEL_RATE_HZ:
            break
    return np.concatenate(pieces)[: int(seconds * MODEL_RATE_HZ)]


def _wav(audio: np.ndarray, rate: int) -> bytes:
    import soundfile as sf
    import soxr

    if rate != MODEL_RATE_HZ:
        audio = soxr.resample(audio, MODEL_RATE_HZ, rate)
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


async def _run(data: Path, repeats: int, seconds: float) -> dict:
    import httpx

    from dashboard.app import create_app
    from dashboard.auth import SupervisorAuth
    from dashboard.server import DashboardServer
    from models import load_model
    from streamer.tools.redis_server import EmbeddedRedis

    model = load_model(threads=2)
    audio = _clip(data, seconds)
    bare = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict_windows(audio)
        bare.append(1000 * (time.perf_counter() - t0))
    out: dict[str, Any] = {"clip_s": seconds, "repeats": repeats,
           "model_only_ms": {"p50": round(statistics.median(bare), 1)}}
    with EmbeddedRedis(persist=False) as redis_server:
        app = create_app(redis_url=redis_server.url,
                         auth=SupervisorAuth(user="supervisor", password=None, token=None),
                         model=model)
        server = DashboardServer(app, host="127.0.0.1", port=0)
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}",
                                         timeout=30) as client:
                for rate in (MODEL_RATE_HZ, 8_000):
                    body = _wav(audio, rate)
                    times = []
                    for _ in range(repeats + 1):
                        t0 = time.perf_counter()
                        r = await client.post("/api/v1/predict", files={"file": ("c.wav", body)})
                        r.raise_for_status()
                        times.append(1000 * (time.perf_counter() - t0))
                    times = times[1:]  # the first request warms the upload path
                    out[f"http_{rate // 1000}k_ms"] = {
                        "p50": round(statistics.median(times), 1),
                        "p95": round(float(np.percentile(times, 95)), 1),
                        "max": round(max(times), 1)}
        finally:
            await server.stop()
    out["overhead_ratio_16k"] = round(out["http_16k_ms"]["p50"] / out["model_only_ms"]["p50"], 2)
    return out


def bench_predict(*, data: Path, repeats: int = 20, seconds: float = 10.0) -> dict:
    return asyncio.run(_run(data, repeats, seconds))
