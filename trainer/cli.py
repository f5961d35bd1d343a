"""``callmon train``, ``evaluate``, ``export`` and ``baseline``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from models.outputs import output_folder, report_file
from trainer.bench import BENCH_BACKBONES

DEFAULT_DATA = "../shared/data/ravdess"


def add_commands(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    from trainer.config import TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name != "extra"}
    p = sub.add_parser(
        "train",
        help="fine-tune the emotion model (one fold, or every fold with --cv)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default=defaults["data"],
                   help="comma-separated corpus folders (any supported layout)")
    p.add_argument("--out", default=defaults["out"],
                   help="run folder (with --summarise: the summary's JSON file)")
    p.add_argument("--labels", choices=["5", "8"], default=defaults["labels"])
    p.add_argument(
        "--backbone",
        default=defaults["backbone"],
        help="whisper-tiny, whisper-base (either as NAME:N keeps its lowest N layers), "
             "whisper-random, or wav2vec2:<local dir or hub id>",
    )
    p.add_argument("--freeze-layers", type=int, default=defaults["freeze_layers"])
    p.add_argument("--epochs", type=int, default=defaults["epochs"])
    p.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    p.add_argument(
        "--accumulate", type=int, default=defaults["accumulate"], help="gradient accumulation steps"
    )
    p.add_argument("--lr-head", type=float, default=defaults["lr_head"])
    p.add_argument("--lr-backbone", type=float, default=defaults["lr_backbone"])
    p.add_argument("--patience", type=int, default=defaults["patience"])
    p.add_argument("--select", choices=["best_val", "last"], default=defaults["select"],
                   help="keep the best-validation checkpoint (early stopping) or the last one")
    p.add_argument(
        "--speed-min",
        type=float,
        default=defaults["speed_min"],
        help="speed perturbation: lowest factor (1 = off)",
    )
    p.add_argument("--speed-max", type=float, default=defaults["speed_max"])
    p.add_argument("--spec-augment", action="store_true",
                   help="mask log-mel bands and time stretches while training (SpecAugment)")
    p.add_argument("--distill-from", default=defaults["distill_from"], metavar="MODEL_PT",
                   help="teacher checkpoint (model.pt of a run; {fold} becomes the run's fold, "
                        "'all' for --fold -1) whose soft targets join the loss; it must not "
                        "have trained on this run's validation or test speakers")
    p.add_argument("--distill-weight", type=float, default=defaults["distill_weight"],
                   help="share of the loss given to the teacher's soft targets")
    p.add_argument("--distill-temperature", type=float, default=defaults["distill_temperature"])
    p.add_argument("--folds", type=int, default=defaults["folds"])
    p.add_argument("--fold", type=int, default=defaults["fold"],
                   help="test fold (0-based); -1 trains on every speaker (no validation, no test)")
    p.add_argument("--cv", action="store_true", help="train and test every fold")
    p.add_argument("--summarise", default=None, metavar="DIRS",
                   help="only write the cross-validation summary of folds already trained "
                        "one by one (comma-separated run folders) to --out")
    p.add_argument("--seed", type=int, default=defaults["seed"])
    p.add_argument(
        "--precision",
        default=defaults["precision"],
        help="auto (16-mixed on CUDA; on a CPU bf16-mixed where it has native bfloat16, "
             "else 32-true), 32, bf16-mixed, 16-mixed",
    )
    p.add_argument("--accelerator", default=defaults["accelerator"], help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=defaults["threads"])
    p.add_argument("--fast-dev-run", action="store_true")
    p.add_argument("--limit-items", type=int, default=0, help="subsample utterances (smoke runs)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_train)

    p = sub.add_parser("evaluate", help="score a model on a labelled corpus folder")
    p.add_argument(
        "--data",
        required=True,
        help="folder with manifest.csv (path,speaker,emotion) or a RAVDESS/CREMA-D tree",
    )
    p.add_argument("--model", default=None, help="model directory or .onnx (default: shipped)")
    p.add_argument("--variant", default=None, choices=["fp32", "int8", "fp16"])
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--telephone",
        action="store_true",
        help="pass every clip through a simulated 8 kHz μ-law telephone line first",
    )
    p.add_argument(
        "--speakers",
        default=None,
        help="comma-separated speakers to keep (e.g. the card's held-out ones)",
    )
    p.add_argument("--out", type=report_file, default=None,
                   help="report.json (a .md and a .png are written beside)")
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser("export", help="checkpoint → ONNX fp32/int8/fp16 + model card")
    p.add_argument("--checkpoint", required=True, help="model.pt written by callmon train")
    p.add_argument("--out", type=output_folder, required=True, help="output folder")
    p.add_argument("--variants", default="fp32,int8,fp16",
                   help="comma-separated: fp32, int8, fp16 (ONNX) and torch-fp16 (the PyTorch "
                        "backend's safetensors)")
    p.add_argument("--int8-scope", choices=["auto", "ffn", "linear"], default="auto",
                   help="int8: feed-forward layers only, or every linear layer of the encoder; "
                        "auto: as the shipped model of the backbone (linear for whisper-base, "
                        "ffn otherwise)")
    p.add_argument(
        "--parity-data",
        default=None,
        help="corpora whose windows measure ONNX↔PyTorch parity (default: the checkpoint's "
             "training data; its held-out speakers, if any)",
    )
    p.add_argument("--cv-summary", default=None, help="cv_summary.json to quote in the card")
    p.add_argument("--calibration", default=None,
                   help="calibration.json from callmon calibrate: its temperature and alert "
                        "thresholds go into the card")
    p.add_argument(
        "--extra-card",
        default=None,
        help="JSON file of further training facts for the card (8-class, baseline)",
    )
    p.set_defaults(handler=_export)

    p = sub.add_parser(
        "baseline", help="hand-crafted baseline (log-mel/MFCC statistics + logistic regression)"
    )
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--labels", choices=["5", "8"], default="5")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--out", type=report_file, default=None, help="write the summary JSON here")
    p.set_defaults(handler=_baseline)
    add_bench_commands(bench)


def _train(args: argparse.Namespace) -> int:
    from trainer.config import TrainConfig
    from trainer.train import cross_validate, summarise_runs, train

    try:  # a folder to train into, or the summary's file: checked before hours of training
        (report_file if args.summarise else output_folder)(args.out)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"--out: {exc}") from None
    if args.summarise:
        summary = summarise_runs([Path(d) for d in args.summarise.split(",") if d.strip()])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({k: summary[k] for k in ("clean", "telephone", "by_corpus")
                          if k in summary}, indent=2))
        return 0

    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        labels=args.labels,
        backbone=args.backbone,
        freeze_layers=args.freeze_layers,
        epochs=args.epochs,
        batch_size=args.batch_size,
        accumulate=args.accumulate,
        lr_head=args.lr_head,
        lr_backbone=args.lr_backbone,
        patience=args.patience,
        select=args.select, speed_min=args.speed_min,
        speed_max=args.speed_max,
        spec_augment=args.spec_augment,
        distill_from=args.distill_from, distill_weight=args.distill_weight,
        distill_temperature=args.distill_temperature,
        folds=args.folds,
        fold=args.fold,
        seed=args.seed,
        precision=args.precision,
        accelerator=args.accelerator,
        threads=args.threads,
        fast_dev_run=args.fast_dev_run,
        limit_items=args.limit_items,
        progress=not args.no_progress,
    )
    if args.cv:
        summary = cross_validate(cfg)
        print(json.dumps({k: summary[k] for k in ("clean", "telephone")}, indent=2))
    else:
        metrics = train(cfg)
        print(
            json.dumps(
                {
                    "test_speakers": metrics["split"]["test"],
                    "test": {k: metrics["test"].get(k) for k in ("n", "accuracy", "uar")},
                    "telephone": {k: metrics["test_telephone"].get(k)
                                  for k in ("accuracy", "uar")},
                    "checkpoint": metrics["checkpoint"],
                },
                indent=2,
            )
        )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from models import load_model
    from models.corpora import corpus_name, discover, seen_speakers, speaker_id
    from trainer.evaluate import evaluate_items, report_markdown, write_report

    items = discover(args.data)  # the data's errors before the model is loaded
    if args.speakers:
        keep = {s.strip() for s in args.speakers.split(",")}
        items = [u for u in items if u.speaker in keep]
        if not items:
            raise ValueError(f"no utterances from speakers {sorted(keep)} in {args.data}")
    model = load_model(args.model, device=args.device, variant=args.variant, threads=2)
    report = evaluate_items(
        model,
        items,
        model.labels,
        window_samples=model.window_samples,
        hop_samples=model.sample_rate_hz,
        telephone=args.telephone,
        progress=True,
    )
    report["model"] = {"name": model.card.name, "variant": model.variant}
    # Speakers the model trained or validated on make a figure of fit, not of unfamiliar
    # voices: the report names them (the shipped model scored 100 % on its own speakers).
    corpus = corpus_name(args.data)
    seen = seen_speakers(model.card.training)
    report["seen_speakers"] = sorted(s for s in report.get("speakers", [])
                                     if speaker_id(corpus, s) in seen)
    if args.out:
        for path in write_report(report, Path(args.out)):
            print(f"wrote {path}")
    print(report_markdown(report))
    return 0


def _report(path: str | None, flag: str, recipe_key: str, cfg) -> dict | None:
    """A JSON report for the card (``None`` without ``path``), refused when the recipe it
    records (``recipe_key``) is not the checkpoint's, seed aside."""
    from dataclasses import asdict

    from models.card import recipe_differences

    if not path:
        return None
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{flag} {path}: not a readable JSON report ({exc})") from None
    recipe = report.get(recipe_key) if isinstance(report, dict) else None
    if isinstance(recipe, dict):
        differ = recipe_differences(recipe, asdict(cfg), also_ignore=frozenset({"seed"}))
        if differ:
            raise ValueError(f"{flag} {path} measured another recipe than the checkpoint's "
                             f"({', '.join(differ)} differ): the card would quote another "
                             "model's figures")
    return report


def _export(args: argparse.Namespace) -> int:
    import numpy as np

    from models.corpora import discover_corpora
    from trainer.export import check_variants, export_checkpoint
    from trainer.train import load_checkpoint

    variants = tuple(args.variants.split(","))
    check_variants(variants)
    _, cfg, metrics = load_checkpoint(args.checkpoint)
    # The card quotes these as this model's estimates: they must be of its recipe, and are
    # read before the parity audio is decoded.
    cv_summary = _report(args.cv_summary, "--cv-summary", "config", cfg)
    calibration = _report(args.calibration, "--calibration", "recipe", cfg)
    held_out = set(metrics.get("split", {}).get("test", []))
    windows = None
    data = args.parity_data or cfg.data
    if data and all(Path(d).is_dir() for d in str(data).split(",")):
        from models.corpora import load_audio
        from models.preprocessing import clip_windows

        items = discover_corpora(data)
        # Held-out speakers' clips; for a model trained on every speaker, every 8th clip
        # (agreement between runtimes needs no unseen speakers).
        items = [u for u in items if u.speaker in held_out] if held_out else items[::8]
        windows = np.concatenate(
            [clip_windows(load_audio(u.path), cfg.window_samples, 16_000) for u in items]
        )
    extra: dict = {"export": {"checkpoint": args.checkpoint, "out": args.out,
                              "variants": args.variants, "cv_summary": args.cv_summary,
                              "calibration": args.calibration, "extra_card": args.extra_card}}
    if cv_summary:
        extra["cross_validation"] = cv_summary
    if args.extra_card:
        extra.update(json.loads(Path(args.extra_card).read_text()))
    card = export_checkpoint(
        args.checkpoint,
        args.out,
        variants=variants,
        parity_windows=windows,
        extra_card=extra,
        int8_scope=args.int8_scope,
        calibration=calibration,
    )
    print(json.dumps({"files": card.files, "onnx_parity": card.evaluation["onnx_parity"]}, indent=2))
    return 0


def _baseline(args: argparse.Namespace) -> int:
    from trainer.baseline import cross_validate_baseline

    summary = cross_validate_baseline(args.data, labels=args.labels, folds=args.folds)
    text = json.dumps(summary, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def add_bench_commands(bench: argparse._SubParsersAction) -> None:
    from trainer.config import TrainConfig

    p = bench.add_parser(
        "model", help="ms per 3 s window: Whisper tiny, base (whole or cut) and wav2vec2-base")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-wav2vec2", action="store_true", help="skip the wav2vec2-base comparison")
    p.add_argument("--backbones", default=",".join(BENCH_BACKBONES), metavar="NAME,...",
                   help="Whisper backbones to time (NAME:N keeps the lowest N layers); the "
                        "first is the table's reference")
    p.add_argument("--out", type=report_file, default=None, help="also write the figures as JSON")
    p.set_defaults(handler=_bench_model)

    p = bench.add_parser("gpu", help="every GPU check in one run (CUDA inference, 16-mixed "
                                     "training, wav2vec2-base steps); runs on CPU without a GPU")
    p.add_argument("--out", type=report_file, default="gpu_check.json", help="JSON file for the figures")
    p.add_argument("--quick", action="store_true", help="small sizes (a CPU smoke run)")
    p.add_argument("--epochs", type=int, default=TrainConfig().epochs,
                   help="training epochs (the shipped recipe's by default)")
    p.add_argument("--data", default="../shared/data/ravdess")
    p.add_argument("--server-calls", default=None, metavar="N,N,...",
                   help="also run the whole server path at these call counts (e.g. "
                        "1000,5000,10000): serve --workers W, G load generators")
    p.add_argument("--workers", type=int, default=8, help="ingest processes for --server-calls")
    p.add_argument("--generators", type=int, default=4,
                   help="load-generator processes for --server-calls")
    p.add_argument("--server-duration", type=float, default=60.0,
                   help="seconds of audio per call for --server-calls")
    p.add_argument("--frame-ms", type=int, default=20,
                   help="audio per websocket message for --server-calls (Twilio: 20)")
    p.add_argument("--skip", default="", metavar="PART,...",
                   help="parts to leave out: torch, onnx, training, wav2vec2, server")
    p.set_defaults(handler=_bench_gpu)


def _bench_gpu(args: argparse.Namespace) -> int:
    from trainer.gpu_check import parse_skip, run_gpu_check, summary_line

    try:
        skip = parse_skip(args.skip)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = run_gpu_check(
        data=args.data, quick=args.quick, epochs=args.epochs,
        server_calls=[int(c) for c in args.server_calls.split(",")] if args.server_calls else None,
        workers=args.workers, generators=args.generators,
        server_duration_s=args.server_duration, frame_ms=args.frame_ms, skip=skip)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(summary_line(report) + f" Written to {args.out}")
    return 0


def _bench_model(args: argparse.Namespace) -> int:
    import onnxruntime

    from models.backbones import WHISPER_SIZES, split_layers
    from models.card import ModelCard
    from models.inference import DEFAULT_MODEL_DIR
    from trainer.bench import format_table, run_model_bench

    backbones = tuple(b.strip() for b in args.backbones.split(",") if b.strip())
    if not backbones:
        raise ValueError("--backbones names no backbone")
    for b in backbones:  # callmon's one-line error for a bad name or layer count
        if split_layers(b)[0] not in WHISPER_SIZES:
            raise ValueError(f"--backbones: {b!r} is not whisper-tiny or whisper-base[:N]")
    shipped = None
    if (DEFAULT_MODEL_DIR / "model_card.json").is_file():
        card = ModelCard.load(DEFAULT_MODEL_DIR)
        if "int8" in card.files:
            shipped = DEFAULT_MODEL_DIR / card.files["int8"]
    results = run_model_bench(repeats=args.repeats, include_wav2vec2=not args.no_wav2vec2,
                              shipped=shipped, backbones=backbones)
    results["onnxruntime"] = onnxruntime.__version__
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    return 0
