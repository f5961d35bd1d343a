"""torch.compile for fixed shapes against the shipped setting, on a CUDA host: the PyTorch
backend at one batch (default 512) with CUDA graphs and no compilation, the same with TF32,
then the network compiled for that one shape under the same CUDA graph. Prints JSON.

    python docs/results/gpu_compile_static.py 512

The "compile_experiment" figures in docs/results/gpu_h100.json came from this script (run as
an untracked copy before torch.compile became the serving default; load_torch_model compiles
on CUDA by itself now, so the model is loaded with compile=False here).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from models.torch_backend import load_torch_model


def timed(model, x: np.ndarray, n: int = 20) -> dict:
    for _ in range(3):
        model.run_windows(x)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        model.run_windows(x)
        times.append(1000 * (time.perf_counter() - t0))
    p50 = float(np.median(times))
    return {"p50_ms": round(p50, 2), "windows_per_s": round(len(x) / p50 * 1000, 1)}


def main(batch: int) -> dict:
    x = (0.05 * np.random.default_rng(0).standard_normal((batch, 48_000))).astype(np.float32)
    model = load_torch_model(device="cuda", max_batch=batch, compile=False)
    reference = model.run_windows(x)
    out: dict = {"graphs": timed(model, x)}
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model._graphs = {}
    out["graphs_tf32"] = timed(model, x)
    started = time.perf_counter()
    model._net_call = torch.compile(model.net, dynamic=False)
    model._graphs = {}
    out["compiled_graphs"] = timed(model, x)
    out["compile_s"] = round(time.perf_counter() - started, 1)
    out["compiled_max_abs_diff"] = float(np.abs(model.run_windows(x) - reference).max())
    return out


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 512)))
