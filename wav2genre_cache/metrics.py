"""Evaluation: segment predictions aggregated to tracks, and the metrics every report shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_curve

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator

    from .heads import HeadSpec


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
    n = len(labels)
    # Computed from the confusion matrix with NumPy: sklearn's per-call validation cost more
    # than the arithmetic when a run evaluates hundreds of models (tests check both agree).
    confusion = np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    p = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    r = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros(n), where=(p + r) > 0)
    auc_per_class, roc = {}, {}
    for k, label in enumerate(labels):
        positive = y_true == k
        if positive.all() or not positive.any():
            continue  # AUC is undefined for a class absent from (or alone in) the truth
        auc_per_class[label] = _auc(positive, proba[:, k])
        if curves:
            fpr, tpr, _ = roc_curve(positive, proba[:, k])
            roc[label] = {"fpr": np.round(fpr, 5).tolist(), "tpr": np.round(tpr, 5).tolist()}
    out = {
        "n": int(len(y_true)),
        "accuracy": float(tp.sum() / max(len(y_true), 1)),
        "macro_f1": float(f.mean()),
        "macro_auc": float(np.mean(list(auc_per_class.values())))
        if auc_per_class
        else float("nan"),
        "per_class": {
            label: {
                "precision": float(p[k]),
                "recall": float(r[k]),
                "f1": float(f[k]),
                "support": int(support[k]),
            }
            for k, label in enumerate(labels)
        },
        "auc_per_class": auc_per_class,
        "confusion": confusion.tolist(),
    }
    if curves:
        out["roc"] = roc
    return out


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half)."""
    ranks = rankdata(score)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def evaluate(
    spec: HeadSpec,
    head: BaseEstimator,
    X: np.ndarray,
    y: np.ndarray,
    track: np.ndarray,
    labels: list[str],
    curves: bool = False,
) -> dict:
    """Segment- and track-level metrics of a fitted head on the rows given."""
    proba_cols = spec.predict_proba(head, X, groups=track)
    proba = np.zeros((len(X), len(labels)))
    proba[:, head.classes_.astype(int)] = proba_cols  # heads are fitted on label indices
    tracks, track_proba = aggregate_tracks(proba, track)
    y_track = np.array([y[track == t][0] for t in tracks])
    result = {
        "segment": classification_metrics(y, proba, labels),
        "track": classification_metrics(y_track, track_proba, labels, curves=curves),
    }
    if curves:
        result["track"]["y_true"] = y_track.tolist()
        result["track"]["proba"] = np.round(track_proba, 5).tolist()
    return result
