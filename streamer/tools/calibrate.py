"""Calibration and alert thresholds from data, never by hand.

Inside the speaker cross-validation, each fold's model scores calls built from its
*validation* speakers (seen by no weight update) and from its *test* speakers. Every such
call was scored by a model that never trained on its speaker.

1. a temperature is fitted per fold on the validation speakers' windows (negative
   log-likelihood); expected calibration error is reported before and after, on the test
   speakers;
2. one alert configuration (smoothing, caller baseline, consecutive windows, on/off per
   kind) is chosen on a pool of such calls: per kind, the lowest threshold whose false
   alerts stay within the target rate, then the shared settings that detect the most
   targets. What ships is chosen on every call (validation and test speakers of every
   fold: nearly three times the calm speech of the validation calls alone, which had
   chosen rules that came out at two to four times their budget on unseen speakers);
3. the estimate is nested: each fold's test calls are judged under rules chosen on a pool
   without its test speakers (no call of theirs, whichever fold's model scored it).

The shipped model (trained on every speaker) takes the median temperature and the chosen
configuration; the nested test figures are its estimate. The report also gives the rules
the validation calls alone would choose, and a *ceiling*: the best detection any rule of the
search space reaches on the test calls within the budget, chosen on those very calls — the
limit that better rules cannot pass, only a better classifier.
"""

from __future__ import annotations

import itertools
import json
import logging
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.audio import MODEL_RATE_HZ
from models.card import CARD_FILE, alert_rows, ceiling_lines, recipe_differences, sha256_of
from models.corpora import Utterance, card_split, filter_labels, load_audio
from models.inference import apply_temperature
from models.preprocessing import clip_windows
from streamer.alerts import BASELINES, KINDS, AlertConfig, AlertRule, RoleAlerts, alert_config_dict
from streamer.tools.alert_bench import (
    TARGET_KEYS,
    CallAlerts,
    ScoredCall,
    Tally,
    build_calls,
    load_corpora,
    pair_alerts,
    score_calls,
    summarise,
    target_kind,
)
from streamer.tools.intervals import interval_line, intervals

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

    def settings(self) -> list[Setting]:
        """Every (smoothing, baseline, consecutive, on) the search tries; ``on`` is tried for
        both kinds at once (the engine decides the kinds independently)."""
        return list(itertools.product(self.smoothing, self.baseline, self.consecutive, self.on))


#: (smoothing, baseline, consecutive windows, on)
Setting = tuple[float, str, int, float]


def _config(space: SearchSpace, smoothing: float, baseline: str, consecutive: int,
            on: dict[str, float]) -> AlertConfig:
    rules = {k: AlertRule(on=float(on[k]), off=round(float(on[k]) * space.off_ratio, 3),
                          consecutive=consecutive, clear_hold_s=space.clear_hold_s)
             for k in KINDS}
    return AlertConfig(smoothing=smoothing, baseline=baseline,
                       frustration=rules["frustration"], distress=rules["distress"])


def _kind_figures(t: Tally, kind: str) -> tuple[int, int, float]:
    """(false alerts, targets alerted within their deadline, mean time to alert) of one
    kind in a tally."""
    delays = [d for e in TARGET_KEYS if target_kind(e) == kind for d in t.in_time(e)]
    return t.false[kind], len(delays), float(np.mean(delays)) if delays else 99.0


#: What the search can pool: every scored call of one speaker in one (fold, role, channel).
Group = tuple[int, str, str, str]  # (fold, "val" or "test", channel, speaker)


def tally_settings(groups: Mapping[Group, Sequence[ScoredCall]], space: SearchSpace
                   ) -> dict[Setting, dict[Group, Tally]]:
    """Replay every setting of ``space`` over every group of calls, once."""
    out: dict[Setting, dict[Group, Tally]] = {}
    for setting in space.settings():
        smoothing, baseline, consecutive, on = setting
        cfg = _config(space, smoothing, baseline, consecutive, {k: on for k in KINDS})
        out[setting] = {g: Tally.of(replay(calls, cfg)) for g, calls in groups.items()}
    return out


def _pooled(tallies: dict[Setting, dict[Group, Tally]], pool: Sequence[Group]
            ) -> dict[Setting, Tally]:
    out = {}
    for setting, by_group in tallies.items():
        t = Tally()
        for g in pool:
            t.add(by_group[g])
        out[setting] = t
    return out


def choose(tallies: dict[Setting, dict[Group, Tally]], pool: Sequence[Group], *,
           target_fa_per_hour: float, space: SearchSpace,
           baselines: Sequence[str] | None = None) -> tuple[AlertConfig, list[dict]]:
    """The alert configuration for the calls of ``pool`` (see the module docstring): per
    shared setting (smoothing, baseline, consecutive windows) and kind, the lowest threshold
    whose false alerts stay within the budget; then the setting whose kinds stay within it,
    detect the most targets in time, raise the fewest false alerts, and alert soonest.

    Returns:
        the chosen configuration and one row per shared setting, best first.
    """
    pooled = _pooled(tallies, pool)
    calm_h = next(iter(pooled.values())).calm_s / 3600 if pooled else 0.0
    allowed = int(np.floor(target_fa_per_hour * calm_h + 1e-9))
    rows: list[dict[str, Any]] = []
    for smoothing, baseline, consecutive in itertools.product(
            space.smoothing, baselines or space.baseline, space.consecutive):
        per_on = {on: pooled[(smoothing, baseline, consecutive, on)] for on in space.on}
        figures = {}
        for kind in KINDS:
            ok = [on for on in space.on if _kind_figures(per_on[on], kind)[0] <= allowed]
            pick = min(ok) if ok else min(space.on, key=lambda o: (_kind_figures(per_on[o], kind)[0], o))
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
    log.info("%.2f h of calm speech, %d false alerts allowed per kind; chose %s",
             calm_h, allowed, alert_config_dict(config))
    return config, rows


def search_alert_config(scored: Sequence[ScoredCall], *, target_fa_per_hour: float = 1.0,
                        space: SearchSpace | None = None) -> tuple[AlertConfig, list[dict]]:
    """Choose the alert configuration on one set of calls (:func:`choose` over them)."""
    space = space or SearchSpace()
    group: Group = (0, "val", "any", "all")
    tallies = tally_settings({group: scored}, space)
    return choose(tallies, [group], target_fa_per_hour=target_fa_per_hour, space=space)


def ceiling(tallies: dict[Setting, dict[Group, Tally]], pool: Sequence[Group], *,
            target_fa_per_hour: float) -> dict:
    """Per kind, the most targets any single setting alerts in time on the calls of
    ``pool`` while its false alerts stay within the budget *on those same calls*: a bound
    that no rule of the search space, however chosen, can beat on them. When it is far
    below a detection target, the classifier's scores, not the alert rules, are the limit."""
    pooled = _pooled(tallies, pool)
    calm_h = next(iter(pooled.values())).calm_s / 3600
    allowed = int(np.floor(target_fa_per_hour * calm_h + 1e-9))
    out = {}
    for kind in KINDS:
        ok = [s for s, t in pooled.items() if _kind_figures(t, kind)[0] <= allowed]
        best = max(ok, key=lambda s: (_kind_figures(pooled[s], kind)[1],
                                     -_kind_figures(pooled[s], kind)[0]))
        t = pooled[best]
        false, hits, _ = _kind_figures(t, kind)
        out[kind] = {"setting": dict(zip(("smoothing", "baseline", "consecutive", "on"), best,
                                         strict=True)),
                     "false_alerts_per_hour": round(false / calm_h, 2),
                     "detected_within_deadline": hits,
                     "targets": sum(len(t.delays[e]) for e in TARGET_KEYS
                                    if target_kind(e) == kind),
                     "per_target": {e: len(t.in_time(e)) for e in TARGET_KEYS
                                    if target_kind(e) == kind and t.delays[e]}}
    return out


# -- cross-validation ---------------------------------------------------------------------------


def exported_fold(fold_dir: Path) -> Path:
    """The fold's export folder (``fold_dir/onnx``).

    Raises:
        FileNotFoundError: no such folder, or nothing exported in it, saying what to run.
    """
    onnx_dir = fold_dir / "onnx"
    if not fold_dir.is_dir():
        raise FileNotFoundError(f"{fold_dir}: no such fold folder (callmon train --fold N "
                                f"--out {fold_dir} writes one)")
    if not (onnx_dir / CARD_FILE).is_file():
        raise FileNotFoundError(
            f"{fold_dir} has no exported model: run callmon export --checkpoint "
            f"{fold_dir / 'model.pt'} --out {onnx_dir} --variants int8")
    return onnx_dir


def fold_onnx_model(fold_dir: Path, *, threads: int = 1):
    """The fold's int8 ONNX model, as serving would load it (``fold_dir/onnx``)."""
    from models import load_model

    return load_model(exported_fold(fold_dir), "cpu", variant="int8", threads=threads)


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


def scoring_key(fold_dir: Path, data: Sequence[str], *, calm_minutes: float, seed: int) -> dict:
    """What a fold's scores depend on: the calls (corpora, calm length, seed) and the model
    (its ONNX files' digests; ``None`` for a folder without one, such as an ensemble's)."""
    models = sorted((fold_dir / "onnx").glob("*.onnx"))
    return {"calm_minutes": float(calm_minutes), "seed": int(seed),
            "corpora": sorted(Path(d).name for d in data),
            "model_sha256": {p.name: sha256_of(p) for p in models} or None}


def score_fold(fold_dir: Path, data: Sequence[str], *, calm_minutes: float, seed: int = 0,
               threads: int = 1) -> dict:
    """Score one fold's validation and test speakers (clips and calls, clean and telephone);
    cached in ``fold_dir/scored.pkl`` with :func:`scoring_key`, and scored again when the
    calls asked for or the model differ from what the cache was scored with (a cache used
    to be taken whatever ``--calm-minutes``, ``--data`` or a re-exported model said)."""
    cache = fold_dir / "scored.pkl"
    scoring = scoring_key(fold_dir, data, calm_minutes=calm_minutes, seed=seed)
    out = load_scored(cache) if cache.is_file() else None
    if out is not None:
        if out.get("scoring") == scoring:
            return out
        log.info("%s was scored with %s, now %s: scoring the fold again", cache,
                 out.get("scoring", "settings it does not record"), scoring)
    model = fold_onnx_model(fold_dir, threads=threads)
    split = card_split(model.card.training)
    items = load_corpora(data)
    labels = model.labels
    out = {"split": split, "labels": list(labels), "scoring": scoring}
    for role in ("val", "test"):
        speakers = [s for s in split[role] if any(u.speaker == s for u in items)]
        if not speakers:
            raise ValueError(f"none of {fold_dir}'s {role} speakers ({', '.join(split[role])}) "
                             f"is in {', '.join(map(str, data))}: give the corpora it was "
                             "trained on (--data)")
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


def _test_calls(groups: Mapping[Group, Sequence[ScoredCall]], channel: str,
                fold: int | None = None) -> list[ScoredCall]:
    """The test calls of one channel: of every fold, or of ``fold``."""
    return [sc for g in sorted(groups) if g[1] == "test" and g[2] == channel
            and fold in (None, g[0]) for sc in groups[g]]


def _calm_hours(groups: Mapping[Group, Sequence[ScoredCall]], pool: Sequence[Group]) -> float:
    return round(sum(sc.call.calm_seconds for g in pool for sc in groups[g]) / 3600, 3)


def choose_nested(tallies: dict[Setting, dict[Group, Tally]],
                  groups: Mapping[Group, Sequence[ScoredCall]],
                  test_speakers: Sequence[Sequence[str]], *, target_fa_per_hour: float,
                  space: SearchSpace, baselines: Sequence[str] | None = None) -> dict:
    """Rules chosen on every group of calls (what ships), and the nested estimate: fold
    ``i``'s test calls judged under rules chosen on a pool without ``test_speakers[i]`` (no
    call of theirs, whichever fold's model scored it).

    Returns:
        ``alerts`` (the shipped rules), ``rows`` (their search), ``fold_alerts`` (each
        fold's rules) and ``test`` (per channel, :func:`summarise` of the test calls).
    """
    everyone = sorted(groups)
    shipped, rows = choose(tallies, everyone, target_fa_per_hour=target_fa_per_hour,
                           space=space, baselines=baselines)
    per_fold = []
    for held in test_speakers:
        pool = [g for g in everyone if g[3] not in set(held)]
        per_fold.append(choose(tallies, pool, target_fa_per_hour=target_fa_per_hour,
                               space=space, baselines=baselines)[0])
    channels = sorted({g[2] for g in everyone if g[1] == "test"})
    test = {ch: summarise([r for i, cfg in enumerate(per_fold)
                           for r in replay(_test_calls(groups, ch, i), cfg)])
            for ch in channels}
    return {"alerts": alert_config_dict(shipped), "rows": rows,
            "fold_alerts": [alert_config_dict(c) for c in per_fold], "test": test}


def check_recipes(fold_dirs: Sequence[Path], card_config: dict | None = None) -> dict | None:
    """The folds (those with an exported card) share one recipe, and the model whose card
    takes the result (``card_config``, its ``training.config``) was trained with it too,
    seed aside: thresholds and temperature measured on other models would not be its own.

    Returns:
        the folds' training config (``None`` when no fold has an exported card).

    Raises:
        ValueError: naming the folder and the fields that differ.
    """
    recipes = {}
    for d in fold_dirs:
        path = Path(d) / "onnx" / CARD_FILE
        if path.is_file():
            recipes[Path(d)] = (json.loads(path.read_text()).get("training") or {}).get(
                "config") or {}
    if not recipes:
        return None
    (first, recipe), *others = recipes.items()
    for d, other in others:
        if differ := recipe_differences(recipe, other):
            raise ValueError(f"{d} was trained with another recipe than {first} "
                             f"({', '.join(differ)} differ): calibrate the folds of one "
                             "cross-validation")
    if card_config is not None:
        if differ := recipe_differences(recipe, card_config, also_ignore=frozenset({"seed"})):
            raise ValueError(f"the card's model was trained with another recipe than the folds "
                             f"({', '.join(differ)} differ): its temperature and alert rules "
                             "would be measured on other models")
    return recipe


def calibrate_cv(fold_dirs: Sequence[Path], data: Sequence[str], *, target_fa_per_hour: float = 1.0,
                 calm_minutes: float = 4.0, seed: int = 0, threads: int = 1,
                 space: SearchSpace | None = None, compare: AlertConfig | None = None,
                 card_config: dict | None = None) -> dict:
    """Temperatures, the chosen alert configuration and its test figures (module docstring);
    ``compare`` (the rules a card had before, say) is measured on the same test calls;
    ``card_config``: the training config of the model whose card will take the result
    (checked against the folds' recipe, :func:`check_recipes`)."""
    space = space or SearchSpace()
    if len({Path(d).resolve() for d in fold_dirs}) != len(fold_dirs):
        raise ValueError(f"a fold folder is given twice in {[str(d) for d in fold_dirs]}")
    for d in fold_dirs:  # a missing export is said before any fold is scored
        if not (Path(d) / "scored.pkl").is_file():
            exported_fold(Path(d))
    recipe = check_recipes(fold_dirs, card_config)
    folds = [score_fold(Path(d), data, calm_minutes=calm_minutes, seed=seed, threads=threads)
             for d in fold_dirs]
    # Nested means each fold's test speakers judged under rules chosen without their calls:
    # folds of two cross-validations (two seeds, say) hold out the same speakers twice.
    held_out: dict[str, Path] = {}
    for d, f in zip(fold_dirs, folds, strict=True):
        for speaker in f["split"]["test"]:
            if speaker in held_out:
                raise ValueError(
                    f"{held_out[speaker]} and {d} both hold out speaker {speaker}: give the "
                    "folds of one cross-validation (each speaker tested once)")
            held_out[speaker] = Path(d)
    labels = folds[0]["labels"]
    report: dict = {"folds": [], "target_false_alerts_per_hour": target_fa_per_hour,
                    "recipe": recipe}
    groups: dict[Group, list[ScoredCall]] = {}
    raw_groups: dict[Group, list[ScoredCall]] = {}  # the test calls, without temperature
    for i, (d, f) in enumerate(zip(fold_dirs, folds, strict=True)):
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
        for role in ("val", "test"):
            for channel in ("clean", "telephone"):
                for sc in with_temperature(f[f"{role}_{channel}"], t, labels):
                    groups.setdefault((i, role, channel, sc.call.speaker), []).append(sc)
                if role == "test":
                    for sc in f[f"test_{channel}"]:
                        raw_groups.setdefault((i, role, channel, sc.call.speaker), []).append(sc)
    tallies = tally_settings(groups, space)
    everyone = sorted(groups)
    validation = [g for g in everyone if g[1] == "val"]
    test_speakers = [f["split"]["test"] for f in folds]

    def on_test(config: AlertConfig, calls=groups) -> dict:
        """Fixed rules on every test call, per channel."""
        return {ch: summarise(replay(_test_calls(calls, ch), config))["overall"]
                for ch in ("clean", "telephone")}

    def nested(target: float, baselines: Sequence[str] | None = None) -> dict:
        return choose_nested(tallies, groups, test_speakers, target_fa_per_hour=target,
                             space=space, baselines=baselines)

    chosen = nested(target_fa_per_hour)

    def brief(block: dict) -> dict:
        return {"alerts": block["alerts"], "fold_alerts": block["fold_alerts"],
                **{ch: v["overall"] for ch, v in block["test"].items()}}

    operating_points = [{"target_false_alerts_per_hour": target,
                         **brief(chosen if target == target_fa_per_hour else nested(target))}
                        for target in sorted({target_fa_per_hour, 3.0, 10.0})]
    # The earlier protocol, for comparison: rules chosen on the validation calls alone.
    from_validation, _ = choose(tallies, validation, target_fa_per_hour=target_fa_per_hour,
                                space=space)
    temps = [f["temperature"] for f in report["folds"]]
    report.update({
        "temperature": round(float(np.median(temps)), 3),
        "selection": ("rules chosen on every call scored by a model that never trained on its "
                      "speaker (the validation and test speakers of every fold); figures on each "
                      "fold's test calls under rules chosen without its test speakers (nested)"),
        "alerts": chosen["alerts"],
        "fold_alerts": chosen["fold_alerts"],
        "search": chosen["rows"],
        "selection_calm_hours": _calm_hours(groups, everyone),
        "validation_calm_hours": _calm_hours(groups, validation),
        "test": chosen["test"],
        "test_intervals": {ch: intervals(v["per_speaker"]) for ch, v in chosen["test"].items()},
        "test_without_baseline": brief(nested(target_fa_per_hour, ("none",))),
        "test_with_baseline": brief(nested(target_fa_per_hour,
                                           tuple(b for b in space.baseline if b != "none"))),
        "operating_points": operating_points,
        "test_rules_from_validation_only": {"alerts": alert_config_dict(from_validation),
                                            **on_test(from_validation)},
        **({"test_compared_rules": {"alerts": alert_config_dict(compare), **on_test(compare)}}
           if compare else {}),
        "ceiling": {ch: ceiling(tallies, [g for g in everyone if g[1] == "test" and g[2] == ch],
                                target_fa_per_hour=target_fa_per_hour)
                    for ch in ("clean", "telephone")},
        "test_default_rules_uncalibrated": on_test(AlertConfig(), raw_groups),
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
    target = report["target_false_alerts_per_hour"]
    lines = [
        "# Calibration and alert thresholds (`callmon calibrate`)", "",
        f"Target: at most {target:g} false alert per hour of calm speech per kind. "
        f"{report['selection'][0].upper()}{report['selection'][1:]}. Calm speech in the "
        f"selection pool: {report['selection_calm_hours']:.2f} h (validation calls alone: "
        f"{report['validation_calm_hours']:.2f} h), clean and telephone.", "",
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
              "## Chosen alert rules (on every call)", "", "```json", json.dumps(a, indent=2),
              "```", "", "Each fold's rules, chosen without its test speakers:", "",
              *[f"- fold {i}: `{json.dumps(fa)}`" for i, fa in enumerate(report["fold_alerts"])],
              "", "## On the test speakers of every fold (nested: never used to choose their "
              "rules)", "",
              *alert_rows({ch: v["overall"] for ch, v in report["test"].items()}), ""]
    for ch, block in report.get("test_intervals", {}).items():
        lines += [f"{ch.capitalize()}: {interval_line(block)}.", ""]
    for ch, v in report["test"].items():
        lines += [f"Per corpus, {ch}:", "",
                  *alert_rows(v["per_corpus"]), "",
                  f"Per speaker, {ch}:", "", *alert_rows(v["per_speaker"]), ""]
    lines += [*ceiling_lines(report["ceiling"], target), ""]
    if "test_compared_rules" in report:
        block = report["test_compared_rules"]
        lines += [f"The rules the card had before (`{json.dumps(block['alerts'])}`), on the same "
                  "test calls:", "", *alert_rows(block), ""]
    block = report["test_rules_from_validation_only"]
    lines += [f"Rules the validation calls alone choose (`{json.dumps(block['alerts'])}`), on "
              "the same test calls:", "", *alert_rows(block), ""]
    for key, title in (("test_without_baseline", "without a caller baseline"),
                       ("test_with_baseline", "with a caller baseline (first or running)")):
        block = report[key]
        lines += [f"Best rules {title} (`{json.dumps(block['alerts'])}`), nested, same test "
                  "calls:", "", *alert_rows(block), ""]
    lines += ["## Operating points: looser false-alert budgets, nested, on the test calls", ""]
    for point in report["operating_points"]:
        lines += [f"Budget {point['target_false_alerts_per_hour']:g} per hour: "
                  f"`{json.dumps(point['alerts'])}`", "", *alert_rows(point), ""]
    lines += [
              "The hand-set rules used before (on 0.55 / 0.60, 2 windows, no temperature), "
              "same test calls:", "", *alert_rows(report["test_default_rules_uncalibrated"]),
              "", "## Search on every call (best first; per kind: the lowest threshold within "
              "the target)", "",
              "| smoothing | baseline | windows | frustration on | FA | detected | distress on | "
              "FA | detected |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["search"][:25]:
        f, d = r["frustration"], r["distress"]
        lines.append(f"| {r['smoothing']} | {r['baseline']} | {r['consecutive']} | {f['on']} | "
                     f"{f['false_alerts']} | {f['detected']} | {d['on']} | {d['false_alerts']} | "
                     f"{d['detected']} |")
    return "\n".join(lines) + "\n"
