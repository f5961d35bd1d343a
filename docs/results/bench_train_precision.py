"""Seconds per training step of the emotion network on this CPU, float32 against bf16-mixed.

``PYTHONPATH=. python docs/results/bench_train_precision.py [--backbones whisper-tiny,whisper-base]
[--steps 5] [--out docs/results/bench_train_precision.json]`` times what one training step of
``callmon train`` does (batch 16 of 3 s windows, forward, loss, backward, AdamW; one thread, as
each cross-validation fold runs) with autocast off and with bfloat16 autocast, the two
alternating, and prints each backbone's bf16/fp32 ratio. ``precision="auto"`` takes bf16-mixed
only where the CPU does bfloat16 itself (``trainer.train.cpu_has_native_bf16``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from models.backbones import build_backbone, random_twin
from models.network import EmotionNet
from trainer.train import auto_precision, cpu_has_native_bf16, cpu_model

BATCH, WINDOW = 16, 48_000


def step_seconds(net: EmotionNet, optimiser: torch.optim.Optimizer, bf16: bool) -> float:
    x = 0.05 * torch.randn(BATCH, WINDOW)
    y = torch.randint(0, 5, (BATCH,))
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = torch.nn.functional.cross_entropy(net(x).float(), y)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="whisper-tiny,whisper-base")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for name in args.backbones.split(","):
        net = EmotionNet(build_backbone(random_twin(name)), num_classes=5).train()
        optimiser = torch.optim.AdamW(net.parameters(), lr=1e-5)
        for bf16 in (False, True):  # the first step of each allocates: not timed
            step_seconds(net, optimiser, bf16)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.steps):
            for bf16 in (False, True):
                times[bf16].append(step_seconds(net, optimiser, bf16))
        fp32, bf16 = (statistics.median(times[k]) for k in (False, True))
        rows.append({"backbone": name, "fp32_s_per_step": round(fp32, 3),
                     "bf16_s_per_step": round(bf16, 3), "bf16_over_fp32": round(bf16 / fp32, 2)})
        print(f"{name}: float32 {fp32:.2f} s/step, bf16-mixed {bf16:.2f} s/step "
              f"({bf16 / fp32:.2f}x)", flush=True)
    report = {"cpu": cpu_model(), "cpu_has_native_bf16": cpu_has_native_bf16(),
              "auto_precision": auto_precision("cpu"),
              "batch": BATCH, "threads": 1, "steps": args.steps, "rows": rows}
    print(f"native bfloat16: {report['cpu_has_native_bf16']}; precision=auto trains in "
          f"{report['auto_precision']}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
