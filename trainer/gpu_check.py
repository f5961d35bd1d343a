"""``callmon bench gpu``: every GPU figure in one run, written to one JSON file.

1. Model only, the PyTorch backend (what ``serve`` runs on CUDA): the shipped float16
   weights, CUDA graphs per batch bucket, pinned host buffers, at batch sizes up to 1024:
   windows/s and latency percentiles per batch (host → device copy, run, device → host copy:
   what the server pays), the concurrent calls one GPU sustains at a 1 s hop, the same batch
   without CUDA graphs, and where the GPU's time goes (the profiler's top kernels).
2. Model only, ONNX Runtime's CUDA provider with I/O binding (the fp16 ONNX file), where
   ``onnxruntime-gpu`` is installed; on a CPU host, the same on the CPU.
3. Training: the shipped recipe (Lightning, ``precision="16-mixed"`` on CUDA) on the shipped
   fold (actors 17–20 held out): seconds per epoch and the speaker-independent test scores.
4. wav2vec2-base (random weights: speed only): seconds per training step, mixed precision.
5. With ``--server-calls``: the whole server path, ``callmon bench load`` against ``callmon serve
   --workers W`` (the model once, on the GPU; W ingest processes) with G load-generator
   processes, for each call count: calls held with p95 < 300 ms and nothing dropped, GPU
   utilisation, server CPU, next to the model-only figures.

``--skip`` leaves parts out (a GPU host without the training corpus: ``--skip training``).
Without a GPU it runs the same code on the CPU (``--quick`` shrinks every part), which is
how it is tested; the JSON says which device produced it.
"""

from __future__ import annotations

import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

WINDOW = 48_000
LATENCY_BUDGET_MS = 250.0  # a batch must come back within this for a 1 s hop to keep up
HEADROOM = 0.7  # run a GPU at 70 % of its measured capacity


def environment() -> dict:
    import onnxruntime as ort
    import torch

    from trainer.train import cpu_model

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers(),
        "cuda": cuda, "device_name": torch.cuda.get_device_name(0) if cuda else cpu_model(),
    }


def _rows(run, batches: list[int], repeats: int) -> list[dict]:
    """Latency percentiles and windows/s of ``run(x)`` (milliseconds) per batch size."""
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        x = (0.05 * rng.standard_normal((batch, WINDOW))).astype(np.float32)
        for _ in range(3):
            run(x)  # warm-up: allocations, kernel choice, CUDA graph capture
        times = [run(x) for _ in range(repeats)]
        p50, p95, p99 = (float(v) for v in np.percentile(times, [50, 95, 99]))
        rows.append({"batch": batch, "p50_ms": round(p50, 2), "p95_ms": round(p95, 2),
                     "p99_ms": round(p99, 2), "windows_per_s": round(batch / (p50 / 1000), 1)})
        log.info("batch %d: p50 %.2f ms, %.0f windows/s", batch, p50, rows[-1]["windows_per_s"])
    return rows


def _capacity(rows: list[dict]) -> dict:
    usable = [r for r in rows if r["p95_ms"] <= LATENCY_BUDGET_MS]
    best = max(usable, key=lambda r: r["windows_per_s"]) if usable else None
    return {
        "best_batch": best["batch"] if best else None,
        "max_windows_per_s": best["windows_per_s"] if best else 0.0,
        # One window per second per scored channel at a 1 s hop (mono: one per call).
        "calls_at_1s_hop": int(HEADROOM * best["windows_per_s"]) if best else 0,
        "rule": f"best windows/s among batches with p95 <= {LATENCY_BUDGET_MS:g} ms, "
                f"times {HEADROOM:g} headroom",
    }


def _timed(fn):
    def run(x: np.ndarray) -> float:
        t0 = time.perf_counter()
        fn(x)
        return 1000 * (time.perf_counter() - t0)
    return run


def bench_torch_inference(*, device: str, batches: list[int], repeats: int) -> dict:
    """The PyTorch backend as ``serve --backend torch`` loads it: float16 and CUDA graphs on
    CUDA (float32, eager on a CPU). Also the largest batch without CUDA graphs, and on CUDA
    the profiler's top kernels at that batch."""
    from models.torch_backend import TorchEmotionModel, load_torch_model

    started = time.perf_counter()
    model = load_torch_model(device=device, threads=2, max_batch=max(batches))
    report: dict = {"device": device, "variant": model.variant, "compiled": model.compiled,
                    "cuda_graphs": model.use_graphs, "buckets": model.buckets,
                    "load_and_warmup_s": round(time.perf_counter() - started, 1)}
    report["rows"] = rows = _rows(_timed(model.run_windows), batches, repeats)
    report.update(_capacity(rows))
    if model.cuda:  # what each piece buys, at the largest batch; then where the time goes
        for name, kwargs in (("uncompiled", {"compile": False}),
                             ("uncompiled_without_cuda_graphs", {"compile": False,
                                                                 "cuda_graphs": False})):
            try:
                other = TorchEmotionModel(model.net, model.card, device=device,
                                          max_batch=max(batches), **kwargs)
                report[name] = _rows(_timed(other.run_windows), [max(batches)], repeats)
            except Exception as exc:  # a comparison only: the figures above stand
                report[name] = {"error": repr(exc)[:500]}
        try:
            report["top_kernels"] = profile_kernels(TorchEmotionModel(
                model.net, model.card, device=device, max_batch=max(batches),
                compile=model.compiled, cuda_graphs=False), max(batches))
        except Exception as exc:
            report["top_kernels"] = {"error": repr(exc)[:500]}
    return report


def profile_kernels(model, batch: int, top: int = 15) -> list[dict]:
    """The GPU's time at one batch by kernel (torch.profiler, without CUDA graphs: a replay
    hides its kernels), as a share of the GPU's total."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    x = (0.05 * np.random.default_rng(1).standard_normal((batch, WINDOW))).astype(np.float32)
    model.run_windows(x)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            model.run_windows(x)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in events) or 1.0
    events.sort(key=lambda e: -e.self_device_time_total)
    return [{"kernel": e.key[:120], "calls": e.count,
             "ms_per_batch": round(e.self_device_time_total / 3 / 1000, 3),
             "share": round(e.self_device_time_total / total, 4)} for e in events[:top]]


def bench_onnx_inference(*, device: str, batches: list[int], repeats: int) -> dict:
    """The shipped fp16 ONNX model with I/O binding on ``device`` (``cuda`` or ``cpu``)."""
    import onnxruntime as ort

    from models import load_model

    where = "cuda" if device.startswith("cuda") else "cpu"
    if where == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"device": device, "skipped": "this onnxruntime has no CUDA provider "
                "(pip install callmon[gpu], i.e. onnxruntime-gpu)"}
    model = load_model(device=device, variant="fp16", threads=2)
    session = model.session
    binding = session.io_binding()
    rows = _rows(lambda x: _timed_run(model, binding, x, where), batches, repeats)
    return {"device": device, "variant": model.variant, "providers": session.get_providers(),
            "rows": rows, **_capacity(rows)}


def _timed_run(model, binding, x: np.ndarray, where: str) -> float:
    """Milliseconds for one batch: copy in, run, copy the probabilities out."""
    import onnxruntime as ort

    t0 = time.perf_counter()
    binding.bind_ortvalue_input(model.card.input_name, ort.OrtValue.ortvalue_from_numpy(x, where, 0))
    binding.bind_output(model.card.output_name, where)
    model.session.run_with_iobinding(binding)
    probs = binding.copy_outputs_to_cpu()[0]
    if probs.shape != (x.shape[0], len(model.labels)):
        raise RuntimeError(f"unexpected output shape {probs.shape}")
    return 1000 * (time.perf_counter() - t0)


def bench_training(*, data: str, epochs: int, limit_items: int, out: Path) -> dict:
    """The shipped recipe on the shipped fold; 16-mixed on CUDA (``precision="auto"``)."""
    from trainer.config import TrainConfig
    from trainer.train import _precision, train

    cfg = TrainConfig(data=data, out=str(out), epochs=epochs, fold=4, limit_items=limit_items,
                      progress=False)
    metrics = train(cfg)
    return {
        "precision": _precision(cfg), "epochs": metrics["epochs_run"],
        "train_seconds": metrics["train_seconds"],
        "seconds_per_epoch": round(metrics["train_seconds"] / max(1, metrics["epochs_run"]), 2),
        "test_speakers": metrics["split"]["test"], "limit_items": limit_items,
        "test_uar": round(metrics["test"]["uar"], 4),
        "test_telephone_uar": round(metrics["test_telephone"]["uar"], 4),
    }


def bench_wav2vec2_step(*, base: bool, batch: int, steps: int) -> dict:
    """Training steps (forward, backward, AdamW) of a wav2vec2 backbone + callmon's head."""
    import torch

    from models.backbones import Wav2Vec2Backbone
    from models.network import EmotionNet
    from trainer.bench import save_random_wav2vec2
    from trainer.train import auto_precision, autocast_dtype

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    precision = auto_precision()
    dtype = autocast_dtype(precision)
    with tempfile.TemporaryDirectory() as tmp:
        net = EmotionNet(Wav2Vec2Backbone(save_random_wav2vec2(Path(tmp), base=base)),
                         num_classes=5).to(device).train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler(enabled=dtype is torch.float16)
    x = 0.05 * torch.randn(batch, WINDOW, device=device)
    y = torch.randint(0, 5, (batch,), device=device)
    times = []
    for i in range(steps + 2):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        if cuda:
            torch.cuda.synchronize()
        if i >= 2:  # the first steps allocate and pick kernels
            times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in net.parameters())
    return {"model": "wav2vec2-base" if base else "wav2vec2-tiny", "params_m": round(params / 1e6, 1),
            "batch": batch, "precision": precision,
            "seconds_per_step": round(statistics.median(times), 4),
            "windows_per_s": round(batch / statistics.median(times), 1)}


def bench_server_path(*, calls: list[int], workers: int, generators: int, backend: str,
                      duration_s: float, data: str, frame_ms: int = 20) -> dict:
    """``callmon bench load`` as a user runs it (a separate process: the trainer does not
    import the streamer), its JSON read back."""
    import json
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "load.json"
        command = [sys.executable, "-m", "callmon_cli", "bench", "load",
                   "--calls", ",".join(map(str, calls)), "--workers", str(workers),
                   "--generators", str(generators), "--backend", backend,
                   "--duration", str(duration_s), "--frame-ms", str(frame_ms), "--data", data,
                   "--out", str(out)]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"bench load failed: {proc.stderr[-2000:]}")
        rows = json.loads(out.read_text())
    good = [r["calls"] for r in rows if r["held"]]
    return {"command": " ".join(command[2:-2]), "runs": rows,
            "calls_held": max(good) if good else 0}


PARTS = ("torch", "onnx", "training", "wav2vec2", "server")


def parse_skip(text: str) -> tuple[str, ...]:
    """``--skip``'s comma-separated parts, checked against :data:`PARTS` (:func:`check_skip`)."""
    return check_skip(tuple(p.strip() for p in text.split(",") if p.strip()), text)


def check_skip(skip: tuple[str, ...], given: str | None = None) -> tuple[str, ...]:
    """``skip`` when every part is one of :data:`PARTS`.

    Raises:
        ValueError: a part that is not one of them, named (as ``given``, if given).
    """
    if set(skip) - set(PARTS):
        shown = ",".join(skip) if given is None else given
        raise ValueError(f"--skip takes {', '.join(PARTS)}; not {shown!r}")
    return skip


def run_gpu_check(*, data: str, quick: bool = False, epochs: int = 25,
                  server_calls: list[int] | None = None, workers: int = 8,
                  generators: int = 4, server_duration_s: float = 60.0, frame_ms: int = 20,
                  skip: tuple[str, ...] = ()) -> dict:
    import torch

    check_skip(skip)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    report: dict = {"environment": environment(), "quick": quick, "skipped": list(skip)}
    started = time.perf_counter()
    repeats = 5 if quick else 30
    if "torch" not in skip:
        report["torch_inference"] = bench_torch_inference(
            device=device, repeats=repeats,
            batches=[1, 8] if quick else [1, 8, 64, 128, 256, 512, 1024])
    if "onnx" not in skip:
        report["onnx_inference"] = bench_onnx_inference(
            device=device, repeats=repeats,
            batches=[1, 8] if quick else [1, 8, 64, 128, 256, 384])
    if "training" not in skip:
        with tempfile.TemporaryDirectory() as tmp:
            report["training"] = bench_training(data=data, epochs=1 if quick else epochs,
                                                limit_items=120 if quick else 0,
                                                out=Path(tmp) / "run")
    if "wav2vec2" not in skip:
        report["wav2vec2"] = bench_wav2vec2_step(base=not quick, batch=2 if quick else 16,
                                                 steps=2 if quick else 10)
    if server_calls and "server" not in skip:
        report["server_path"] = bench_server_path(
            calls=server_calls, workers=workers, generators=generators,
            backend="torch" if cuda else "onnx", duration_s=server_duration_s, data=data,
            frame_ms=frame_ms)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def summary_line(report: dict) -> str:
    """One line of the headline figures, for the terminal."""
    parts = [report["environment"]["device_name"] + ":"]
    for key, name in (("torch_inference", "PyTorch"), ("onnx_inference", "ONNX Runtime")):
        inf = report.get(key)
        if inf and "rows" in inf:
            parts.append(f"{name} {inf['max_windows_per_s']} windows/s (batch "
                         f"{inf['best_batch']}), about {inf['calls_at_1s_hop']} calls at a 1 s hop;")
        elif inf:
            parts.append(f"{name} skipped ({inf['skipped']});")
    if "training" in report:
        t = report["training"]
        parts.append(f"training {t['seconds_per_epoch']} s/epoch ({t['precision']}), "
                     f"test UAR {t['test_uar']};")
    if "wav2vec2" in report:
        w = report["wav2vec2"]
        parts.append(f"{w['model']} {w['seconds_per_step']} s/step.")
    if "server_path" in report:
        parts.append(f"Server path: {report['server_path']['calls_held']} calls held.")
    return " ".join(parts)

