"""Evaluation: segment predictions aggregated to tracks, and the metrics every report shows."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)


def aggregate_tracks(proba: np.ndarray, track_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of segment probabilities per track: (track indices in first-seen order, [tracks, classes])."""
    tracks, inverse = np.unique(track_index, return_inverse=True)
    sums = np.zeros((len(tracks), proba.shape[1]))
    np.add.at(sums, inverse, proba)
    counts = np.bincount(inverse, minlength=len(tracks))[:, None]
    return tracks, sums / counts


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, labels: list[str], curves: bool = False
) -> dict:
    """Accuracy, macro-F1, per-class P/R/F1, confusion matrix, one-vs-rest AUC (and ROC curves).

    y_true holds label indices into `labels`; proba is [n, len(labels)].
    """
    y_true = np.asarray(y_true)
    y_pred = np.argmax(proba, axis=1)
    idx = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=idx, zero_division=0)
    auc_per_class, roc = {}, {}
    for k, label in enumerate(labels):
        positive = y_true == k
        if positive.all() or not positive.any():
            continue  # AUC is undefined for a class absent from (or alone in) the truth
        auc_per_class[label] = float(roc_auc_score(positive, proba[:, k]))
        if curves:
            fpr, tpr, _ = roc_curve(positive, proba[:, k])
            roc[label] = {"fpr": np.round(fpr, 5).tolist(), "tpr": np.round(tpr, 5).tolist()}
    out = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=idx, average="macro", zero_division=0)),
        "macro_auc": float(np.mean(list(auc_per_class.values())))
        if auc_per_class
        else float("nan"),
        "per_class": {
            label: {
                "precision": float(p[k]),
                "recall": float(r[k]),
                "f1": float(f[k]),
                "support": int(s[k]),
            }
            for k, label in enumerate(labels)
        },
        "auc_per_class": auc_per_class,
        "confusion": confusion_matrix(y_true, y_pred, labels=idx).tolist(),
    }
    if curves:
        out["roc"] = roc
    return out
