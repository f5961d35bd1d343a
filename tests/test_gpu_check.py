"""``callmon bench gpu`` runs its whole script on the CPU here (no GPU on this machine), in
quick mode, and writes every figure the GPU run reports."""

from __future__ import annotations

import json
import subprocess
import sys

from trainer.train import auto_precision


def test_gpu_check_runs_on_cpu(tmp_path, ravdess_dir) -> None:
    out = tmp_path / "gpu_check.json"
    result = subprocess.run([sys.executable, "-m", "callmon_cli", "bench", "gpu", "--quick",
                             "--out", str(out), "--data", str(ravdess_dir)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    for key, variant in (("torch_inference", "torch-fp32"), ("onnx_inference", "fp16")):
        inference = report[key]  # on a GPU host: torch-fp16 with CUDA graphs
        assert inference["variant"] == variant and [r["batch"] for r in inference["rows"]] == [1, 8]
        assert all(r["windows_per_s"] > 0 and r["p95_ms"] >= r["p50_ms"] > 0
                   for r in inference["rows"])
        assert inference["calls_at_1s_hop"] == int(0.7 * inference["max_windows_per_s"])
    training = report["training"]
    assert training["precision"] == report["wav2vec2"]["precision"] == auto_precision()
    assert training["epochs"] == 1 and 0.0 <= training["test_uar"] <= 1.0
    assert training["test_speakers"]  # speaker-independent: the held-out actors of fold 4
    assert report["wav2vec2"]["seconds_per_step"] > 0
    assert "PyTorch" in result.stdout and "windows/s" in result.stdout


def test_gpu_check_parts_can_be_skipped(tmp_path) -> None:
    """A GPU host without the training corpus: ``--skip training,wav2vec2,onnx``; an unknown
    part is refused by name."""
    out = tmp_path / "gpu_check.json"
    result = subprocess.run([sys.executable, "-m", "callmon_cli", "bench", "gpu", "--quick",
                             "--out", str(out), "--skip", "training,wav2vec2,onnx"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report) >= {"torch_inference", "environment"}
    assert not set(report) & {"training", "wav2vec2", "onnx_inference"}
    bad = subprocess.run([sys.executable, "-m", "callmon_cli", "bench", "gpu", "--skip", "tarining"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not 'tarining'" in bad.stderr
