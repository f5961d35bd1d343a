"""The PyTorch inference backend on CPU: same interface and outputs as ONNX Runtime (within
the float16-weight tolerance the card states), and the serve path running on it. Its CUDA
path (half precision, CUDA graphs, pinned buffers) needs a GPU and is not run here."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from models import ModelCardError, load_model
from models.torch_backend import (
    TORCH_VARIANT,
    TorchEmotionModel,
    load_torch_model,
    torch_available,
)
from streamer.tools.client import stream_native
from trainer.config import TrainConfig
from trainer.export import export_checkpoint
from trainer.train import train

from .streaming import actor_clips, running_service


@pytest.fixture(scope="module")
def exported(tmp_path_factory, ravdess_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("torch")
    metrics = train(TrainConfig(data=str(ravdess_dir), out=str(tmp / "run"),
                                backbone="whisper-tiny", fast_dev_run=True, limit_items=60,
                                batch_size=2, progress=False, precision="32"))
    rng = np.random.default_rng(0)
    windows = (0.05 * rng.standard_normal((8, 48_000))).astype(np.float32)
    export_checkpoint(metrics["checkpoint"], tmp / "model", variants=("fp32", TORCH_VARIANT),
                      parity_windows=windows)
    return tmp / "model"


def test_same_outputs_as_onnx(exported: Path, ravdess_dir: Path) -> None:
    onnx = load_model(exported, variant="fp32")
    torch_model = load_torch_model(exported, "cpu")
    assert isinstance(torch_model, TorchEmotionModel) and torch_model.variant == "torch-fp32"
    assert torch_model.labels == onnx.labels and torch_model.window_samples == 48_000
    clips = actor_clips(ravdess_dir, "17", "angry", 4) + actor_clips(ravdess_dir, "18", "sad", 4)
    x = np.stack([np.resize(c, 48_000) for c in clips]).astype(np.float32)
    a, b = onnx.run_windows(x), torch_model.run_windows(x)
    stated = json.loads((exported / "model_card.json").read_text())
    tolerance = stated["evaluation"]["onnx_parity"][TORCH_VARIANT]
    assert tolerance["windows"] == 8 and tolerance["max_abs_prob_diff"] < 0.05
    assert np.abs(a - b).max() < max(0.05, 3 * tolerance["max_abs_prob_diff"])
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.875
    # The shared clip interface: padding, long clips, batches.
    assert torch_model(x[0][:10_000]).shape == (5,)
    starts, probs = torch_model.predict_windows(np.concatenate(clips[:3]))
    assert len(starts) == len(probs) and np.allclose(probs.sum(1), 1, atol=1e-4)
    big = np.tile(x, (40, 1))  # beyond max_batch: split, same answers
    small = TorchEmotionModel(torch_model.net, torch_model.card, max_batch=64)
    assert np.allclose(small.run_windows(big)[:8], b, atol=1e-5)
    # The inference server's coalesced requests, staged without joining them first.
    assert np.allclose(small.run_window_parts([x[:3], x[3:5], x[5:]]), b, atol=1e-5)
    assert np.allclose(small.run_window_parts([big[:40], big[40:]])[:8], b, atol=1e-5)


def test_serve_runs_on_the_torch_backend(exported, ravdess_dir, redis_server) -> None:
    from streamer.service import load_serving_model
    from streamer.settings import Settings

    model = load_serving_model(Settings(model_path=str(exported), backend="torch",
                                        device="cpu"))
    assert isinstance(model, TorchEmotionModel)
    onnx = load_serving_model(Settings(model_path=str(exported), backend="auto", device="cpu",
                                       model_variant="fp32"))
    assert not isinstance(onnx, TorchEmotionModel)  # auto: no CUDA here → ONNX Runtime
    audio = np.concatenate(actor_clips(ravdess_dir, "19", "angry", 3))

    async def main():
        async with running_service(model, redis_server.url) as service:
            return await stream_native(f"ws://127.0.0.1:{service.ingest.port}/v1/stream",
                                       audio[:, None], rate=16_000, speed=4.0)

    # 4x real time, not 8x: this checks that serve runs on the PyTorch backend, not its
    # capacity; at 8x the float32 PyTorch model on this 2-core CPU once fell behind and the
    # scheduler shed a window, as designed (CI, 2026-11-28).
    outcome = asyncio.run(main())
    assert outcome.close_code == 1000 and outcome.ended["dropped"] == 0
    assert outcome.windows and all(abs(sum(w["scores"].values()) - 1) < 1e-3
                                   for w in outcome.windows if w["scores"])


def test_bad_torch_weights_are_refused(exported: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(exported, copy)
    card = json.loads((copy / "model_card.json").read_text())
    weights = copy / card["files"][TORCH_VARIANT]
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelCardError, match="SHA-256"):
        load_torch_model(copy)
    del card["files"][TORCH_VARIANT]
    (copy / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelCardError, match="no PyTorch weights"):
        load_torch_model(copy)


def test_half_precision_keeps_the_front_end_in_float32(ravdess_dir: Path) -> None:
    """The CUDA path's half precision, run on the CPU: the shipped network in float16 with
    its log-mel front end in float32 scores quiet lines and digital silence as float32 does.
    A float16 front end (what the CUDA path did before) scored a calm clip at -40 dB as sad
    (0.73; float32: neutral 0.89) and silence as NaN: its log floor (1e-10) and the quiet bins
    underflow float16."""
    import copy

    import torch

    reference = load_torch_model(None, "cpu")
    half = TorchEmotionModel(copy.deepcopy(reference.net), reference.card, half=True)
    assert half.variant == "torch-fp16"
    assert half.net.backbone.frontend.dft.dtype == torch.float32
    assert half.net.backbone.encoder.conv1.weight.dtype == torch.float16
    clip = np.resize(actor_clips(ravdess_dir, "17", "angry", 1, intensity="02")[0], 48_000)
    x = np.stack([clip, 0.01 * clip, 0.001 * clip, np.zeros_like(clip)]).astype(np.float32)
    a, b = reference.run_windows(x), half.run_windows(x)
    assert np.isfinite(b).all() and np.abs(a - b).max() < 0.01
    with torch.inference_mode():  # the old way: the front end in float16 as well
        old = reference.net.backbone.frontend.half()(torch.from_numpy(x).half())
    assert not torch.isfinite(old[3]).all()


def test_compiled_network_scores_as_the_uncompiled_one(ravdess_dir: Path, monkeypatch) -> None:
    """torch.compile (on by default on CUDA) compiled once for every batch size, on the CPU
    here; and where compiling fails (no Triton, no compiler) the model runs uncompiled."""
    import copy

    import torch

    reference = load_torch_model(None, "cpu")
    assert not reference.compiled  # a CPU default
    clips = actor_clips(ravdess_dir, "18", "fearful", 3)
    x = np.stack([np.resize(c, 48_000) for c in clips]).astype(np.float32)
    expected = reference.run_windows(x)
    compiled = TorchEmotionModel(copy.deepcopy(reference.net), reference.card, compile=True,
                                 max_batch=4)
    assert compiled.buckets == [2, 4]  # a lone window rides in a batch of two
    compiled.warmup()
    assert compiled.compiled
    np.testing.assert_allclose(compiled.run_windows(x), expected, atol=1e-4)
    np.testing.assert_allclose(compiled.run_windows(x[:2]), expected[:2], atol=1e-4)

    def broken(net, **_):
        def run(*args):
            raise RuntimeError("Triton is not installed")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    fallback = TorchEmotionModel(copy.deepcopy(reference.net), reference.card, compile=True)
    fallback.warmup()
    assert not fallback.compiled and fallback.buckets[0] == 1
    np.testing.assert_allclose(fallback.run_windows(x), expected, atol=1e-5)


@pytest.mark.skipif(torch_available(cuda=True), reason="this host has a CUDA device")
def test_cuda_without_a_gpu_says_so(exported: Path) -> None:
    # What the CUDA image does when run without --gpus: a plain refusal, before any weights.
    with pytest.raises(RuntimeError, match="torch sees no CUDA device.*--gpus all"):
        load_torch_model(exported, "cuda")


def test_a_cpu_server_does_not_import_torch(tmp_path) -> None:
    """``--backend auto`` on a machine without an NVIDIA device stays on ONNX Runtime and
    never imports torch (it would cost a serving process ~170 MB)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from streamer.service import load_serving_model\n"
            "from streamer.settings import Settings\n"
            "m = load_serving_model(Settings())\n"
            "print(type(m).__name__, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        assert out.stdout.split() == ["EmotionModel", "False"]
