"""The shipped model, on audio from actors its card lists as held out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from models import EMOTIONS_5, load_model
from models.corpora import discover, load_audio
from trainer.evaluate import evaluate_items

ROOT = Path(__file__).resolve().parents[1]


def test_train_defaults_are_the_shipped_recipe(shipped_model) -> None:
    """``callmon train --fold F`` with no other flag trains what was shipped and
    cross-validated (the README's commands rely on it): every recipe field of the shipped
    card's config is the default. Run bookkeeping (folder, fold, threads, progress bar) and
    the fields a later release added (recorded as null) aside."""
    from dataclasses import asdict

    from trainer.config import TrainConfig

    recorded = shipped_model.card.training["config"]
    defaults = asdict(TrainConfig())
    bookkeeping = {"out", "fold", "threads", "progress"}
    differ = {k: (v, defaults.get(k)) for k, v in recorded.items()
              if k not in bookkeeping and v is not None and v != defaults.get(k)}
    assert differ == {}, f"shipped recipe vs TrainConfig defaults: {differ}"


def test_card_is_consistent(shipped_model) -> None:
    card = shipped_model.card
    assert card.labels == EMOTIONS_5
    assert card.sample_rate_hz == 16_000 and card.window_samples == 48_000
    assert shipped_model.variant == "int8"
    split = card.training["split"]
    # Held-out speakers (if any) were used neither for training nor for model selection.
    held = set(card.evaluation.get("held_out_speakers", []))
    assert not held & (set(split["train"]) | set(split["val"]))
    # Its figures come from cross-validation over speakers of both corpora, and its
    # temperature and alert rules were chosen on validation speakers.
    cv = card.training["cross_validation"]
    assert len(cv["folds"]) == 5 and set(cv["by_corpus"]) == {"emodb", "ravdess"}
    tested = [s for f in cv["folds"] for s in f["test_speakers"]]
    assert len(tested) == len(set(tested)) == 25
    assert 0.5 < card.temperature < 5 and card.alerts["frustration"]["on"] > 0
    assert card.evaluation["alerts_cross_validated"]["test"]["clean"]["calm_hours"] > 1
    for variant in ("int8", "fp16"):
        assert (ROOT / "models" / "weights" / card.files[variant]).is_file()
    size_mb = sum((ROOT / "models/weights" / f).stat().st_size for f in card.files.values()) / 2**20
    assert size_mb < 40  # int8 ONNX, float16 safetensors, and fp16 ONNX reading those weights
    assert card.external_data == {card.files["fp16"]: [card.files["torch-fp16"]]}
    # The human-readable card is the JSON card rendered: the two never disagree.
    from models.card_markdown import render

    assert (ROOT / "models/weights/MODEL_CARD.md").read_text() == render(card)


def test_exported_model_scores_speech(shipped_model, call_actors, ravdess_dir):
    """A check of the export (the speaker-independent estimate is the card's
    cross-validation): RAVDESS clips score far above chance, every class is heard."""
    items = [u for u in discover(ravdess_dir) if u.speaker in set(call_actors)]
    report = evaluate_items(shipped_model, items, shipped_model.labels, window_samples=48_000,
                            hop_samples=16_000)
    assert report["n"] == 44 * len(call_actors)
    assert report["uar"] > 0.6  # chance is 0.2
    assert min(report["per_class_recall"].values()) > 0.3
    held = shipped_model.card.evaluation.get("held_out")
    if held:  # a model with held-out actors: the card's figure is what evaluation gives
        assert abs(report["uar"] - held["uar"]) < 0.05


def test_fp16_variant_agrees_with_int8(shipped_model, call_actors, ravdess_dir) -> None:
    fp16 = load_model(variant="fp16")
    clips = sorted((ravdess_dir / f"Actor_{call_actors[0]}").glob("03-01-0[1-6]-*.flac"))[:12]
    x = np.stack([np.resize(load_audio(c), 48_000) for c in clips])
    a, b = shipped_model(x), fp16(x)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9
    assert np.abs(a - b).max() < 0.2


def test_whisper_base_ships_beside_tiny(shipped_model, call_actors, ravdess_dir) -> None:
    """The larger model, chosen with ``--model whisper-base``: its own cross-validation over
    the same test speakers, its own temperature and alert rules, int8 on every linear layer."""
    from models.card_markdown import render

    base = load_model("whisper-base", threads=2)
    card = base.card
    folder = ROOT / "models/weights/whisper-base"
    assert card.backbone == "whisper-base" and card.labels == EMOTIONS_5
    assert base.variant == "int8" and card.training["int8_scope"] == "linear"
    assert card.files == {"int8": "emotion-int8.onnx"}  # CPU only: see the card's limits
    folds = card.training["cross_validation"]["folds"]
    tiny_folds = shipped_model.card.training["cross_validation"]["folds"]
    assert [f["test_speakers"] for f in folds] == [f["test_speakers"] for f in tiny_folds]
    assert 0.5 < card.temperature < 5 and card.alerts["frustration"]["on"] > 0
    assert card.evaluation["alerts_cross_validated"]["test"]["clean"]["calm_hours"] > 1
    assert (folder / "MODEL_CARD.md").read_text() == render(card)
    items = [u for u in discover(ravdess_dir) if u.speaker in set(call_actors)]
    report = evaluate_items(base, items, base.labels, window_samples=48_000, hop_samples=16_000)
    assert report["uar"] > 0.6 and min(report["per_class_recall"].values()) > 0.3


def test_evaluate_command_writes_report(tmp_path: Path, call_actors, ravdess_dir) -> None:
    out = tmp_path / "report.json"
    actor = call_actors[0]
    proc = subprocess.run(
        [sys.executable, "-m", "callmon_cli", "evaluate", "--data", str(ravdess_dir),
         "--speakers", actor, "--telephone", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert set(report) >= {"n", "accuracy", "uar", "macro_f1", "per_class_recall", "labels",
                           "confusion"}
    assert report["n"] == 44 and report["speakers"] == [actor] and report["telephone"] is True
    assert report["skipped"] == {"disgust": 8, "surprised": 8}
    assert out.with_suffix(".md").read_text().startswith("# Evaluation (telephone channel)")
    # The shipped model trained on every speaker: the report says it measured fit.
    assert report["seen_speakers"] == [actor]
    assert "**Not speaker-independent:** 1 of 1 speakers" in proc.stdout
    assert out.with_suffix(".png").stat().st_size > 5_000
    assert "UAR" in proc.stdout
