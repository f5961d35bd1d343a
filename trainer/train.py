"""``train(cfg) -> metrics``: one speaker-independent training run; ``cross_validate``: all folds."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import time
import zipfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from models.backbones import SpecAugment, WhisperEncoderBackbone, build_backbone, random_twin
from models.card import recipe_differences
from models.corpora import (
    Utterance,
    corpus_of,
    discover_corpora,
    filter_labels,
    speaker_folds,
    speakers_of,
)
from models.network import EmotionNet
from trainer.config import TrainConfig
from trainer.evaluate import evaluate_items, torch_predict
from trainer.metrics import summarise_folds

log = logging.getLogger(__name__)


#: ``fold`` value that trains on every speaker: no validation, no test (the shipped model,
#: whose figures come from the cross-validation of the same recipe).
ALL_SPEAKERS = -1


def split_speakers(speakers: list[str], cfg: TrainConfig) -> dict[str, list[str]]:
    """Test speakers are fold ``cfg.fold``; validation speakers are the first
    ``cfg.val_speakers`` of each corpus in the next fold; the rest train. No speaker is in
    two sets."""
    if cfg.fold == ALL_SPEAKERS:
        return {"train": sorted(speakers), "val": [], "test": []}
    folds = speaker_folds(speakers, cfg.folds)  # TrainConfig has checked cfg.fold < cfg.folds
    test = folds[cfg.fold]
    nxt = folds[(cfg.fold + 1) % len(folds)]
    val = [s for corpus in sorted({corpus_of(s) for s in nxt})
           for s in [s for s in nxt if corpus_of(s) == corpus][: cfg.val_speakers]]
    train = [s for s in sorted(speakers) if s not in test and s not in val]
    return {"train": train, "val": val, "test": test}


def build_net(cfg: TrainConfig, *, pretrained: bool = True) -> EmotionNet:
    backbone = build_backbone(cfg.backbone if pretrained else random_twin(cfg.backbone))
    if cfg.freeze_layers >= 0:
        backbone.freeze(cfg.freeze_layers)
    if cfg.spec_augment:
        if not isinstance(backbone, WhisperEncoderBackbone):
            raise ValueError(f"--spec-augment masks log-mel features: {cfg.backbone} has none")
        backbone.spec_augment = SpecAugment()
    return EmotionNet(backbone, num_classes=len(cfg.label_names))


#: CPU flags of native bfloat16 arithmetic: x86 AVX512-BF16 or AMX, Arm's BF16. Without one,
#: PyTorch emulates bfloat16 and bf16-mixed trains several times slower than float32.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (``model name``; ``flags`` on x86,
    ``Features`` on Arm); empty where that file cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """This CPU's name (``model name``), else what :mod:`platform` knows of it."""
    import platform

    return cpu_info(cpuinfo).get("model name") or platform.processor() or platform.machine()


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU does bfloat16 arithmetic itself (its ``flags``/``Features`` in
    ``/proc/cpuinfo``); False where that file cannot be read."""
    fields = cpu_info(cpuinfo)
    flags = fields.get("flags", "").split() + fields.get("Features", "").split()
    return bool(set(flags) & BF16_CPU_FLAGS)


def auto_precision(accelerator: str = "auto") -> str:
    """``precision="auto"``: 16-mixed on CUDA; on a CPU, bf16-mixed where it has native
    bfloat16 and 32-true where it would be emulated."""
    if torch.cuda.is_available() and accelerator != "cpu":
        return "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def training_machine(accelerator: str = "auto") -> dict:
    """What a run trains on, for its metrics and card: the GPU's or the CPU's name, this
    machine's cores and the threads PyTorch uses."""
    cuda = torch.cuda.is_available() and accelerator != "cpu"
    return {"device": torch.cuda.get_device_name(0) if cuda else cpu_model(),
            "cuda": cuda, "cpu_cores": os.cpu_count(), "threads": torch.get_num_threads()}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning ``precision``; None where it trains in float32."""
    return {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)


def _precision(cfg: TrainConfig) -> str:
    return auto_precision(cfg.accelerator) if cfg.precision == "auto" else cfg.precision


def train(cfg: TrainConfig, *, items: list[Utterance] | None = None,
          audio_cache: dict[Path, np.ndarray] | None = None) -> dict:
    """Train on the training speakers of ``cfg.fold``, early-stop on the validation
    speakers, and evaluate the best checkpoint on the unseen test speakers.

    Returns:
        metrics with ``test`` (clean), ``test_telephone``, ``best_val_uar``, the speaker
        split, and the path of the saved checkpoint ``model.pt``.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from torch.utils.data import DataLoader

    from trainer.data import CropDataset, class_weights, decode_all
    from trainer.module import EmotionModule, EpochLog

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = cfg.label_names
    items = items if items is not None else discover_corpora(cfg.data)
    if cfg.limit_items:
        rng = np.random.default_rng(cfg.seed)
        items = [items[i] for i in sorted(rng.permutation(len(items))[: cfg.limit_items])]
    split = split_speakers(speakers_of(items), cfg)
    by_role = {
        role: [u for u in items if u.speaker in set(speakers)] for role, speakers in split.items()
    }
    cache = audio_cache if audio_cache is not None else {}

    def decoded(us: list[Utterance]) -> list[np.ndarray]:
        missing = [u for u in us if u.path not in cache]
        for u, a in zip(missing, decode_all(missing), strict=True):
            cache[u.path] = a
        return [cache[u.path] for u in us]

    train_kept, skipped = filter_labels(by_role["train"], labels)
    val_kept, _ = filter_labels(by_role["val"], labels)
    train_targets = [t for _, t in train_kept]
    log.info("fold %d: %d train, %d val utterances; skipped %s", cfg.fold, len(train_kept),
             len(val_kept), skipped)
    train_audio = decoded([u for u, _ in train_kept])
    soft, teacher = _teacher_targets(cfg, split, train_audio) if cfg.distill_from else (None, None)
    aug = {"p_telephone": cfg.p_telephone, "p_noise": cfg.p_noise}
    train_ds = CropDataset(train_audio, train_targets,
                           window_samples=cfg.window_samples, train=True, seed=cfg.seed,
                           augment_kwargs=aug,
                           speed_range=None if cfg.speed_min == cfg.speed_max == 1.0
                           else (cfg.speed_min, cfg.speed_max),
                           soft_targets=soft)
    val_ds = CropDataset(decoded([u for u, _ in val_kept]), [t for _, t in val_kept],
                         window_samples=cfg.window_samples, train=False)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                          generator=generator)
    val_dl = DataLoader(val_ds, batch_size=cfg.batch_size)

    net = build_net(cfg)
    module = EmotionModule(
        net, labels=labels, lr_head=cfg.lr_head, lr_backbone=cfg.lr_backbone,
        weight_decay=cfg.weight_decay, warmup_frac=cfg.warmup_frac,
        class_weights=class_weights(train_targets, len(labels)),
        label_smoothing=cfg.label_smoothing,
        distill_weight=cfg.distill_weight, distill_temperature=cfg.distill_temperature,
    )
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", mode="max",
                                 monitor="val_uar" if len(val_ds) else None,
                                 save_top_k=1, filename="best-{epoch:02d}-{val_uar:.3f}")
    epoch_log = EpochLog(f"fold {cfg.fold}" if cfg.fold >= 0 else "all speakers")
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=1,
        precision=_precision(cfg),  # type: ignore[arg-type]
        accumulate_grad_batches=cfg.accumulate,
        # Lightning logs every 50 steps; a fold has about 45 batches an epoch, so without
        # this the step-level training loss never reached the CSV log (and it warned so).
        log_every_n_steps=max(1, min(50, len(train_dl) // 2)),
        callbacks=[checkpoint, epoch_log] + ([EarlyStopping(monitor="val_uar", mode="max",
                                                       patience=cfg.patience)]
                                         if cfg.select == "best_val" else []),
        default_root_dir=str(out),
        logger=L.pytorch.loggers.CSVLogger(str(out), name="logs"),
        enable_progress_bar=cfg.progress,
        fast_dev_run=cfg.fast_dev_run,
        num_sanity_val_steps=0,
        deterministic=False,
    )
    started = time.perf_counter()
    trainer.fit(module, train_dl, val_dl if len(val_ds) else None)
    train_seconds = time.perf_counter() - started
    if cfg.select not in ("best_val", "last"):
        raise ValueError(f"select must be best_val or last, got {cfg.select!r}")
    if cfg.select == "best_val" and not len(val_ds):
        raise ValueError("select=best_val needs validation speakers; use select=last")
    if cfg.select == "best_val" and checkpoint.best_model_path and not cfg.fast_dev_run:
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"])
    best_val = (float(checkpoint.best_model_score)
                if checkpoint.best_model_score is not None else None)
    last_val = trainer.callback_metrics.get("val_uar")
    net = module.net.float().eval().cpu()
    predict = torch_predict(net)
    test_items = by_role["test"]
    test_audio = decoded(test_items)

    def evaluate(telephone: bool, corpus: str | None = None) -> dict:
        pairs = [(u, a) for u, a in zip(test_items, test_audio, strict=True)
                 if corpus is None or corpus_of(u.speaker) == corpus]
        return evaluate_items(predict, [u for u, _ in pairs], labels,
                              window_samples=cfg.window_samples, hop_samples=cfg.eval_hop_samples,
                              audio=[a for _, a in pairs], telephone=telephone)

    corpora = sorted({corpus_of(u.speaker) for u in test_items})

    metrics: dict = {
        "config": asdict(cfg),
        "split": split,
        "labels": list(labels),
        "train_utterances": len(train_kept),
        "skipped": skipped,
        "epochs_run": trainer.current_epoch,
        "train_seconds": round(train_seconds, 1),
        "precision": _precision(cfg),
        "machine": training_machine(cfg.accelerator),
        "best_val_uar": best_val,
        "last_val_uar": None if last_val is None else float(last_val),
        **({"teacher": teacher} if teacher is not None else {}),
        "selected_val_uar": best_val if cfg.select == "best_val" else (
            None if last_val is None else float(last_val)),
        "test": evaluate(telephone=False) if test_items else {},
        "test_telephone": evaluate(telephone=True) if test_items else {},
    }
    if len(corpora) > 1:
        metrics["test_by_corpus"] = {
            c: {"clean": evaluate(False, c), "telephone": evaluate(True, c)} for c in corpora}
    save_checkpoint(net, cfg, metrics, out / "model.pt")
    metrics["checkpoint"] = str(out / "model.pt")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _teacher_targets(cfg: TrainConfig, split: dict[str, list[str]],
                     clips: list[np.ndarray]) -> tuple[np.ndarray, dict]:
    """The teacher's soft targets for the training clips, after checking that it never
    trained on this run's validation or test speakers, and what the metrics record of it."""
    from trainer.distill import check_teacher_split, soft_targets, teacher_path

    path = teacher_path(cfg.distill_from, cfg.fold)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint {path} not found (--distill-from)")
    net, teacher_cfg, teacher_metrics = load_checkpoint(path)
    check_teacher_split(teacher_metrics["split"], split, teacher_data=teacher_cfg.data,
                        data=cfg.data, teacher_labels=teacher_cfg.label_names,
                        labels=cfg.label_names)
    started = time.perf_counter()
    targets = soft_targets(net, clips, temperature=cfg.distill_temperature,
                           window_samples=cfg.window_samples, hop_samples=cfg.eval_hop_samples)
    seconds = round(time.perf_counter() - started, 1)
    log.info("teacher %s (%s): soft targets for %d clips in %.0f s", path, teacher_cfg.backbone,
             len(clips), seconds)
    return targets, {"checkpoint": str(path), "backbone": teacher_cfg.backbone,
                     "seconds": seconds}


def save_checkpoint(net: EmotionNet, cfg: TrainConfig, metrics: dict, path: Path) -> None:
    """What ``callmon export`` needs: the recipe, the weights and the figures."""
    torch.save({"config": asdict(cfg), "state_dict": net.state_dict(), "metrics": metrics}, path)


def load_checkpoint(path: Path | str) -> tuple[EmotionNet, TrainConfig, dict]:
    """Rebuild the network of a ``model.pt`` (no pretrained weights are read).

    Raises:
        ValueError: no such file, or one that is not a checkpoint of ``callmon train``.
    """
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such checkpoint (callmon train writes RUN/model.pt)")
    not_ours = f"{path} is not a checkpoint written by callmon train"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise ValueError(f"{not_ours} (not a PyTorch checkpoint file)")
    try:
        # Tensors and plain data only: a checkpoint from elsewhere cannot run code on load.
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        raise ValueError(f"{not_ours}: it holds objects other than tensors and plain data"
                         f"{f' ({found.group(1)})' if found else ''}, which are not loaded as "
                         "loading them could run code") from None
    except Exception as exc:  # a zip or torch error: whatever the file is, not ours
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ValueError(f"{not_ours} ({type(exc).__name__}: {first})") from exc
    if not isinstance(blob, dict) or not {"config", "state_dict", "metrics"} <= blob.keys():
        raise ValueError(f"{not_ours} (it holds no config, state_dict and metrics)")
    cfg = TrainConfig(**blob["config"])
    net = build_net(cfg, pretrained=cfg.backbone.startswith("wav2vec2"))
    net.load_state_dict(blob["state_dict"])
    return net.eval(), cfg, blob["metrics"]


def cross_validate(cfg: TrainConfig) -> dict:
    """Train and test every fold; the summary gives mean ± std over folds."""
    items = discover_corpora(cfg.data)
    cache: dict[Path, np.ndarray] = {}
    per_fold = []
    for fold in range(cfg.folds):
        fold_cfg = replace(cfg, fold=fold, out=str(Path(cfg.out) / f"fold{fold}"))
        metrics = train(fold_cfg, items=items, audio_cache=cache)
        per_fold.append(metrics)
        log.info("fold %d test UAR %.3f (telephone %.3f)", fold, metrics["test"]["uar"],
                 metrics["test_telephone"]["uar"])
    summary = summarise_cv(cfg, per_fold)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "cv_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def summarise_cv(cfg: TrainConfig, per_fold: list[dict]) -> dict:
    """Mean ± std over folds of each fold's test figures, per corpus too when there are
    several (the folds' ``metrics.json``)."""
    summary = {
        "config": asdict(cfg),
        "folds": [
            {"fold": m["config"]["fold"], "test_speakers": m["split"]["test"],
             "val_speakers": m["split"]["val"],
             "epochs_run": m["epochs_run"], "train_seconds": m["train_seconds"],
             "selected_val_uar": m["selected_val_uar"],
             "clean": {k: m["test"][k] for k in ("n", "accuracy", "uar", "macro_f1",
                                                 "per_class_recall")},
             "telephone": {k: m["test_telephone"][k] for k in ("accuracy", "uar", "macro_f1")},
             **({"by_corpus": {c: {ch: {k: r[ch][k] for k in ("n", "accuracy", "uar")}
                                   for ch in ("clean", "telephone")}
                               for c, r in m["test_by_corpus"].items()}}
                if "test_by_corpus" in m else {})}
            for m in per_fold
        ],
        "validation_uar_mean": float(np.mean([m["selected_val_uar"] or 0.0 for m in per_fold])),
        "clean": summarise_folds([m["test"] for m in per_fold]),
        "telephone": summarise_folds([m["test_telephone"] for m in per_fold]),
    }
    corpora = sorted(set.intersection(*[set(m.get("test_by_corpus", {})) for m in per_fold]))
    if corpora:
        summary["by_corpus"] = {
            c: {ch: summarise_folds([m["test_by_corpus"][c][ch] for m in per_fold])
                for ch in ("clean", "telephone")}
            for c in corpora}
    return summary


def summarise_runs(fold_dirs: list[Path]) -> dict:
    """The cross-validation summary of folds trained one by one (``--fold k``)."""
    per_fold = []
    for d in fold_dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise ValueError(f"{d} has no metrics.json: not a finished callmon train run")
        per_fold.append(json.loads(path.read_text()))
    # One recipe, each fold once: a summary over mixed recipes or a fold counted twice
    # would be a figure of nothing in particular.
    # Fields a run predates are at their defaults, so an older fold compares in full.
    recipes = [{**asdict(TrainConfig()), **m["config"]} for m in per_fold]
    for d, recipe in zip(fold_dirs, recipes, strict=True):
        differ = recipe_differences(recipes[0], recipe)
        if differ:
            raise ValueError(f"{d} was trained with another recipe than {fold_dirs[0]} "
                             f"({', '.join(differ)} differ): summarise the folds of one recipe")
    folds = [m["config"]["fold"] for m in per_fold]
    if len(set(folds)) != len(folds) or -1 in folds:
        raise ValueError(f"the runs are folds {folds}: give each held-out fold once (a run "
                         "trained on every speaker, fold -1, has no test speakers)")
    per_fold.sort(key=lambda m: m["config"]["fold"])
    cfg = TrainConfig(**{**per_fold[0]["config"], "fold": 0, "out": str(Path(fold_dirs[0]).parent)})
    return summarise_cv(cfg, per_fold)
