"""Classification metrics for imbalanced emotion classes (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def classification_report(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, labels: Sequence[str]
) -> dict:
    """``n``, ``accuracy``, ``uar`` (unweighted average recall), ``macro_f1``,
    ``per_class_recall``, ``labels`` and ``confusion``. Classes absent from ``y_true`` are
    left out of UAR and macro-F1 rather than counted as zero."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = confusion_matrix(y_true, y_pred, len(labels))
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros(len(labels)), where=present)
    precision = np.divide(tp, predicted, out=np.zeros(len(labels)), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall,
                   out=np.zeros(len(labels)), where=(precision + recall) > 0)
    n = int(cm.sum())
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "uar": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_recall": {
            label: float(recall[i]) for i, label in enumerate(labels) if present[i]
        },
        "labels": list(labels),
        "confusion": cm.tolist(),
    }


def summarise_folds(reports: Sequence[dict], keys: Sequence[str] = ("accuracy", "uar", "macro_f1")
                    ) -> dict[str, dict[str, float]]:
    """Mean and (population) standard deviation of each metric over folds."""
    out = {}
    for key in keys:
        values = np.array([r[key] for r in reports], dtype=np.float64)
        out[key] = {"mean": float(values.mean()), "std": float(values.std())}
    return out
