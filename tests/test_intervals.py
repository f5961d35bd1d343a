"""Bootstrap intervals over speakers for the alert benchmark's figures, and `callmon bench
compare` of two reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.tools.alert_bench import Tally
from streamer.tools.intervals import _draws, intervals, paired, per_speaker_blocks

ROOT = Path(__file__).resolve().parents[1]


def block(*, calm_h: float = 0.1, frustration: int = 0, distress: int = 0,
          angry: tuple[float | None, ...] = (), sad: tuple[float | None, ...] = ()) -> dict:
    """One speaker's figures, as the benchmark writes them."""
    t = Tally(calm_s=calm_h * 3600)
    t.false.update(frustration=frustration, distress=distress)
    t.delays["angry"] = list(angry)
    t.delays["sad"] = list(sad)
    return t.figures()


def speakers(n: int, corpus: str = "ravdess", **kw) -> dict[str, dict]:
    return {f"{corpus}/{i:02d}": block(**kw) for i in range(n)}


def test_speakers_alike_give_no_spread() -> None:
    r = intervals(speakers(6, frustration=1, angry=(5.0,)))
    f = r["figures"]["frustration_false_alerts_per_hour"]
    assert f == {"value": 10.0, "low": 10.0, "high": 10.0}
    assert r["figures"]["angry_detection_rate"] == {"value": 1.0, "low": 1.0, "high": 1.0}
    assert r["figures"]["fearful_detection_rate"] is None  # no fearful calls at all
    assert r["speakers"] == 6


def test_one_loud_speaker_makes_a_wide_interval() -> None:
    # Nine calm voices and one heard as sad all along: 10 false alerts in 1 h of calm speech.
    per = {**speakers(9), "ravdess/99": block(distress=10)}
    f = intervals(per)["figures"]["distress_false_alerts_per_hour"]
    assert f["value"] == 10.0
    assert f["low"] == 0.0  # draws without that voice
    assert f["high"] > 20.0  # draws with it twice or more


def test_a_draw_keeps_each_corpus_at_its_size() -> None:
    names = ["emodb/03", "emodb/08", "ravdess/01", "ravdess/02", "ravdess/03"]
    idx = _draws(names, 500, seed=1)
    assert idx.shape == (500, 5)
    assert ((idx < 2).sum(axis=1) == 2).all()  # two EmoDB speakers per draw
    assert len(np.unique(idx)) == 5


def test_paired_difference_of_a_report_with_itself_is_zero() -> None:
    per = {**speakers(4, frustration=1, angry=(4.0, None)), "emodb/03": block(distress=3)}
    for f in paired(per, per)["figures"].values():
        if f is not None:
            assert f["difference"] == f["low"] == f["high"] == 0.0


def test_paired_difference_sees_a_consistent_gain() -> None:
    # The same ten speakers; the second detects one more angry call of every speaker.
    a = speakers(10, angry=(4.0, None))
    b = speakers(10, angry=(4.0, 8.0))
    f = paired(a, b)["figures"]["angry_detection_rate"]
    assert (f["first"], f["second"], f["difference"]) == (0.5, 1.0, 0.5)
    assert f["low"] == f["high"] == 0.5  # the same gain for every voice: no spread


def test_paired_refuses_other_speakers_or_other_calls() -> None:
    with pytest.raises(ValueError, match="different speakers: only in the first"):
        paired(speakers(3), speakers(2))
    with pytest.raises(ValueError, match="not run on the same calls"):
        paired(speakers(3, calm_h=0.1), speakers(3, calm_h=0.2))


def test_several_seeds_per_side_are_averaged_and_resampled() -> None:
    """A side of several runs (seeds) is their mean; runs alike change nothing, and runs
    that disagree widen the interval even where every speaker agrees with the others."""
    a, b = speakers(10, angry=(4.0, None)), speakers(10, angry=(4.0, 8.0))
    assert paired([a, a, a], b) == {**paired(a, b), "runs": [3, 1]}
    # Two seeds of the reference: one raises a false alert on every voice, one on none.
    calm, noisy = speakers(10), speakers(10, frustration=1)
    f = paired([calm, noisy], calm)["figures"]["frustration_false_alerts_per_hour"]
    assert (f["first"], f["second"], f["difference"]) == (5.0, 0.0, -5.0)
    assert f["low"] == -10.0 and f["high"] == 0.0  # both seeds twice, or the calm one twice
    assert paired(noisy, calm)["figures"]["frustration_false_alerts_per_hour"]["low"] == -10.0
    with pytest.raises(ValueError, match="different speakers: .* only in report 2"):
        paired([speakers(3), speakers(2)], speakers(3))
    with pytest.raises(ValueError, match="not run on the same calls"):
        paired([speakers(3)], [speakers(3), speakers(3, calm_h=0.2)])
    with pytest.raises(ValueError, match="has no report"):
        paired([], speakers(3))


def test_per_speaker_blocks_of_either_report() -> None:
    per = speakers(2)
    calibrate = {"test": {"clean": {"per_speaker": per}}}
    assert per_speaker_blocks(calibrate, "clean") is per
    with pytest.raises(ValueError, match="no 'telephone' test calls"):
        per_speaker_blocks(calibrate, "telephone")
    bench = {"channel": "telephone (8 kHz μ-law)", "per_speaker": per}
    assert per_speaker_blocks(bench, "telephone") is per
    with pytest.raises(ValueError, match="of telephone calls, not clean"):
        per_speaker_blocks(bench, "clean")
    with pytest.raises(ValueError, match="not a report of callmon calibrate"):
        per_speaker_blocks({"rows": []}, "clean")


def callmon(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "callmon_cli.py"), "bench", "compare", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_bench_compare_prints_and_writes_the_difference(tmp_path) -> None:
    before = {"channel": "clean (16 kHz)", "per_speaker": speakers(8, distress=1, sad=(None,))}
    after = {"channel": "clean (16 kHz)", "per_speaker": speakers(8, sad=(6.0,))}
    paths = []
    for name, report in (("before", before), ("after", after)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))
    out = tmp_path / "cmp.json"
    proc = callmon(*map(str, paths), "--names", "old,new", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "| figure | old | new | difference | 95 % interval |" in proc.stdout
    assert "| distress false alerts / h | 10.00 | 0.00 | -10.00 | [-10.00, -10.00] |" in proc.stdout
    assert "| sad in time | 0 % | 100 % | +100 pts | [+100, +100] |" in proc.stdout
    written = json.loads(out.read_text())
    assert written["names"] == ["old", "new"]
    assert written["channels"]["clean"]["figures"]["sad_detection_rate"]["difference"] == 1.0


def test_bench_compare_takes_several_seeds_a_side(tmp_path) -> None:
    paths = []
    for i, distress in enumerate((0, 2, 1)):
        paths.append(tmp_path / f"seed{i}.json")
        paths[-1].write_text(json.dumps({"channel": "clean (16 kHz)",
                                         "per_speaker": speakers(5, distress=distress)}))
    out = tmp_path / "cmp.json"
    proc = callmon(f"{paths[0]},{paths[1]}", str(paths[2]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "runs 2 and 1 (their means; the bootstrap resamples them too)" in proc.stdout
    assert "| figure | seed0 ×2 | seed2 | difference |" in proc.stdout
    figure = json.loads(out.read_text())["channels"]["clean"]["figures"]
    assert figure["distress_false_alerts_per_hour"]["difference"] == 0.0  # (0 + 20) / 2 = 10


def test_bench_compare_says_what_is_wrong(tmp_path) -> None:
    good = tmp_path / "a.json"
    good.write_text(json.dumps({"channel": "clean (16 kHz)", "per_speaker": speakers(3)}))
    other = tmp_path / "b.json"
    other.write_text(json.dumps({"channel": "clean (16 kHz)", "per_speaker": speakers(4)}))
    for args, says in (([str(good), str(ROOT / "README.md")], "cannot read a JSON report"),
                       ([str(good), str(other)], "different speakers"),
                       ([str(good), str(good), "--names", "x"], "--names needs two names")):
        proc = callmon(*args)
        assert proc.returncode == 2, proc.stdout
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert says in proc.stderr
