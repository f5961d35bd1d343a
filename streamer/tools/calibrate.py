"""Calibration and alert thresholds from data, never by hand.

Inside the speaker cross-validation, each fold's model scores calls built from its
*validation* speakers (seen by no weight update) and from its *test* speakers:

1. a temperature is fitted per fold on the validation speakers' windows (negative
   log-likelihood); expected calibration error is reported before and after, on the test
   speakers;
2. one alert configuration (smoothing, caller baseline, consecutive windows, on/off per
   kind) is chosen on the validation calls of all folds together: per kind, the lowest
   threshold whose false alerts stay within the target rate, then the shared settings
   that detect the most targets;
3. the chosen configuration is then measured, once, on the test calls of every fold.

The shipped model (trained on every speaker) takes the median temperature and the chosen
configuration; the cross-validated test figures are its estimate.
"""

from __future__ import annotations

import itertools
import json
import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.audio import MODEL_RATE_HZ
from models.card import alert_rows
from models.corpora import Utterance, filter_labels, load_audio
from models.inference import apply_temperature
from models.preprocessing import clip_windows
from streamer.alerts import BASELINES, KINDS, AlertConfig, AlertRule, RoleAlerts, alert_config_dict
from streamer.tools.alert_bench import (
    TARGETS,
    CallAlerts,
    ScoredCall,
    build_calls,
    load_corpora,
    pair_alerts,
    score_calls,
    summarise,
)

log = logging.getLogger(__name__)

WINDOW_HOP_S = 1.0


# -- calibration ----------------------------------------------------------------------------


def nll(probs: np.ndarray, targets: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, None))))


def fit_temperature(probs: np.ndarray, targets: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``targets`` (a fine grid
    in log space from 0.25 to 8, then refined around the best point)."""
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 121))
    losses = [nll(apply_temperature(probs, float(t)), targets) for t in grid]
    best = int(np.argmin(losses))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    fine = np.linspace(lo, hi, 41)
    losses = [nll(apply_temperature(probs, float(t)), targets) for t in fine]
    return round(float(fine[int(np.argmin(losses))]), 3)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (confidence > lo) & (confidence <= hi)
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return round(float(total), 4)


def window_probs(predict, items: Sequence[Utterance], labels: Sequence[str], *,
                 window_samples: int, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Every window of every labelled clip (1 s hop), with the clip's class as target."""
    kept, _ = filter_labels(items, labels)
    windows, targets = [], []
    for u, t in kept:
        w = clip_windows(load_audio(u.path), window_samples, int(WINDOW_HOP_S * MODEL_RATE_HZ))
        windows.append(w)
        targets += [t] * len(w)
    x = np.concatenate(windows)
    probs = np.concatenate([predict(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    return probs, np.asarray(targets)


# -- alert replay for the search ----------------------------------------------------------------


def with_temperature(scored: Sequence[ScoredCall], temperature: float,
                     labels: Sequence[str]) -> list[ScoredCall]:
    """The same calls with every window's scores recalibrated."""
    out = []
    for sc in scored:
        windows = []
        for w, s in sc.windows:
            if s is not None and temperature != 1.0:
                p = apply_temperature(np.array([[s[k] for k in labels]], np.float32), temperature)
                s = {k: float(v) for k, v in zip(labels, p[0], strict=True)}
            windows.append((w, s))
        out.append(ScoredCall(sc.call, windows))
    return out


def replay(scored: Sequence[ScoredCall], config: AlertConfig) -> list[CallAlerts]:
    """The alert engine alone over scored windows (in order), and the clears at the call's
    end: what :func:`streamer.tools.alert_bench.run_alerts` does without building result
    messages, fast enough to try hundreds of configurations."""
    results = []
    for sc in scored:
        engine = RoleAlerts(sc.call.call_id, "customer", config)
        alerts = []
        for w, s in sc.windows:
            alerts += engine.update(scores=s, window_index=w.index, end_s=w.end_s)
        alerts += engine.close(window_index=len(sc.windows), end_s=sc.call.seconds)
        results.append(CallAlerts(sc.call, pair_alerts(alerts)))
    return results


@dataclass(frozen=True, slots=True)
class SearchSpace:
    smoothing: tuple[float, ...] = (0.2, 0.35, 0.5, 0.7)
    baseline: tuple[str, ...] = BASELINES
    consecutive: tuple[int, ...] = (2, 3, 4, 5, 6)
    on: tuple[float, ...] = tuple(round(float(x), 2) for x in np.arange(0.30, 0.96, 0.05))
    off_ratio: float = 0.6
    clear_hold_s: float = 10.0


def _config(space: SearchSpace, smoothing: float, baseline: str, consecutive: int,
            on: dict[str, float]) -> AlertConfig:
    rules = {k: AlertRule(on=float(on[k]), off=round(float(on[k]) * space.off_ratio, 3),
                          consecutive=consecutive, clear_hold_s=space.clear_hold_s)
             for k in KINDS}
    return AlertConfig(smoothing=smoothing, baseline=baseline,
                       frustration=rules["frustration"], distress=rules["distress"])


def _kind_figures(summary: dict, kind: str) -> tuple[int, int, float]:
    """(false alerts, targets detected in time, mean time to alert) of one kind."""
    false = summary["false_alerts"][kind]
    hits, delays = 0, []
    for emotion, (k, _) in TARGETS.items():
        if k == kind:
            hits += summary[emotion]["detected_within_deadline"]
            if summary[emotion]["median_time_to_alert_s"] is not None:
                delays.append(summary[emotion]["median_time_to_alert_s"])
    return false, hits, float(np.mean(delays)) if delays else 99.0


def search_alert_config(scored: Sequence[ScoredCall], *, target_fa_per_hour: float = 1.0,
                        space: SearchSpace | None = None) -> tuple[AlertConfig, list[dict]]:
    """Choose the alert configuration on validation calls (see the module docstring).

    Returns:
        the chosen configuration and one row per shared setting (its best thresholds and
        validation figures), best first.
    """
    space = space or SearchSpace()
    calm_h = sum(sc.call.calm_seconds for sc in scored) / 3600
    allowed = int(np.floor(target_fa_per_hour * calm_h + 1e-9))
    rows: list[dict[str, Any]] = []
    for smoothing, baseline, consecutive in itertools.product(
            space.smoothing, space.baseline, space.consecutive):
        per_on = {}
        for on in space.on:
            cfg = _config(space, smoothing, baseline, consecutive, {k: on for k in KINDS})
            per_on[on] = summarise(replay(scored, cfg))["overall"]
        chosen, figures = {}, {}
        for kind in KINDS:
            ok = [on for on in space.on if _kind_figures(per_on[on], kind)[0] <= allowed]
            pick = min(ok) if ok else max(space.on, key=lambda o: -_kind_figures(per_on[o], kind)[0])
            chosen[kind] = pick
            false, hits, delay = _kind_figures(per_on[pick], kind)
            figures[kind] = {"on": pick, "false_alerts": false, "detected": hits,
                             "mean_time_to_alert_s": round(delay, 1), "within_target": bool(ok)}
        rows.append({"smoothing": smoothing, "baseline": baseline, "consecutive": consecutive,
                     **figures,
                     "_key": (sum(f["within_target"] for f in figures.values()),
                              sum(f["detected"] for f in figures.values()),
                              -sum(f["false_alerts"] for f in figures.values()),
                              -sum(f["mean_time_to_alert_s"] for f in figures.values()))})
    rows.sort(key=lambda r: r["_key"], reverse=True)
    for r in rows:
        r.pop("_key")
    best = rows[0]
    config = _config(space, best["smoothing"], best["baseline"], best["consecutive"],
                     {k: best[k]["on"] for k in KINDS})
    log.info("validation calm speech %.2f h, %d false alerts allowed per kind; chose %s",
             calm_h, allowed, alert_config_dict(config))
    return config, rows


# -- cross-validation ---------------------------------------------------------------------------


def fold_onnx_model(fold_dir: Path, *, threads: int = 1):
    """The fold's int8 ONNX model, as serving would load it (``fold_dir/onnx``)."""
    from models import load_model

    onnx_dir = fold_dir / "onnx"
    if not (onnx_dir / "model_card.json").is_file():
        raise FileNotFoundError(
            f"{fold_dir} has no exported model: run callmon export --checkpoint "
            f"{fold_dir / 'model.pt'} --out {onnx_dir} --variants int8")
    return load_model(onnx_dir, "cpu", variant="int8", threads=threads)


#: Modules that moved since older caches were written (issue 12): their classes live here now.
MOVED_MODULES = {"trainer.alert_bench": "streamer.tools.alert_bench",
                 "trainer.datasets": "models.corpora"}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # type: ignore[override]
        return super().find_class(MOVED_MODULES.get(module, module), name)


def load_scored(path: Path) -> dict | None:
    """A fold's cached scores, or None (re-scored) when the cache cannot be read."""
    try:
        with path.open("rb") as f:
            return _Unpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        log.warning("%s cannot be read (%s): scoring the fold again", path, exc)
        return None


def score_fold(fold_dir: Path, data: Sequence[str], *, calm_minutes: float, seed: int = 0,
               threads: int = 1) -> dict:
    """Score one fold's validation and test speakers (clips and calls, clean and telephone);
    cached in ``fold_dir/scored.pkl``."""
    cache = fold_dir / "scored.pkl"
    if cache.is_file():
        cached = load_scored(cache)
        if cached is not None:
            return cached
    model = fold_onnx_model(fold_dir, threads=threads)
    split = model.card.training["split"]
    items = load_corpora(data)
    labels = model.labels
    out: dict = {"split": split, "labels": list(labels)}
    for role in ("val", "test"):
        speakers = [s for s in split[role] if any(u.speaker == s for u in items)]
        role_items = [u for u in items if u.speaker in set(speakers)]
        out[f"{role}_windows"] = window_probs(model.run_windows, role_items, labels,
                                              window_samples=model.window_samples)
        for telephone in (False, True):
            calls = build_calls(items, speakers, labels, calm_minutes=calm_minutes,
                                telephone=telephone, seed=seed)
            out[f"{role}_{'telephone' if telephone else 'clean'}"] = score_calls(
                calls, model.run_windows, labels)
    cache.write_bytes(pickle.dumps(out))
    return out


def calibrate_cv(fold_dirs: Sequence[Path], data: Sequence[str], *, target_fa_per_hour: float = 1.0,
                 calm_minutes: float = 4.0, seed: int = 0, threads: int = 1) -> dict:
    """Temperatures, the chosen alert configuration and its test figures (module docstring)."""
    folds = [score_fold(Path(d), data, calm_minutes=calm_minutes, seed=seed, threads=threads)
             for d in fold_dirs]
    labels = folds[0]["labels"]
    report: dict = {"folds": [], "target_false_alerts_per_hour": target_fa_per_hour}
    val_calls: list[ScoredCall] = []
    test_calls: dict[str, list[ScoredCall]] = {"clean": [], "telephone": []}
    raw_test_calls: dict[str, list[ScoredCall]] = {"clean": [], "telephone": []}
    for d, f in zip(fold_dirs, folds, strict=True):
        vp, vt = f["val_windows"]
        tp, tt = f["test_windows"]
        t = fit_temperature(vp, vt)
        report["folds"].append({
            "fold_dir": str(d), "val_speakers": f["split"]["val"], "test_speakers": f["split"]["test"],
            "temperature": t,
            "test_window_ece_before": expected_calibration_error(tp, tt),
            "test_window_ece_after": expected_calibration_error(apply_temperature(tp, t), tt),
            "test_window_nll_before": round(nll(tp, tt), 4),
            "test_window_nll_after": round(nll(apply_temperature(tp, t), tt), 4),
        })
        for channel in ("clean", "telephone"):
            val_calls += with_temperature(f[f"val_{channel}"], t, labels)
            test_calls[channel] += with_temperature(f[f"test_{channel}"], t, labels)
            raw_test_calls[channel] += f[f"test_{channel}"]
    config, rows = search_alert_config(val_calls, target_fa_per_hour=target_fa_per_hour)

    def best(pred) -> AlertConfig:
        row = next(r for r in rows if pred(r))
        return _config(SearchSpace(), row["smoothing"], row["baseline"], row["consecutive"],
                       {k: row[k]["on"] for k in KINDS})

    config_nb = best(lambda r: r["baseline"] == "none")
    config_b = best(lambda r: r["baseline"] != "none")

    def on_test(cfg: AlertConfig) -> dict:
        return {"alerts": alert_config_dict(cfg),
                **{ch: summarise(replay(calls, cfg))["overall"] for ch, calls in test_calls.items()}}

    # Other operating points: the rules a looser false-alert budget would choose, on the
    # same validation calls, and what they give on the test calls.
    operating_points = []
    for target in sorted({target_fa_per_hour, 3.0, 10.0}):
        cfg = config if target == target_fa_per_hour else search_alert_config(
            val_calls, target_fa_per_hour=target)[0]
        operating_points.append({"target_false_alerts_per_hour": target, **on_test(cfg)})
    temps = [f["temperature"] for f in report["folds"]]
    report.update({
        "temperature": round(float(np.median(temps)), 3),
        "alerts": alert_config_dict(config),
        "search": rows,
        "validation_calm_hours": round(sum(c.call.calm_seconds for c in val_calls) / 3600, 3),
        "test": {ch: summarise(replay(calls, config)) for ch, calls in test_calls.items()},
        "test_without_baseline": on_test(config_nb),
        "test_with_baseline": on_test(config_b),
        "operating_points": operating_points,
        "test_default_rules_uncalibrated": {
            ch: summarise(replay(calls, replace(AlertConfig())))["overall"]
            for ch, calls in raw_test_calls.items()},
    })
    return report


def write(report: dict, out: Path) -> list[Path]:
    """The report as JSON, and a Markdown summary beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    md = out.with_suffix(".md")
    md.write_text(report_markdown(report))
    return [out, md]


def report_markdown(report: dict) -> str:
    a = report["alerts"]
    lines = [
        "# Calibration and alert thresholds (`callmon calibrate`)", "",
        f"Target: at most {report['target_false_alerts_per_hour']:g} false alert per hour of "
        f"calm speech per kind, on the validation calls of every fold together "
        f"({report['validation_calm_hours']:.2f} h of calm speech, clean and telephone).", "",
        "## Temperature per fold (fitted on its validation speakers; ECE of its test "
        "speakers' windows)", "",
        "| test speakers | T | ECE before | ECE after | NLL before | NLL after |",
        "|---|---|---|---|---|---|",
    ]
    for f in report["folds"]:
        lines.append(f"| {', '.join(f['test_speakers'])} | {f['temperature']:g} | "
                     f"{f['test_window_ece_before']:.3f} | {f['test_window_ece_after']:.3f} | "
                     f"{f['test_window_nll_before']:.3f} | {f['test_window_nll_after']:.3f} |")
    lines += ["", f"Shipped temperature (median): {report['temperature']:g}", "",
              "## Chosen alert rules", "", "```json", json.dumps(a, indent=2), "```", "",
              "## On the test speakers of every fold (never used to choose anything)", "",
              *alert_rows({ch: v["overall"] for ch, v in report["test"].items()}), ""]
    for ch, v in report["test"].items():
        lines += [f"Per corpus, {ch}:", "",
                  *alert_rows(v["per_corpus"]), "",
                  f"Per speaker, {ch}:", "", *alert_rows(v["per_speaker"]), ""]
    for key, title in (("test_without_baseline", "without a caller baseline"),
                       ("test_with_baseline", "with a caller baseline (first or running)")):
        block = report[key]
        lines += [f"Best rules {title} on the validation calls (`{json.dumps(block['alerts'])}`), "
                  "same test calls:", "",
                  *alert_rows({k: v for k, v in block.items() if k != "alerts"}), ""]
    lines += ["## Operating points: looser false-alert budgets on the validation calls, "
              "measured on the test calls", ""]
    for point in report["operating_points"]:
        lines += [f"Budget {point['target_false_alerts_per_hour']:g} per hour: "
                  f"`{json.dumps(point['alerts'])}`", "",
                  *alert_rows({k: v for k, v in point.items()
                                if k not in ("alerts", "target_false_alerts_per_hour")}), ""]
    lines += [
              "The hand-set rules used before (on 0.55 / 0.60, 2 windows, no temperature), "
              "same test calls:", "", *alert_rows(report["test_default_rules_uncalibrated"]),
              "", "## Search on the validation calls (best first; per kind: the lowest "
              "threshold within the target)", "",
              "| smoothing | baseline | windows | frustration on | FA | detected | distress on | "
              "FA | detected |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["search"][:25]:
        f, d = r["frustration"], r["distress"]
        lines.append(f"| {r['smoothing']} | {r['baseline']} | {r['consecutive']} | {f['on']} | "
                     f"{f['false_alerts']} | {f['detected']} | {d['on']} | {d['false_alerts']} | "
                     f"{d['detected']} |")
    return "\n".join(lines) + "\n"
