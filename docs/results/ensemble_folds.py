"""Two fold models averaged, judged on the alert benchmark without exporting anything: each
fold's cached scores of the shipped recipe (seed 1234, runs/both-fF) and of its second seed
(4321, runs/seed2-fF) are averaged window by window (the same calls, so the same windows) into
runs/ens2-fF/scored.pkl, which callmon calibrate then reads as any fold's cache:

    PYTHONPATH=. python docs/results/ensemble_folds.py
    callmon calibrate --runs runs/ens2-f0,runs/ens2-f1,runs/ens2-f2,runs/ens2-f3,runs/ens2-f4 \\
        --out docs/results/calibration_ens2.json

An ensemble of two tiny models costs two tiny models per window (18 ms on one core, inside the
20 ms budget, but half the calls per core); this says whether it would buy fewer false alerts.
"""

import pickle
from pathlib import Path

import numpy as np

from streamer.tools.alert_bench import ScoredCall
from streamer.tools.calibrate import load_scored

ROLES = ("val", "test")
CHANNELS = ("clean", "telephone")


def average(a: list[ScoredCall], b: list[ScoredCall]) -> list[ScoredCall]:
    """Window-by-window mean of two scorings of the same calls (matched by call id)."""
    by_id = {sc.call.call_id: sc for sc in b}
    assert len(by_id) == len(a), "the two caches hold different calls"
    out = []
    for sa in a:
        sb = by_id[sa.call.call_id]
        assert sa.call.onset_s == sb.call.onset_s and len(sa.call.audio) == len(sb.call.audio)
        windows = []
        for (wa, pa), (wb, pb) in zip(sa.windows, sb.windows, strict=True):
            assert wa.index == wb.index and (pa is None) == (pb is None)
            windows.append((wa, None if pa is None or pb is None
                            else {k: (pa[k] + pb[k]) / 2 for k in pa}))
        out.append(ScoredCall(sa.call, windows))
    return out


def window_uar(probs: np.ndarray, targets: np.ndarray) -> float:
    """Unweighted average recall of single 3 s windows (not of clips, as training reports)."""
    hits = probs.argmax(axis=1) == targets
    return float(np.mean([hits[targets == c].mean() for c in np.unique(targets)]))


def main() -> None:
    for fold in range(5):
        a = load_scored(Path(f"runs/both-f{fold}/scored.pkl"))
        b = load_scored(Path(f"runs/seed2-f{fold}/scored.pkl"))
        assert a is not None and b is not None, "run callmon calibrate on both sets of folds first"
        assert a["split"] == b["split"] and a["labels"] == b["labels"]
        # The calls both were scored on; no ONNX model stands behind the average, so the
        # ensemble folder's key has none (calibrate keys a cache by both: scoring_key).
        calls = {k: v for k, v in a["scoring"].items() if k != "model_sha256"}
        assert calls == {k: v for k, v in b["scoring"].items() if k != "model_sha256"}
        out = {"split": a["split"], "labels": a["labels"],
               "scoring": {**calls, "model_sha256": None}}
        for role in ROLES:
            (pa, ta), (pb, tb) = a[f"{role}_windows"], b[f"{role}_windows"]
            assert (ta == tb).all()
            out[f"{role}_windows"] = ((pa + pb) / 2, ta)
            for channel in CHANNELS:
                out[f"{role}_{channel}"] = average(a[f"{role}_{channel}"], b[f"{role}_{channel}"])
        pa, ta = a["test_windows"]
        pb = b["test_windows"][0]
        print(f"fold {fold}: window UAR on its test speakers {window_uar(pa, ta):.3f} (seed 1234), "
              f"{window_uar(pb, ta):.3f} (seed 4321), {window_uar((pa + pb) / 2, ta):.3f} (both)")
        folder = Path(f"runs/ens2-f{fold}")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "scored.pkl").write_bytes(pickle.dumps(out))
        print("wrote", folder / "scored.pkl")


if __name__ == "__main__":
    main()
