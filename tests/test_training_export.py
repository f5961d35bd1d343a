"""The Lightning module, checkpoint, export and loading path on tiny models, on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models import ModelCardError, load_model
from models.card import ModelCard
from trainer.bench import save_random_wav2vec2
from trainer.config import TrainConfig
from trainer.export import export_checkpoint
from trainer.module import warmup_cosine
from trainer.train import (
    _precision,
    autocast_dtype,
    cpu_has_native_bf16,
    cpu_model,
    load_checkpoint,
    train,
)


def test_warmup_then_cosine() -> None:
    lrs = [warmup_cosine(s, warmup_steps=10, total_steps=100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # decays
    assert lrs[-1] == pytest.approx(0.02, abs=0.01)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, ravdess_dir: Path) -> dict:
    """A fast_dev_run of the real training function on a tiny wav2vec2 loaded through
    ``from_pretrained`` from a local directory, on real RAVDESS clips."""
    tmp = tmp_path_factory.mktemp("tiny")
    w2v = save_random_wav2vec2(tmp / "w2v", base=False)
    cfg = TrainConfig(data=str(ravdess_dir), out=str(tmp / "run"), backbone=f"wav2vec2:{w2v}",
                      fast_dev_run=True, limit_items=120, batch_size=4, progress=False,
                      precision="32")
    return train(cfg)


def test_fast_dev_run_trains_and_reports(tiny_run: dict) -> None:
    report = tiny_run["test"]
    assert report["n"] > 0 and 0.0 <= report["uar"] <= 1.0
    assert set(report["labels"]) == {"neutral", "happy", "sad", "angry", "fearful"}
    assert sum(map(sum, report["confusion"])) == report["n"]
    assert not set(tiny_run["split"]["test"]) & set(tiny_run["split"]["train"])
    assert Path(tiny_run["checkpoint"]).is_file()


def test_auto_precision_uses_bf16_only_where_the_cpu_has_it(tmp_path: Path, monkeypatch) -> None:
    """Emulated bfloat16 trains several times slower than float32 (Xeon without AVX512-BF16:
    a Whisper tiny forward pass 3.5 times slower), so ``auto`` takes bf16-mixed only on a CPU
    that does bfloat16 itself."""
    import torch

    x86 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
    for name, text, native in (("cascade", x86, False),
                               ("sapphire", x86.replace("vnni", "vnni avx512_bf16 amx_bf16"), True),
                               ("arm", "Features\t: fp asimd sve bf16 i8mm\n", True),
                               ("arm-old", "Features\t: fp asimd\n", False)):
        (tmp_path / name).write_text(text)
        assert cpu_has_native_bf16(tmp_path / name) is native, name
    assert cpu_has_native_bf16(tmp_path / "missing") is False
    (tmp_path / "named").write_text("processor\t: 0\nmodel name\t: Xeon Gold 6438Y\nflags\t: fpu\n"
                                     "processor\t: 1\nmodel name\t: Xeon Gold 6438Y\nflags\t: fpu\n")
    assert cpu_model(tmp_path / "named") == "Xeon Gold 6438Y"
    assert cpu_model(tmp_path / "missing")  # platform's name: never empty
    assert autocast_dtype("16-mixed") is torch.float16
    assert autocast_dtype("bf16-mixed") is torch.bfloat16
    assert autocast_dtype("32-true") is None

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native, expected in ((False, "32-true"), (True, "bf16-mixed")):
        monkeypatch.setattr("trainer.train.cpu_has_native_bf16", lambda native=native: native)
        assert _precision(TrainConfig(precision="auto")) == expected
    assert _precision(TrainConfig(precision="bf16-mixed")) == "bf16-mixed"  # asked for: kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _precision(TrainConfig(precision="auto")) == "16-mixed"
    assert _precision(TrainConfig(precision="auto", accelerator="cpu")) == "bf16-mixed"


def test_whisper_fast_dev_run_in_bf16(tmp_path: Path, ravdess_dir: Path, caplog) -> None:
    cfg = TrainConfig(data=str(ravdess_dir), out=str(tmp_path), backbone="whisper-tiny",
                      fast_dev_run=True, limit_items=60, batch_size=2, progress=False,
                      precision="bf16-mixed", freeze_layers=2)
    with caplog.at_level("INFO", logger="trainer.train"):
        metrics = train(cfg)
    assert metrics["test"]["n"] > 0
    # Without a progress bar, each epoch still says how it went and how long it took.
    epochs = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert len(epochs) == 1 and epochs[0].startswith(f"fold {cfg.fold} epoch 1/1: train_loss ")
    assert "val_uar " in epochs[0] and epochs[0].endswith(" s")
    net, loaded_cfg, _ = load_checkpoint(metrics["checkpoint"])
    assert loaded_cfg.freeze_layers == 2 and net.head.layer_logits.shape == (5,)


def test_the_epoch_line_gives_the_mean_training_loss_of_the_epoch(caplog) -> None:
    """The epoch line's train_loss is the mean over the epoch's batches, not the last batch's
    (which is one batch of 16 crops: noise)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from models.backbones import build_backbone
    from models.network import EmotionNet
    from trainer.module import EmotionModule, EpochLog

    torch.manual_seed(0)
    net = EmotionNet(build_backbone("whisper-random:1"), num_classes=5)
    x, y = 0.1 * torch.randn(12, 16_000), torch.arange(12) % 5
    losses: list[float] = []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[EpochLog("t"), Losses()])
    module = EmotionModule(net, labels=["neutral", "happy", "sad", "angry", "fearful"])
    with caplog.at_level("INFO", logger="trainer.train"):
        trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=3))
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("t epoch 1/1")]
    mean = sum(losses) / len(losses)
    assert len(losses) == 4 and abs(mean - losses[-1]) > 0.002  # the two can be told apart
    assert f"train_loss {mean:.3f};" in line, (losses, line)


def test_a_cut_whisper_trains_exports_and_serves(tmp_path: Path, ravdess_dir: Path) -> None:
    """``whisper-tiny:2`` (the lowest 2 layers) through training, checkpoint, ONNX export and
    both serving backends: its card names the cut, and nothing rebuilds the full depth."""
    from models.torch_backend import load_torch_model

    cfg = TrainConfig(data=str(ravdess_dir), out=str(tmp_path / "run"), backbone="whisper-tiny:2",
                      fast_dev_run=True, limit_items=40, batch_size=2, progress=False,
                      precision="32")
    metrics = train(cfg)
    net, loaded_cfg, _ = load_checkpoint(metrics["checkpoint"])
    assert loaded_cfg.backbone == "whisper-tiny:2" and len(net.backbone.encoder.layers) == 2
    windows = (0.05 * np.random.default_rng(1).standard_normal((4, 48_000))).astype(np.float32)
    card = export_checkpoint(metrics["checkpoint"], tmp_path / "model", variants=("fp32", "torch-fp16"),
                             parity_windows=windows)
    assert card.backbone == "whisper-tiny:2"
    assert card.evaluation["onnx_parity"]["fp32"]["max_abs_prob_diff"] < 1e-3
    onnx_probs = load_model(tmp_path / "model", variant="fp32")(windows)
    torch_probs = load_torch_model(tmp_path / "model", device="cpu")(windows)
    assert np.abs(onnx_probs - torch_probs).max() < 1e-2


def test_export_parity_and_loading(tiny_run: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    windows = (0.05 * rng.standard_normal((12, 48_000))).astype(np.float32)
    card = export_checkpoint(tiny_run["checkpoint"], tmp_path, parity_windows=windows)
    fp32 = card.evaluation["onnx_parity"]["fp32"]
    assert fp32["windows"] == 12
    assert fp32["argmax_agreement"] == 1.0 and fp32["max_abs_prob_diff"] < 1e-3
    assert card.evaluation["onnx_parity"]["int8"]["argmax_agreement"] >= 0.9
    assert sorted(card.files) == ["fp16", "fp32", "int8"]
    # The precision it trained in, as resolved, reaches the card's recipe.
    assert tiny_run["precision"] == card.training["precision"] == "32"
    assert "float32, random 3 s crops" in (tmp_path / "MODEL_CARD.md").read_text()
    # So does the machine it trained on, named, with the threads it used.
    machine = card.training["machine"]
    assert machine == tiny_run["machine"] and machine["device"] == cpu_model()
    assert machine["threads"] >= 1 and machine["cpu_cores"] >= machine["threads"]
    assert (f"s on {cpu_model()} ({machine['threads']} thread"
            in (tmp_path / "MODEL_CARD.md").read_text())
    for variant in ("fp32", "int8", "fp16"):
        model = load_model(tmp_path, variant=variant)
        probs = model(windows[:3])
        assert probs.shape == (3, 5)
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    one = load_model(tmp_path / "emotion-fp32.onnx")
    assert one.variant == "fp32" and one(windows[0]).shape == (5,)
    # Longer than a window: the mean over 1 s-hop windows.
    long = np.concatenate([windows[0], windows[1][:20_000]])
    starts, per_window = one.predict_windows(long)
    assert starts.tolist() == [0.0, 1.0, 1.25]
    assert np.allclose(one(long), per_window.mean(axis=0), atol=1e-6)


def test_float16_weights_are_shipped_once(tiny_run: dict, tmp_path: Path) -> None:
    """With both float16 variants, the fp16 ONNX file reads its weights from the PyTorch
    backend's safetensors file instead of holding a second copy, and scores the same."""
    from models.torch_backend import TORCH_VARIANT

    windows = (0.05 * np.random.default_rng(1).standard_normal((4, 48_000))).astype(np.float32)
    alone, shared = tmp_path / "alone", tmp_path / "shared"
    export_checkpoint(tiny_run["checkpoint"], alone, variants=("fp16",))
    card = export_checkpoint(tiny_run["checkpoint"], shared, variants=("fp16", TORCH_VARIANT))
    weights = card.files[TORCH_VARIANT]
    assert card.external_data == {"emotion-fp16.onnx": [weights]}
    assert ModelCard.load(shared).external_data == card.external_data
    size = {d: (d / "emotion-fp16.onnx").stat().st_size for d in (alone, shared)}
    assert size[shared] < size[alone] / 2
    a = load_model(alone, variant="fp16")(windows)
    b = load_model(shared, variant="fp16")(windows)
    assert (a.argmax(1) == b.argmax(1)).all() and np.abs(a - b).max() < 2e-3

    # The weights it reads are checked like the file itself.
    data = bytearray((shared / weights).read_bytes())
    data[-1] ^= 1
    (shared / weights).write_bytes(bytes(data))
    with pytest.raises(ModelCardError, match="safetensors does not match the SHA-256"):
        load_model(shared, variant="fp16")
    (shared / weights).unlink()
    with pytest.raises(ModelCardError, match="emotion-fp16.onnx reads its weights from it"):
        load_model(shared, variant="fp16")


def test_load_model_rejects_mismatches(tiny_run: dict, tmp_path: Path) -> None:
    export_checkpoint(tiny_run["checkpoint"], tmp_path, variants=("fp32",))
    card_path = tmp_path / "model_card.json"
    good = json.loads(card_path.read_text())

    bad = dict(good, labels=["a", "b", "c"])
    card_path.write_text(json.dumps(bad))
    with pytest.raises(ModelCardError, match="outputs 5 classes but the card lists 3"):
        load_model(tmp_path)

    card_path.write_text(json.dumps(dict(good, sha256={"emotion-fp32.onnx": "0" * 64})))
    with pytest.raises(ModelCardError, match="does not match the SHA-256"):
        load_model(tmp_path)

    card_path.write_text(json.dumps(good))
    with pytest.raises(ModelCardError, match="variant 'int8' not in the card"):
        load_model(tmp_path, variant="int8")
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_model(tmp_path)(np.full(48_000, np.nan, dtype=np.float32))

    card_path.write_text("{not json")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        ModelCard.load(tmp_path)


def test_calibration_temperature_from_the_card(tiny_run: dict, tmp_path: Path) -> None:
    """Serving divides the logits by the card's temperature; alerts come from its card."""
    export_checkpoint(tiny_run["checkpoint"], tmp_path, variants=("fp32",))
    card_path = tmp_path / "model_card.json"
    good = json.loads(card_path.read_text())
    x = (0.05 * np.random.default_rng(1).standard_normal((4, 48_000))).astype(np.float32)
    plain = load_model(tmp_path).run_windows(x)
    card_path.write_text(json.dumps(dict(good, calibration={"temperature": 2.0},
                                         alerts={"smoothing": 0.4})))
    model = load_model(tmp_path)
    hot = model.run_windows(x)
    assert model.card.temperature == 2.0 and model.card.alerts == {"smoothing": 0.4}
    expected = np.sqrt(plain) / np.sqrt(plain).sum(axis=1, keepdims=True)
    assert np.allclose(hot, expected, atol=1e-5)
    assert (hot.argmax(1) == plain.argmax(1)).all() and hot.max() <= plain.max() + 1e-6
    for bad in (0.0, -1, "warm", 100):
        card_path.write_text(json.dumps(dict(good, calibration={"temperature": bad})))
        with pytest.raises(ModelCardError, match="calibration temperature"):
            load_model(tmp_path)


def _fold_run(root: Path, name: str, *, fold: int, uar: float, **config) -> Path:
    """A finished fold's metrics.json (what callmon train writes), figures made up."""
    from dataclasses import asdict

    figures = {"n": 10, "accuracy": uar, "uar": uar, "macro_f1": uar,
               "per_class_recall": {"neutral": uar}}
    metrics = {"config": {**asdict(TrainConfig()), "fold": fold, "out": name, **config},
               "split": {"test": [f"s{fold}"], "val": ["v"]}, "epochs_run": 1,
               "train_seconds": 1.0, "selected_val_uar": uar, "test": figures,
               "test_telephone": figures}
    (root / name).mkdir()
    (root / name / "metrics.json").write_text(json.dumps(metrics))
    return root / name


def test_summarise_takes_the_folds_of_one_recipe_each_once(tmp_path) -> None:
    """``train --summarise`` averaged whatever it was given: a fold listed twice, or folds
    of another backbone or seed, went silently into one "cross-validation" figure."""
    from trainer.train import summarise_runs

    a = _fold_run(tmp_path, "a", fold=0, uar=0.6, threads=1)
    b = _fold_run(tmp_path, "b", fold=1, uar=0.8, threads=2,  # how it ran does not matter
                  data="/elsewhere/ravdess,/elsewhere/emodb")
    summary = summarise_runs([b, a])
    assert [f["fold"] for f in summary["folds"]] == [0, 1]
    assert summary["clean"]["uar"]["mean"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match=r"folds \[0, 0\]: give each held-out fold once"):
        summarise_runs([a, a])
    other = _fold_run(tmp_path, "c", fold=1, uar=0.8, backbone="whisper-base", seed=7)
    with pytest.raises(ValueError, match=r"another recipe than .*a \(backbone, seed differ\)"):
        summarise_runs([a, other])
    with pytest.raises(ValueError, match="has no metrics.json: not a finished callmon train"):
        summarise_runs([a, tmp_path / "missing"])


def test_export_quotes_only_reports_of_the_checkpoints_recipe(tmp_path) -> None:
    """export --cv-summary/--calibration put any JSON into the card as this model's
    estimates: base's cross-validation into tiny's card, say. A report that records another
    recipe (seed aside) is refused, and an unreadable one is named."""
    from dataclasses import asdict

    from trainer.cli import _report

    cfg = TrainConfig()
    same = tmp_path / "cv.json"
    same.write_text(json.dumps({"config": {**asdict(cfg), "seed": 99, "fold": 3}}))
    assert _report(str(same), "--cv-summary", "config", cfg)["config"]["seed"] == 99
    other = tmp_path / "cv_base.json"
    other.write_text(json.dumps({"config": {**asdict(cfg), "backbone": "whisper-base"}}))
    with pytest.raises(ValueError, match=r"--cv-summary .*cv_base.json measured another recipe "
                                         r"than the checkpoint's \(backbone differ\)"):
        _report(str(other), "--cv-summary", "config", cfg)
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps({"recipe": {"lr_head": 1.0}, "temperature": 1.2}))
    with pytest.raises(ValueError, match=r"--calibration .* \(lr_head differ\)"):
        _report(str(calibration), "--calibration", "recipe", cfg)
    old = tmp_path / "old_calibration.json"  # written before reports recorded a recipe
    old.write_text(json.dumps({"temperature": 1.2}))
    assert _report(str(old), "--calibration", "recipe", cfg) == {"temperature": 1.2}
    with pytest.raises(ValueError, match="--calibration nope.json: not a readable JSON report"):
        _report("nope.json", "--calibration", "recipe", cfg)


class _Payload:
    """Unpickling this runs code: what a hostile "checkpoint" would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_checkpoint_cannot_run_code_when_it_is_loaded(tmp_path) -> None:
    """load_checkpoint unpickled with weights_only=False: a model.pt from elsewhere could run
    anything on `callmon export`. Only tensors and plain data are read now."""
    import torch

    from trainer.train import load_checkpoint

    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    torch.save({"config": {}, "state_dict": {}, "metrics": {"x": _Payload(str(marker))}}, path)
    with pytest.raises(ValueError, match=r"is not a checkpoint written by callmon train: it "
                                         r"holds objects other than tensors and plain data "
                                         r"\(\S+\), which are not loaded"):
        load_checkpoint(path)
    assert not marker.exists()


def test_int8_scope_defaults_to_how_the_shipped_model_of_the_backbone_was_exported() -> None:
    """export's int8 default was ffn for every backbone while the shipped base, and its
    cross-validation folds, were exported with linear: a fold exported with the defaults
    was not the model the card's figures describe."""
    from trainer.export import resolve_int8_scope

    assert resolve_int8_scope("auto", "whisper-base") == "linear"
    assert resolve_int8_scope("auto", "whisper-tiny") == "ffn"
    assert resolve_int8_scope("auto", "whisper-base:4") == "ffn"
    assert resolve_int8_scope("ffn", "whisper-base") == "ffn"  # an explicit scope stands
    with pytest.raises(ValueError, match="int8 scope must be auto or one of"):
        resolve_int8_scope("all", "whisper-base")
    weights = Path(__file__).parents[1] / "models" / "weights"
    for folder in (weights, weights / "whisper-base"):
        card = json.loads((folder / "model_card.json").read_text())
        backbone = card["training"]["config"]["backbone"]
        assert card["training"]["int8_scope"] == resolve_int8_scope("auto", backbone)
