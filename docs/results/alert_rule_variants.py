"""Other alert rules on the shipped recipe's cached fold scores, chosen and judged as
`callmon calibrate` chooses and judges its rules: nested over the five folds' test speakers,
at most 1 false alert per hour of calm speech per kind, on every held-out call.

    PYTHONPATH=. python docs/results/alert_rule_variants.py   # needs runs/both-f0..4/scored.pkl
                                                              # (written by callmon calibrate)

:func:`raises` is `streamer.alerts.RoleAlerts` for one kind, written as a loop over plain
numbers so that thousands of settings replay in seconds. The first variant is calibrate's own
search; it must reproduce docs/results/calibration.json's nested test figures (asserted),
which checks the copy. The others: the same rules chosen per kind (each kind its own
smoothing, baseline and windows); Page's CUSUM (raise when the sum of ``value - drift`` since
it was last at zero passes a threshold: the classic quickest detector of a change in mean),
shared and per kind; windows with little speech ignored by the alerts. Output:
docs/results/alert_rule_variants.json.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.alerts import KINDS
from streamer.tools.alert_bench import TARGET_KEYS, TARGETS, target_kind
from streamer.tools.calibrate import fit_temperature, load_scored, with_temperature

HERE = Path(__file__).parent
RUNS = [Path(f"runs/both-f{i}") for i in range(5)]
BUDGET_PER_HOUR = 1.0
OFF_RATIO, CLEAR_HOLD_S, BASELINE_WINDOWS, BASELINE_RATE = 0.6, 10.0, 8, 0.02


@dataclass(frozen=True)
class Call:
    calm_s: float
    onset_s: float | None
    key: str | None  # the target key (TARGET_KEYS), None for calm calls
    emotion: str
    windows: dict[str, list[tuple[float, float | None, float]]]  # kind → (end s, score, speech)


@dataclass(frozen=True)
class Rule:
    smoothing: float
    baseline: str
    detector: str  # "run": `strength` consecutive windows at or over `threshold`; "cusum"
    strength: float  # consecutive windows, or the CUSUM drift
    threshold: float
    min_speech: float = 0.0

    @property
    def off(self) -> float:
        return OFF_RATIO * (self.threshold if self.detector == "run" else self.strength)


def raises(windows: Sequence[tuple[float, float | None, float]], rule: Rule
           ) -> list[tuple[float, float | None]]:
    """(raised at, cleared at or None) of one kind over one call's windows."""
    smoothed = reference = None
    ref_sum, ref_n, run, cusum = 0.0, 0, 0, 0.0
    active, below = False, None
    out: list[tuple[float, float | None]] = []
    for end_s, score, speech in windows:
        if score is None or speech < rule.min_speech:
            continue
        a = rule.smoothing
        smoothed = score if smoothed is None else a * score + (1 - a) * smoothed
        value = smoothed
        if rule.baseline != "none":
            if reference is None:
                if not active:
                    ref_sum, ref_n = ref_sum + score, ref_n + 1
                    if ref_n >= BASELINE_WINDOWS:
                        reference = ref_sum / ref_n
            else:
                if rule.baseline == "running" and not active and run == 0:
                    reference += BASELINE_RATE * (score - reference)
                b = min(reference, 0.95)
                value = max(0.0, (smoothed - b) / (1 - b))
        if not active:
            if rule.detector == "run":
                run = run + 1 if value >= rule.threshold else 0
                fire = run >= rule.strength
            else:
                cusum = max(0.0, cusum + value - rule.strength)
                fire, run = cusum >= rule.threshold, int(cusum > 0)
            if fire:
                active, run, cusum, below = True, 0, 0.0, None
                out.append((end_s, None))
        elif value > rule.off:
            below = None
        else:
            below = end_s if below is None else below
            if end_s - below >= CLEAR_HOLD_S:
                out[-1] = (out[-1][0], end_s)
                active, below, run = False, None, 0
    return out


@dataclass
class Counts:
    false: int = 0
    calm_s: float = 0.0
    in_time: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        self.false += other.false
        self.calm_s += other.calm_s
        self.in_time += other.in_time
        return self


def counts(calls: Sequence[Call], kind: str, rule: Rule) -> tuple[Counts, dict[str, int]]:
    """False alerts, calm time and targets alerted in time; and in time per target key."""
    c, per_key = Counts(), dict.fromkeys((e for e in TARGET_KEYS if target_kind(e) == kind), 0)
    for call in calls:
        alerts = raises(call.windows[kind], rule)
        c.calm_s += call.calm_s
        c.false += sum(at <= call.calm_s for at, _ in alerts)
        if call.onset_s is None or TARGETS[call.emotion][0] != kind:
            continue
        onset = call.onset_s
        delays = [max(0.0, at - onset) for at, cleared in alerts if cleared is None or cleared > onset]
        if delays and min(delays) <= TARGETS[call.emotion][1]:
            c.in_time += 1
            per_key[call.key] += 1
    return c, per_key


def space(detector: str, min_speech: Sequence[float]) -> Iterator[tuple[tuple, Sequence[float]]]:
    """(shared setting, thresholds tried under it)."""
    if detector == "run":
        strengths: Sequence[float] = (2, 3, 4, 5, 6)
        thresholds = tuple(round(float(x), 2) for x in np.arange(0.30, 0.96, 0.05))
    else:
        strengths = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
        thresholds = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0)
    for shared in itertools.product((1.0, 0.7, 0.5, 0.35, 0.2), ("none", "first", "running"),
                                    strengths, min_speech):
        yield shared, thresholds


def load_groups() -> tuple[dict[tuple, list[Call]], list[list[str]]]:
    """Every held-out call by (fold, role, channel, speaker), scores after the fold's
    temperature; and each fold's test speakers."""
    groups: dict[tuple, list[Call]] = {}
    tests = []
    for i, run_dir in enumerate(RUNS):
        fold = load_scored(run_dir / "scored.pkl")
        assert fold is not None, f"{run_dir}/scored.pkl: run callmon calibrate first"
        tests.append(fold["split"]["test"])
        t = fit_temperature(*fold["val_windows"])
        for role, channel in itertools.product(("val", "test"), ("clean", "telephone")):
            for sc in with_temperature(fold[f"{role}_{channel}"], t, fold["labels"]):
                windows = {k: [(w.end_s, None if s is None else score(s), w.speech_ratio)
                               for w, s in sc.windows] for k, score in KINDS.items()}
                groups.setdefault((i, role, channel, sc.call.speaker), []).append(
                    Call(sc.call.calm_seconds, sc.call.onset_s, sc.call.target, sc.call.kind,
                         windows))
    return groups, tests


def nested(groups: dict[tuple, list[Call]], tests: list[list[str]], detector: str, *,
           per_kind: bool, min_speech: Sequence[float] = (0.0,)) -> dict:
    settings = list(space(detector, min_speech))
    table = {(kind, shared, thr): {g: counts(calls, kind, Rule(*shared[:2], detector, shared[2],
                                                               thr, shared[3]))
                                   for g, calls in groups.items()}
             for kind in KINDS for shared, thresholds in settings for thr in thresholds}

    def pooled(kind: str, shared: tuple, thr: float, pool: Sequence[tuple]
               ) -> tuple[Counts, dict[str, int]]:
        total, per_key = Counts(), {}
        for g in pool:
            c, keys = table[(kind, shared, thr)][g]
            total += c
            per_key = {k: per_key.get(k, 0) + v for k, v in keys.items()}
        return total, per_key

    def choose(pool: Sequence[tuple]) -> dict[str, tuple[tuple, float]]:
        allowed = int(np.floor(BUDGET_PER_HOUR * sum(c.calm_s for g in pool for c in groups[g])
                               / 3600 + 1e-9))
        rows = {}
        for shared, thresholds in settings:
            row = {}
            for kind in KINDS:
                per = {thr: pooled(kind, shared, thr, pool)[0] for thr in thresholds}
                ok = [thr for thr in thresholds if per[thr].false <= allowed]
                pick = min(ok) if ok else min(thresholds, key=lambda t: (per[t].false, t))
                row[kind] = ((bool(ok), per[pick].in_time, -per[pick].false), pick)
            rows[shared] = row
        if per_kind:
            return {kind: max(((s, rows[s][kind][1]) for s in rows),
                              key=lambda x: rows[x[0]][kind][0]) for kind in KINDS}
        best = max(rows, key=lambda s: tuple(sum(rows[s][k][0][i] for k in KINDS)
                                             for i in range(3)))
        return {kind: (best, rows[best][kind][1]) for kind in KINDS}

    everyone = sorted(groups)
    chosen = [choose([g for g in everyone if g[3] not in set(held)]) for held in tests]
    out: dict = {}
    for channel in ("clean", "telephone"):
        figures: dict = {}
        for kind in KINDS:
            total, per_key = Counts(), {}
            for i, rules in enumerate(chosen):
                shared, thr = rules[kind]
                test = [g for g in everyone if g[:3] == (i, "test", channel)]
                c, keys = pooled(kind, shared, thr, test)
                total += c
                per_key = {k: per_key.get(k, 0) + v for k, v in keys.items()}
            figures[f"{kind}_fa_h"] = round(total.false / (total.calm_s / 3600), 2)
            figures.update(per_key)
        out[channel] = figures
    out["rules_on_every_call"] = {
        kind: dict(zip(("smoothing", "baseline", "strength", "min_speech", "threshold"),
                       (*shared, thr), strict=True))
        for kind, (shared, thr) in choose(everyone).items()}
    return out


def main() -> None:
    groups, tests = load_groups()
    report = {}
    for name, kw in [("calibrate's search (consecutive windows, shared by both kinds)",
                      dict(detector="run", per_kind=False)),
                     ("consecutive windows, chosen per kind", dict(detector="run", per_kind=True)),
                     ("CUSUM, shared", dict(detector="cusum", per_kind=False)),
                     ("CUSUM, chosen per kind", dict(detector="cusum", per_kind=True)),
                     ("windows under 50 % or 80 % speech ignored (searched)",
                      dict(detector="run", per_kind=False, min_speech=(0.0, 0.5, 0.8)))]:
        report[name] = nested(groups, tests, **kw)
        print(name, json.dumps(report[name]), flush=True)
    shipped = json.loads((HERE / "calibration.json").read_text())["test"]["clean"]["overall"]
    first = next(iter(report.values()))["clean"]
    assert all(first[f"{k}_fa_h"] == shipped["false_alerts_per_hour"][k] for k in KINDS)
    assert all(first[k] == shipped[k]["detected_within_deadline"] for k in TARGET_KEYS), first
    (HERE / "alert_rule_variants.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
