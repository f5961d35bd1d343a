"""Clip-level evaluation shared by cross-validation (PyTorch) and ``callmon evaluate`` (ONNX)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.audio import telephone_channel
from models.corpora import Utterance, filter_labels, load_audio
from models.preprocessing import clip_windows
from trainer.metrics import classification_report

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]


def torch_predict(net, *, temperature: float = 1.0) -> PredictFn:
    """A PyTorch network (float32, eval mode) as a :data:`PredictFn`: the softmax of its
    logits divided by ``temperature``, computed in inference mode."""
    import torch

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(net(torch.from_numpy(batch)) / temperature, -1).numpy()

    return predict


def predict_clip_probs(
    predict: PredictFn,
    clips: Sequence[np.ndarray],
    *,
    window_samples: int,
    hop_samples: int,
    batch_size: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """Average the window probabilities of each clip, as the streamer sees a call.

    Args:
        predict: ``(batch, window_samples)`` float32 → ``(batch, classes)`` probabilities.
    """
    windows: list[np.ndarray] = []
    owner: list[int] = []
    for i, clip in enumerate(clips):
        w = clip_windows(clip, window_samples, hop_samples)
        windows.extend(w)
        owner.extend([i] * len(w))
    if not windows:
        raise ValueError("no clips to evaluate")
    all_windows = np.stack(windows)
    outs = []
    batches = range(0, len(all_windows), batch_size)
    for start in tqdm(batches, desc="windows", unit="batch", disable=not progress):
        outs.append(predict(all_windows[start : start + batch_size]))
    probs = np.concatenate(outs)
    owner_arr = np.asarray(owner)
    clip_probs = np.zeros((len(clips), probs.shape[1]), dtype=np.float64)
    np.add.at(clip_probs, owner_arr, probs)
    clip_probs /= np.bincount(owner_arr, minlength=len(clips))[:, None]
    return clip_probs


def evaluate_items(
    predict: PredictFn,
    items: Sequence[Utterance],
    labels: Sequence[str],
    *,
    window_samples: int,
    hop_samples: int,
    telephone: bool = False,
    audio: Sequence[np.ndarray] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> dict:
    """Score utterances with ``predict`` and return the classification report, with the
    utterances whose emotion the label set lacks counted under ``skipped``."""
    kept, skipped = filter_labels(items, labels)
    if not kept:
        raise ValueError(f"none of the {len(items)} utterances has a label in {list(labels)}")
    if audio is None:
        clips = [load_audio(u.path) for u, _ in tqdm(kept, desc="decode", disable=not progress)]
    else:
        lookup = {id(u): a for u, a in zip(items, audio, strict=True)}
        clips = [lookup[id(u)] for u, _ in kept]
    if telephone:
        clips = [telephone_channel(c) for c in clips]
    probs = predict_clip_probs(
        predict, clips, window_samples=window_samples, hop_samples=hop_samples,
        batch_size=batch_size, progress=progress,
    )
    report = classification_report([t for _, t in kept], probs.argmax(-1), labels)
    report["skipped"] = skipped
    report["speakers"] = sorted({u.speaker for u, _ in kept})
    report["telephone"] = telephone
    return report


def write_report(report: dict, out: Path) -> list[Path]:
    """Write ``out`` (JSON), a Markdown summary and a confusion-matrix PNG beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    md = out.with_suffix(".md")
    md.write_text(report_markdown(report))
    png = out.with_suffix(".png")
    plot_confusion(report, png)
    return [out, md, png]


def report_markdown(report: dict) -> str:
    labels = report["labels"]
    lines = [
        f"# Evaluation{' (telephone channel)' if report.get('telephone') else ''}",
        "",
        f"- utterances: {report['n']} from {len(report.get('speakers', []))} speakers",
        f"- accuracy: {report['accuracy']:.3f}",
        f"- unweighted average recall (UAR): {report['uar']:.3f}",
        f"- macro F1: {report['macro_f1']:.3f}",
    ]
    if report.get("skipped"):
        lines.append(f"- skipped (classes the model lacks): {report['skipped']}")
    seen = report.get("seen_speakers") or []
    if seen:
        lines[1:1] = ["", f"**Not speaker-independent:** {len(seen)} of "
                      f"{len(report.get('speakers', []))} speakers ({', '.join(seen)}) were in "
                      "the model's training or validation split, so these figures measure how "
                      "well it fits voices it learned, not unfamiliar ones. Evaluate on speakers "
                      "it never heard (`--speakers`; a fold model's card names its held-out "
                      "ones)."]
    lines += ["", "| class | recall |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in report["per_class_recall"].items()]
    lines += ["", "Confusion (rows true, columns predicted):", "",
              "| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for label, row in zip(labels, report["confusion"], strict=True):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def plot_confusion(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(report["confusion"], dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    labels = report["labels"]
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2, 1.0 * len(labels) + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    ax.set_title(f"UAR {report['uar']:.3f} · accuracy {report['accuracy']:.3f} · n={report['n']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
