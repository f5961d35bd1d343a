"""A hand-crafted baseline under the same speaker-independent protocol as the transformer:
log-mel and MFCC statistics per 3 s window, standardised, multinomial logistic regression,
clip scores averaged over windows."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from models.audio import MODEL_RATE_HZ as SAMPLE_RATE_HZ
from models.corpora import discover, filter_labels, speaker_folds, speakers_of
from models.labels import LABEL_SETS
from models.preprocessing import clip_windows
from trainer.data import decode_all
from trainer.metrics import classification_report, summarise_folds

log = logging.getLogger(__name__)

WINDOW = 3 * SAMPLE_RATE_HZ
HOP = SAMPLE_RATE_HZ  # one second
N_MFCC = 20


def _dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    basis[0] /= np.sqrt(2.0)
    return basis.astype(np.float32)


def window_features(windows: np.ndarray) -> np.ndarray:
    """``(n, samples)`` → ``(n, features)``: mean and std of 80 log-mel bands, 20 MFCCs and
    their deltas, plus frame-energy statistics."""
    from models.backbones import LogMel

    frontend = LogMel()
    dct = _dct_matrix(N_MFCC, 80)
    feats = []
    with torch.inference_mode():
        for i in range(0, len(windows), 64):
            mel = frontend(torch.from_numpy(windows[i : i + 64])).numpy()  # (b, 80, t)
            mfcc = np.einsum("km,bmt->bkt", dct, mel)
            delta = np.diff(mfcc, axis=2)
            energy = mel.mean(axis=1)
            parts = [
                mel.mean(2), mel.std(2), mfcc.mean(2), mfcc.std(2), delta.std(2),
                energy.mean(1, keepdims=True), energy.std(1, keepdims=True),
                np.percentile(energy, [10, 50, 90], axis=1).T,
            ]
            feats.append(np.concatenate(parts, axis=1))
    return np.concatenate(feats).astype(np.float32)


def cross_validate_baseline(data: str | Path, *, labels: str = "5", folds: int = 5,
                            seed: int = 0) -> dict:
    """Leave-speakers-out CV of the baseline with the transformer's folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    names = LABEL_SETS[labels]
    kept, skipped = filter_labels(discover(data), names)
    audio = decode_all([u for u, _ in kept])
    feats, owner = [], []
    for i, clip in enumerate(audio):
        w = clip_windows(clip, WINDOW, HOP)
        feats.append(window_features(w))
        owner.extend([i] * len(w))
    x = np.concatenate(feats)
    owner_arr = np.asarray(owner)
    y_clip = np.asarray([t for _, t in kept])
    speaker_clip = np.asarray([u.speaker for u, _ in kept])
    reports = []
    for test in speaker_folds(speakers_of(u for u, _ in kept), folds):
        test_clip = np.isin(speaker_clip, test)
        train_rows = ~test_clip[owner_arr]
        clf = make_pipeline(StandardScaler(),
                            LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced",
                                               random_state=seed))
        clf.fit(x[train_rows], y_clip[owner_arr[train_rows]])
        test_idx = np.flatnonzero(test_clip)
        probs = np.stack([clf.predict_proba(x[owner_arr == i]).mean(0) for i in test_idx])
        reports.append(classification_report(y_clip[test_idx], probs.argmax(1), names))
        log.info("baseline fold %s: UAR %.3f", test, reports[-1]["uar"])
    return {
        "model": "log-mel/MFCC statistics + logistic regression (C=0.1, balanced)",
        "labels": list(names),
        "skipped": skipped,
        "folds": [{"test_speakers": t, "uar": r["uar"], "accuracy": r["accuracy"]}
                  for t, r in zip(speaker_folds(sorted(set(speaker_clip)), folds), reports,
                                  strict=True)],
        "summary": summarise_folds(reports),
    }
