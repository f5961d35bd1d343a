"""``callmon bench alerts`` and the calibration built on it, on real held-out speakers and
the shipped model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models.corpora import seen_speakers
from streamer.alerts import AlertConfig, AlertRule
from streamer.tools.alert_bench import (
    AlertBenchError,
    bench_alerts,
    build_calls,
    held_out_speakers,
    load_corpora,
    run_alerts,
    score_calls,
    summarise,
)
from streamer.tools.calibrate import (
    SearchSpace,
    expected_calibration_error,
    fit_temperature,
    replay,
    search_alert_config,
    with_temperature,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def speaker(call_actors) -> str:
    return f"ravdess/{call_actors[0]}"


@pytest.fixture(scope="module")
def scored(shipped_model, ravdess_dir, speaker):
    items = load_corpora([ravdess_dir])
    calls = build_calls(items, [speaker], shipped_model.labels, calm_minutes=1.0, seed=3)
    return calls, score_calls(calls, shipped_model.run_windows, shipped_model.labels)


def test_calls_are_calm_then_target(scored, speaker, shipped_model, ravdess_dir) -> None:
    calls, _ = scored
    assert [c.target for c in calls] == ["angry_from_start", "sad_from_start",
                                         "fearful_from_start", None, "angry", "sad", "fearful"]
    calm = calls[3]
    assert calm.kind == "calm" and calm.onset_s is None and calm.seconds >= 60
    assert calm.rate_hz == 16_000
    for c in calls[4:]:
        assert 28 <= c.onset_s <= 40 and c.seconds - c.onset_s >= 20
        assert c.speaker == speaker
    # Upset from the first word: the target from 0 s, nothing calm to learn a baseline from.
    for c in calls[:3]:
        assert c.onset_s == 0.0 and c.calm_seconds == 0.0 and c.seconds >= 20
    assert all(np.isfinite(c.audio).all() and np.abs(c.audio).max() <= 1.0 for c in calls)
    # Those calls have their own random stream: the others are the same without them.
    items = load_corpora([ravdess_dir])
    without = build_calls(items, [speaker], shipped_model.labels, calm_minutes=1.0, seed=3,
                          from_start=False)
    assert [c.call_id for c in without] == [c.call_id for c in calls[3:]]
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(without, calls[3:], strict=True))


def test_results_come_from_the_server_path(scored, shipped_model) -> None:
    calls, scored_calls = scored
    for call, sc in zip(calls, scored_calls, strict=True):
        indices = [w.index for w, _ in sc.windows]
        assert indices == list(range(len(indices)))
        # One window per second of audio once the first 3 s are in, as serve produces.
        assert abs(len(indices) - (call.seconds - 3 + 1)) <= 1
        if call.onset_s != 0.0:  # (20 s of shouting from the first word has no silent window)
            assert any(s is None for _, s in sc.windows)  # the voice gate finds the pauses
        speech = [s for _, s in sc.windows if s is not None]
        assert speech and set(speech[0]) == set(shipped_model.labels)
    results = run_alerts(scored_calls, AlertConfig())
    report = summarise(results)
    overall = report["overall"]
    assert overall["calm_hours"] == pytest.approx(sum(c.calm_seconds for c in calls) / 3600,
                                                  abs=1e-3)
    angry = overall["angry"]
    assert angry["calls"] == 1 and angry["alert"] == "frustration" and angry["deadline_s"] == 10
    # The shipped model hears this held-out actor's anger (if not always within 10 s).
    assert angry["median_time_to_alert_s"] is not None and angry["missed"] == 0
    assert angry["detected_within_deadline"] == int(angry["median_time_to_alert_s"] <= 10)
    assert list(report["per_speaker"]) == [calls[0].speaker]


def test_an_engine_that_never_alerts_detects_nothing(scored) -> None:
    _, scored_calls = scored
    never = AlertConfig(frustration=AlertRule(on=1.0, off=0.9),
                        distress=AlertRule(on=1.0, off=0.9))
    overall = summarise(run_alerts(scored_calls, never))["overall"]
    assert overall["false_alerts"] == {"frustration": 0, "distress": 0}
    assert all(overall[e]["detected_within_deadline"] == 0 and overall[e]["missed"] == 1
               for e in ("angry", "sad", "fearful"))
    assert replay(scored_calls, never)[1].raised == []
    # Calls upset from the first word are their own targets, never calm speech.
    assert all(overall[f"{e}_from_start"]["calls"] == 1 and
               overall[f"{e}_from_start"]["missed"] == 1 for e in ("angry", "sad", "fearful"))
    always = AlertConfig(frustration=AlertRule(on=0.01, off=0.0, consecutive=1),
                         distress=AlertRule(on=0.01, off=0.0, consecutive=1))
    hot = summarise(run_alerts([sc for sc in scored_calls if sc.call.onset_s == 0.0], always))
    assert hot["overall"]["calm_hours"] == 0 and hot["overall"]["false_alerts_per_hour"] == {
        "frustration": None, "distress": None}
    assert hot["overall"]["angry_from_start"]["detected_within_deadline"] == 1


def test_telephone_calls_arrive_at_8k(shipped_model, ravdess_dir, speaker) -> None:
    items = load_corpora([ravdess_dir])
    calls = build_calls(items, [speaker], shipped_model.labels, calm_minutes=0.5,
                        telephone=True)
    assert {c.rate_hz for c in calls} == {8000}
    sc = score_calls(calls[:1], shipped_model.run_windows, shipped_model.labels)
    assert abs(len(sc[0].windows) - (calls[0].seconds - 2)) <= 1


def _card_trained_on(train: list[str], val: list[str], data: str):
    from models.card import ModelCard

    return ModelCard(name="t", labels=("neutral", "happy", "sad", "angry", "fearful"),
                     sample_rate_hz=16_000, window_s=3.0, backbone="whisper-tiny",
                     files={}, training={"config": {"data": data},
                                         "split": {"train": train, "val": val, "test": []}})


def test_only_unseen_speakers_are_benchmarked(ravdess_dir, tmp_path, shipped_model) -> None:
    items = load_corpora([ravdess_dir])
    # A RAVDESS-only card names speakers without the corpus: they are ravdess/NN.
    card = _card_trained_on([f"{i:02d}" for i in range(3, 17)], ["01", "02"], str(ravdess_dir))
    seen = seen_speakers(card.training)
    assert "ravdess/03" in seen and "ravdess/01" in seen and "ravdess/17" not in seen
    assert held_out_speakers(items, card) == [f"ravdess/{a}" for a in range(17, 21)]
    with pytest.raises(AlertBenchError, match="training or validation set"):
        held_out_speakers(items, card, ["ravdess/03"])
    with pytest.raises(AlertBenchError, match="not in the data"):
        held_out_speakers(items, card, ["ravdess/99"])
    # A corpus whose every speaker the model trained on is refused, not silently skipped.
    everyone = _card_trained_on([f"ravdess/{i:02d}" for i in range(1, 21)], [],
                                f"{ravdess_dir},{ravdess_dir.parent / 'emodb'}")
    with pytest.raises(AlertBenchError, match="no speaker the model did not train on"):
        held_out_speakers(items, everyone)
    # A corpus without calm clips cannot give calm calls.
    corpus = tmp_path / "angry_only"
    corpus.mkdir()
    rows = ["path,speaker,emotion"]
    for i in range(3):
        sf.write(corpus / f"a{i}.wav", 0.1 * np.ones(16_000, np.float32), 16_000)
        rows.append(f"a{i}.wav,s1,angry")
    (corpus / "manifest.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(AlertBenchError, match="no calm clips"):
        bench_alerts(items=load_corpora([corpus]), model=shipped_model, alerts=AlertConfig())


@pytest.fixture(scope="module")
def fold_model(tmp_path_factory, ravdess_dir: Path) -> Path:
    """A model exported from a real (fast) training run that holds RAVDESS speakers out:
    small random-weight wav2vec2 from a local folder, so the command runs end to end."""
    from trainer.bench import save_random_wav2vec2
    from trainer.config import TrainConfig
    from trainer.export import export_checkpoint
    from trainer.train import train

    tmp = tmp_path_factory.mktemp("fold")
    w2v = save_random_wav2vec2(tmp / "w2v", base=False)
    metrics = train(TrainConfig(data=str(ravdess_dir), out=str(tmp / "run"),
                                backbone=f"wav2vec2:{w2v}", fast_dev_run=True, limit_items=60,
                                batch_size=4, progress=False, precision="32"))
    # Both: fp32 for bench alerts, int8 for calibrate (which scores folds as served).
    export_checkpoint(metrics["checkpoint"], tmp / "onnx", variants=("fp32", "int8"))
    return tmp / "onnx"


def test_bench_alerts_command(tmp_path, ravdess_dir, fold_model) -> None:
    from models.card import ModelCard

    held = ModelCard.load(fold_model).training["split"]["test"][0]
    out = tmp_path / "alerts.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "callmon_cli.py"), "bench", "alerts", "--data",
         str(ravdess_dir), "--model", str(fold_model), "--variant", "fp32", "--speakers",
         f"ravdess/{held}", "--calm-minutes", "0.5", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "frustration FA/h" in proc.stdout and f"ravdess/{held}" in proc.stdout
    report = json.loads(out.read_text())
    assert report["speakers"] == [f"ravdess/{held}"]
    assert report["alert_config"]["frustration"]["on"] > 0
    assert len(report["calls"]) == 7 and out.with_suffix(".png").stat().st_size > 10_000
    assert report["overall"]["angry_from_start"]["calls"] == 1
    assert "from the first word" in proc.stdout
    # One speaker: every figure's interval over speakers is the figure itself.
    assert "95 % intervals, bootstrap over the 1 speaker (2000 draws" in proc.stdout
    angry = report["intervals"]["figures"]["angry_detection_rate"]
    assert angry["low"] == angry["value"] == angry["high"]
    seen = ModelCard.load(fold_model).training["split"]["train"][0]
    bad = subprocess.run(
        [sys.executable, str(ROOT / "callmon_cli.py"), "bench", "alerts", "--data",
         str(ravdess_dir), "--model", str(fold_model), "--variant", "fp32", "--speakers",
         f"ravdess/{seen}", "--out", str(tmp_path / "x.json")],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "training or validation set" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_temperature_fit_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    n, k = 4000, 5
    logits = rng.normal(0, 1, (n, k))
    targets = np.array([rng.choice(k, p=np.exp(z) / np.exp(z).sum()) for z in logits])
    over = np.exp(3 * logits)  # over-confident by a factor of 3
    over /= over.sum(axis=1, keepdims=True)
    t = fit_temperature(over, targets)
    assert 2.6 < t < 3.4
    from models.inference import apply_temperature

    assert expected_calibration_error(apply_temperature(over, t), targets) < (
        expected_calibration_error(over, targets) / 3)


def test_search_respects_the_false_alert_budget(scored, shipped_model) -> None:
    _, scored_calls = scored
    space = SearchSpace(smoothing=(0.5,), baseline=("none", "first"), consecutive=(2,),
                        on=(0.5, 0.7, 0.9))
    config, rows = search_alert_config(scored_calls, target_fa_per_hour=0.0, space=space)
    assert len(rows) == 2 and rows[0]["baseline"] == config.baseline
    overall = summarise(replay(scored_calls, config))["overall"]
    for kind in ("frustration", "distress"):
        if rows[0][kind]["within_target"]:
            assert overall["false_alerts"][kind] == 0
    hotter = with_temperature(scored_calls, 0.5, shipped_model.labels)
    first = next(s for _, s in hotter[0].windows if s is not None)
    raw = next(s for _, s in scored_calls[0].windows if s is not None)
    assert max(first.values()) >= max(raw.values())


def test_fold_caches_written_before_the_move_still_load(tmp_path) -> None:
    """scored.pkl files name the classes' old modules (trainer.alert_bench): they load."""
    import pickle

    import numpy as np

    from streamer.tools.alert_bench import ScoredCall, SyntheticCall
    from streamer.tools.calibrate import load_scored

    call = SyntheticCall("c", "ravdess/01", "calm", np.zeros(8, np.float32), 16_000, None)
    # Protocol 2 names classes as text lines ("c<module>\n<name>\n"): rename the module as a
    # cache written before the move names it.
    data = pickle.dumps({"test_clean": [ScoredCall(call, [])]}, protocol=2)
    old = data.replace(b"streamer.tools.alert_bench\n", b"trainer.alert_bench\n")
    assert old != data
    (tmp_path / "scored.pkl").write_bytes(old)
    loaded = load_scored(tmp_path / "scored.pkl")
    assert loaded["test_clean"][0].call.call_id == "c"
    (tmp_path / "broken.pkl").write_bytes(b"not a pickle")
    assert load_scored(tmp_path / "broken.pkl") is None


def _scored_call(speaker: str, kind: str, angry: list[float], onset_s: float | None):
    """A call scored window by window (one window a second) with these angry scores."""
    from streamer.tools.alert_bench import ScoredCall, SyntheticCall
    from streamer.windowing import Window

    n = len(angry) + 2
    call = SyntheticCall(f"{speaker}-{kind}", speaker, kind, np.zeros(n, np.float32), 1,
                         onset_s)
    windows = [(Window(call.call_id, "customer", 0, i, float(i), i + 3.0,
                       np.zeros(0, np.float32), 1.0, True, 0.0),
                {"neutral": 1 - a, "happy": 0.0, "sad": 0.0, "angry": a, "fearful": 0.0})
               for i, a in enumerate(angry)]
    return ScoredCall(call, windows)


def _speaker_calls(speaker: str, calm_angry: float) -> list:
    """A 20-minute calm call at ``calm_angry``, and a calm-then-angry call (0.9 from 60 s)."""
    return [_scored_call(speaker, "calm", [calm_angry] * 1200, None),
            _scored_call(speaker, "angry", [0.1] * 60 + [0.9] * 20, 63.0)]


def test_nested_selection_never_chooses_with_the_speakers_it_is_judged_on() -> None:
    """Speaker A's calm voice sounds angry (0.6), B's does not (0.1). Fold 0 is judged on A
    and chooses its rules without any call of A — so a threshold that A's calm voice
    crosses, and A's false alerts show in the estimate; the shipped rules, chosen on every
    call, avoid them. The ceiling is what the best rule does on the test calls themselves."""
    from streamer.tools.calibrate import SearchSpace, ceiling, choose_nested, tally_settings

    a, b = _speaker_calls("x/A", 0.6), _speaker_calls("x/B", 0.1)
    groups = {(0, "test", "clean", "x/A"): a, (0, "val", "clean", "x/B"): b,
              (1, "test", "clean", "x/B"): b, (1, "val", "clean", "x/A"): a}
    space = SearchSpace(smoothing=(1.0,), baseline=("none",), consecutive=(2,),
                        on=(0.3, 0.5, 0.8, 0.95))
    tallies = tally_settings(groups, space)
    out = choose_nested(tallies, groups, [["x/A"], ["x/B"]], target_fa_per_hour=0.0,
                        space=space)
    assert out["alerts"]["frustration"]["on"] == 0.8  # above A's calm voice, under anger
    assert [f["frustration"]["on"] for f in out["fold_alerts"]] == [0.3, 0.8]
    test = out["test"]["clean"]["overall"]
    assert test["false_alerts"]["frustration"] == 1  # A's calm call under fold 0's rules
    assert test["angry"]["calls"] == 2 and test["angry"]["detected_within_deadline"] == 2
    best = ceiling(tallies, [g for g in groups if g[1] == "test"], target_fa_per_hour=0.0)
    assert best["frustration"]["setting"]["on"] == 0.8
    assert best["frustration"]["detected_within_deadline"] == 2
    assert best["frustration"]["false_alerts_per_hour"] == 0.0


def test_a_fold_cache_is_used_only_for_the_calls_and_model_it_was_scored_with(
        tmp_path, ravdess_dir, fold_model) -> None:
    """scored.pkl was taken whatever --calm-minutes, --data or a re-exported model said, so a
    report could carry figures of calls it did not ask for. It is keyed by both now."""
    import shutil

    from streamer.tools.calibrate import calibrate_cv, score_fold, scoring_key

    fold = tmp_path / "f0"
    shutil.copytree(fold_model, fold / "onnx")
    data = [str(ravdess_dir)]
    first = score_fold(fold, data, calm_minutes=0.2)
    assert first["scoring"] == scoring_key(fold, data, calm_minutes=0.2, seed=0)
    written = (fold / "scored.pkl").stat().st_mtime_ns
    assert score_fold(fold, data, calm_minutes=0.2)["scoring"] == first["scoring"]
    assert (fold / "scored.pkl").stat().st_mtime_ns == written  # from the cache
    longer = score_fold(fold, data, calm_minutes=0.3)  # other calls: scored again

    def calm_s(scored: dict) -> float:
        return sum(len(sc.call.audio) / sc.call.rate_hz for sc in scored["test_clean"]
                   if sc.call.kind == "calm")

    assert calm_s(longer) > calm_s(first) * 1.3
    other = tmp_path / "re-exported"
    shutil.copytree(fold, other)
    (other / "onnx" / "emotion-fp32.onnx").write_bytes(b"another model")
    assert scoring_key(other, data, calm_minutes=0.3, seed=0)["model_sha256"] != \
        longer["scoring"]["model_sha256"]
    elsewhere = tmp_path / "callers"  # a corpus none of the fold's speakers is in
    elsewhere.mkdir()
    clip = next(ravdess_dir.glob("Actor_01/*.flac"))
    (elsewhere / "manifest.csv").write_text(f"path,speaker,emotion\n{clip},x,neutral\n")
    with pytest.raises(ValueError, match="val speakers .* is in .*callers: give the corpora"):
        score_fold(fold, [str(elsewhere)], calm_minutes=0.3)
    # A nested estimate needs each speaker held out once.
    with pytest.raises(ValueError, match="given twice"):
        calibrate_cv([fold, fold], data, calm_minutes=0.3)
    twin = tmp_path / "f0-again"
    shutil.copytree(fold, twin)
    with pytest.raises(ValueError, match=r"both hold out speaker ravdess/\d+: give the folds"):
        calibrate_cv([fold, twin], data, calm_minutes=0.3)


def test_evaluate_names_the_speakers_a_fold_model_was_trained_on(tmp_path, ravdess_dir,
                                                                  fold_model) -> None:
    """callmon evaluate gave the shipped model 100 % on its own training speakers without a
    word; the report now names evaluated speakers the card says it trained or validated on,
    and only those."""
    from models.card import ModelCard

    split = ModelCard.load(fold_model).training["split"]
    held, trained = split["test"][0], split["train"][0]
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "callmon_cli.py"), "evaluate", "--data", str(ravdess_dir),
         "--model", str(fold_model), "--variant", "fp32", "--speakers", f"{held},{trained}",
         "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["seen_speakers"] == [trained]
    assert f"**Not speaker-independent:** 1 of 2 speakers ({trained})" in proc.stdout
    proc = subprocess.run(
        [sys.executable, str(ROOT / "callmon_cli.py"), "evaluate", "--data", str(ravdess_dir),
         "--model", str(fold_model), "--variant", "fp32", "--speakers", held, "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert json.loads(out.read_text())["seen_speakers"] == []
    assert "Not speaker-independent" not in proc.stdout


def test_calibrate_takes_folds_of_one_recipe_for_a_model_of_that_recipe(tmp_path) -> None:
    """calibrate --card wrote whatever folds it was given into the card: base folds' rules
    into tiny's card, say, or folds of two recipes into one estimate."""
    from streamer.tools.calibrate import check_recipes

    recipe = {"backbone": "whisper-tiny", "lr_head": 1e-3, "seed": 1234,
              "data": "../shared/data/ravdess,../shared/data/emodb"}

    def fold(name: str, **changes) -> Path:
        (tmp_path / name / "onnx").mkdir(parents=True)
        card = {"training": {"config": {**recipe, "fold": len(name), "out": name, **changes}}}
        (tmp_path / name / "onnx" / "model_card.json").write_text(json.dumps(card))
        return tmp_path / name

    a = fold("a", threads=1, precision="32")
    b = fold("b", threads=2, precision="16-mixed", data="/elsewhere/ravdess,/x/emodb")
    check_recipes([a, b], {**recipe, "fold": -1, "seed": 7})  # seed and how a run went: same
    with pytest.raises(ValueError, match=r"c was trained with another recipe .*lr_head differ"):
        check_recipes([a, b, fold("c", lr_head=1e-4)])
    with pytest.raises(ValueError, match=r"card's model .*another recipe .*\(backbone differ\)"):
        check_recipes([a, b], {**recipe, "backbone": "whisper-base"})
    check_recipes([tmp_path / "ensemble"])  # no exported card: nothing to compare
