"""``callmon bench model``: milliseconds per 3 s window in ONNX Runtime on this CPU.

Every architecture is exported the same way from random weights (speed does not depend on
the weights): the Whisper tiny and base encoder models callmon ships, any Whisper encoder cut
to its lowest layers (``--backbones``), and a wav2vec2-base-shaped model (the reference
design's backbone). The shipped int8 file is timed too.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

WINDOW = 48_000


def save_random_wav2vec2(directory: Path, *, base: bool = True) -> Path:
    """Write a randomly initialised wav2vec2 (base-sized, or tiny for tests) that
    ``from_pretrained`` can load from ``directory``."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    if base:
        config = Wav2Vec2Config()  # 12 layers, 768 wide, 95 M parameters: wav2vec2-base
    else:
        config = Wav2Vec2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=(32, 32, 32, 32, 32, 32, 32), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        )
    Wav2Vec2Model(config).save_pretrained(directory)
    return directory


def time_session(path: Path, *, batch: int, threads: int, repeats: int) -> float:
    """Median milliseconds per window over ``repeats`` runs of a ``batch``-window input."""
    from models.ort import make_session

    session = make_session(path, device="cpu", threads=threads)
    rng = np.random.default_rng(0)
    x = (0.05 * rng.standard_normal((batch, WINDOW))).astype(np.float32)
    session.run(None, {"waveform": x})  # warm-up: allocations, kernel selection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {"waveform": x})
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / batch


def _export_variants(net, directory: Path) -> dict[str, Path]:
    from trainer.export import export_fp32, quantize_int8

    fp32 = export_fp32(net, directory / "fp32.onnx", window_samples=WINDOW)
    return {
        "fp32": fp32,
        "int8-ffn": quantize_int8(fp32, directory / "int8-ffn.onnx", scope="ffn"),
        "int8-linear": quantize_int8(fp32, directory / "int8-linear.onnx", scope="linear"),
    }


#: Whisper backbones ``callmon bench model`` times by default: the two shipped sizes and base
#: cut to its lowest 4 layers (tiny's depth at base's width).
BENCH_BACKBONES = ("whisper-tiny", "whisper-base", "whisper-base:4")


def _row_name(backbone: str) -> str:
    from models.backbones import split_layers

    base, layers = split_layers(backbone)
    return f"{base}-encoder" + (f" ({layers} layers)" if layers else "")


def run_model_bench(*, repeats: int = 10, include_wav2vec2: bool = True,
                    shipped: Path | None = None,
                    backbones: tuple[str, ...] = BENCH_BACKBONES) -> dict:
    """Every backbone in ``backbones`` (Whisper names, ``:N`` allowed; the first is the
    table's ×1 reference) exported fp32, int8 (FFN) and int8 (every linear layer), timed
    at 1 and 2 threads, batch 1 and 16; random weights, as speed does not depend on them."""
    import torch

    from models.backbones import Wav2Vec2Backbone, build_backbone, random_twin
    from models.network import EmotionNet

    torch.manual_seed(0)
    results: dict = {"window_s": WINDOW / 16_000, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        models = {_row_name(b): EmotionNet(build_backbone(random_twin(b)), num_classes=5)
                  for b in backbones}
        if include_wav2vec2:
            w2v_dir = save_random_wav2vec2(tmp_path / "w2v")
            models["wav2vec2-base"] = EmotionNet(Wav2Vec2Backbone(w2v_dir), num_classes=5)
        for i, (name, net) in enumerate(models.items()):
            out = tmp_path / f"m{i}"
            out.mkdir()
            files = _export_variants(net.eval(), out)
            params = sum(p.numel() for p in net.parameters())
            for variant, path in files.items():
                for threads in (1, 2):
                    for batch in (1, 16):
                        reps = max(2, repeats // (4 if batch == 16 else 1))
                        ms = time_session(path, batch=batch, threads=threads, repeats=reps)
                        results["rows"].append({"model": name, "params_m": round(params / 1e6, 1),
                                                "variant": variant, "threads": threads,
                                                "batch": batch, "ms_per_window": round(ms, 2)})
                        log.info("%s %s threads=%d batch=%d: %.2f ms/window", name, variant,
                                 threads, batch, ms)
    if shipped is not None:
        results["shipped_int8_ms_b1_t1"] = round(
            time_session(shipped, batch=1, threads=1, repeats=repeats), 2)
    return results


def format_table(results: dict) -> str:
    rows = results["rows"]
    reference = rows[0]["model"]
    whisper = {(r["variant"], r["threads"], r["batch"]): r["ms_per_window"]
               for r in rows if r["model"] == reference}
    lines = [f"| model | params (M) | variant | threads | batch | ms / 3 s window | × {reference} |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        base = whisper[(r["variant"], r["threads"], r["batch"])]
        lines.append(f"| {r['model']} | {r['params_m']} | {r['variant']} | {r['threads']} | "
                     f"{r['batch']} | {r['ms_per_window']:.2f} | {r['ms_per_window'] / base:.1f} |")
    if "shipped_int8_ms_b1_t1" in results:
        lines.append("")
        lines.append(f"Shipped int8 model, batch 1, 1 thread: "
                     f"{results['shipped_int8_ms_b1_t1']:.2f} ms per 3 s window")
    return "\n".join(lines)
