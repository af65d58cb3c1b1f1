"""Evaluation: segment predictions aggregated to tracks, and the metrics every report shows.

Single-label (one genre per track): `classification_metrics`. Multi-label (any number of tags
per track, MTG-Jamendo style): `multilabel_metrics`.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import precision_recall_curve, roc_curve

from wav2genre_cache.evaluation.intervals import bootstrap_interval, wilson_interval


def aggregate_tracks(proba: np.ndarray, track_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of segment probabilities per track: (track indices in first-seen order, [tracks, classes])."""
    tracks, inverse = np.unique(track_index, return_inverse=True)
    sums = np.zeros((len(tracks), proba.shape[1]))
    np.add.at(sums, inverse, proba)
    counts = np.bincount(inverse, minlength=len(tracks))[:, None]
    return tracks, sums / counts


def classification_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    labels: list[str],
    curves: bool = False,
    intervals: bool = False,
    groups: np.ndarray | None = None,
) -> dict:
    """Accuracy, macro-F1, per-class P/R/F1, confusion matrix, one-vs-rest AUC (and ROC curves).

    y_true holds label indices into `labels`; proba is [n, len(labels)]. With intervals, the
    95 % intervals of accuracy (Wilson) and macro-F1 (bootstrap within labels, over the rows'
    groups, their artists, where given) as [low, high].
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
    p, r, f = _precision_recall_f1(tp, predicted, support)
    auc_per_class, roc = {}, {}
    for k, label in enumerate(labels):
        positive = y_true == k
        if positive.all() or not positive.any():
            continue  # AUC is undefined for a class absent from (or alone in) the truth
        auc_per_class[label] = _auc(positive, proba[:, k])
        if curves:
            roc[label] = _roc_curve(positive, proba[:, k])
    out = {
        "n": int(len(y_true)),
        "accuracy": float(tp.sum() / max(len(y_true), 1)),
        # Over the labels the rows hold or predict, as sklearn's: a label with no test track
        # that is never predicted says nothing (one artist's genre kept in training).
        "macro_f1": float(f[(support + predicted) > 0].mean()) if len(y_true) else float("nan"),
        "macro_auc": float(np.mean(list(auc_per_class.values())))
        if auc_per_class
        else float("nan"),
        "per_class": _per_class(labels, p, r, f, support),
        "auc_per_class": auc_per_class,
        "confusion": confusion.tolist(),
    }
    if intervals:
        out["accuracy_ci"] = list(wilson_interval(int(tp.sum()), len(y_true)))
        out["macro_f1_ci"] = list(
            bootstrap_interval(lambda i: _macro_f1(y_true[i], y_pred[i], n), y_true, groups=groups)
        )
    if curves:
        out["roc"] = roc
    return out


def _precision_recall_f1(tp: np.ndarray, predicted: np.ndarray, support: np.ndarray) -> tuple:
    """Per-label precision, recall and F1 from counts of any shape (0 where undefined)."""
    tp = tp.astype(float)
    p = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    r = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros_like(tp), where=(p + r) > 0)
    return p, r, f


def _macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> np.ndarray:
    """Macro-F1 of each row of [resamples, rows] label arrays, as classification_metrics'."""
    rounds = len(y_true)
    cells = (np.arange(rounds)[:, None] * n_labels + y_true) * n_labels + y_pred
    confusion = np.bincount(cells.ravel(), minlength=rounds * n_labels**2)
    confusion = confusion.reshape(rounds, n_labels, n_labels).astype(float)
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    support, predicted = confusion.sum(axis=2), confusion.sum(axis=1)
    _, _, f = _precision_recall_f1(tp, predicted, support)
    # Over the labels a resample holds or predicts: one that drew no track of a label would
    # otherwise count its F1 as 0 (sklearn's macro-F1 averages over the same labels).
    seen = (support + predicted) > 0
    return (f * seen).sum(axis=1) / np.maximum(seen.sum(axis=1), 1)


def _per_class(labels, p, r, f, support, thresholds=None) -> dict:
    """Each label's precision, recall, F1 and support (and, for tags, its threshold)."""
    return {
        label: {
            "precision": float(p[k]),
            "recall": float(r[k]),
            "f1": float(f[k]),
            "support": int(support[k]),
            **({} if thresholds is None else {"threshold": float(thresholds[k])}),
        }
        for k, label in enumerate(labels)
    }


def _roc_curve(positive: np.ndarray, score: np.ndarray) -> dict:
    """One label's ROC curve, rounded for metrics.json."""
    fpr, tpr, _ = roc_curve(positive, score)
    return {"fpr": np.round(fpr, 5).tolist(), "tpr": np.round(tpr, 5).tolist()}


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half)."""
    ranks = rankdata(score)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def multilabel_metrics(
    Y: np.ndarray,
    proba: np.ndarray,
    labels: list[str],
    thresholds: np.ndarray | float | None = None,
    curves: bool = False,
    intervals: bool = False,
    groups: np.ndarray | None = None,
) -> dict:
    """Ranking and thresholded metrics of independent per-tag scores against a {0,1} indicator.

    Y and proba are [n, len(labels)]; a tag is predicted when its score >= its threshold
    (`thresholds` [K] or one number; None is 0.5 for every tag).

    - macro_pr_auc / macro_auc: the mean over tags with at least one positive and one negative
      row of average precision (sklearn's, no interpolation: the MTG-Jamendo convention) and of
      ROC AUC; micro_pr_auc is the average precision of all (row, tag) pairs pooled.
    - micro_f1 / macro_f1 at the thresholds (a tag never true nor predicted has F1 0 in the
      macro mean, as sklearn's zero_division=0).
    - accuracy: exact-match (subset) accuracy, the fraction of rows whose predicted tag set is
      exactly the true one; it is strict and falls quickly with the number of tags.
    - cooccurrence_errors: K x K counts of which tags get mistaken for which. C[i][j] (j != i)
      is the number of rows that truly carry tag i and have a false positive on tag j; the
      diagonal C[i][i] is the number of rows where tag i was missed (a false negative).
    - with intervals: the 95 % intervals of macro_pr_auc (bootstrap over rows, or over their
      groups where given) and of accuracy (Wilson), as [low, high].
    """
    Y = np.asarray(Y)
    proba = np.asarray(proba, dtype=np.float64)
    n, k = proba.shape
    if Y.shape != proba.shape or len(labels) != k:
        raise ValueError(f"Y {Y.shape}, proba {proba.shape} and {len(labels)} labels disagree")
    if Y.dtype != bool and not ((Y == 0) | (Y == 1)).all():
        raise ValueError("Y must be a {0,1} indicator")
    truth = Y.astype(bool)
    thr = np.broadcast_to(np.asarray(0.5 if thresholds is None else thresholds, float), (k,))
    pred = proba >= thr
    tp = (truth & pred).sum(axis=0).astype(float)
    fp_rows = pred & ~truth
    fn_rows = truth & ~pred
    fp, fn = fp_rows.sum(axis=0), fn_rows.sum(axis=0)
    support = truth.sum(axis=0)
    p, r, f = _precision_recall_f1(tp, tp + fp, support)
    micro_den = 2 * tp.sum() + fp.sum() + fn.sum()
    # Rows truly tagged i times their false positives (in float64: BLAS, and exact for counts).
    # Its diagonal is 0 (a false positive of i needs i absent): the misses of i go there.
    cooc = np.rint(truth.T.astype(float) @ fp_rows.astype(float)).astype(np.int64) + np.diag(fn)
    ranked = (support > 0) & (support < n)  # AUC and AP need both kinds of rows
    ap, auc_per_class, pr_auc_per_class, roc, pr = _per_tag_ranking(
        truth, proba, ranked, labels, curves
    )
    nan = float("nan")
    out = {
        "n": int(n),
        "macro_pr_auc": float(np.mean(ap)) if len(ap) else nan,
        "macro_auc": float(np.mean(list(auc_per_class.values()))) if auc_per_class else nan,
        "micro_pr_auc": float(_ranking_scores(truth.reshape(-1, 1), proba.reshape(-1, 1))[0][0])
        if truth.any()
        else nan,
        "micro_f1": float(2 * tp.sum() / micro_den) if micro_den > 0 else 0.0,
        "macro_f1": float(f.mean()) if k else nan,
        "accuracy": float(np.all(pred == truth, axis=1).mean()) if n else nan,
        "per_class": _per_class(labels, p, r, f, support, thr),
        "auc_per_class": auc_per_class,
        "pr_auc_per_class": pr_auc_per_class,
        "cooccurrence_errors": cooc.tolist(),
    }
    if intervals:
        out |= _multilabel_intervals(truth[:, ranked], proba[:, ranked], pred == truth, groups)
    if curves:
        out["roc"] = roc
        out["pr"] = pr
    return out


def _multilabel_intervals(
    truth: np.ndarray, proba: np.ndarray, right: np.ndarray, groups: np.ndarray | None
) -> dict:
    """Wilson's interval of exact-match accuracy, and the bootstrap's of macro PR-AUC."""
    n = len(right)
    return {
        "accuracy_ci": list(wilson_interval(int(np.all(right, axis=1).sum()), n)),
        "macro_pr_auc_ci": list(
            bootstrap_interval(lambda i: _macro_ap(truth, proba, i), np.zeros(n), groups=groups)
        ),
    }


def _per_tag_ranking(
    truth: np.ndarray, proba: np.ndarray, ranked: np.ndarray, labels: list[str], curves: bool
) -> tuple:
    """Average precision and ROC AUC of each ranked tag, by label, and their curves if asked."""
    ap, auc = _ranking_scores(truth[:, ranked], proba[:, ranked])
    auc_per_class, pr_auc_per_class, roc, pr = {}, {}, {}, {}
    for j, a, u in zip(np.flatnonzero(ranked), ap, auc, strict=True):
        label = labels[j]
        auc_per_class[label] = float(u)
        pr_auc_per_class[label] = float(a)
        if curves:
            roc[label] = _roc_curve(truth[:, j], proba[:, j])
            prec, rec, _ = precision_recall_curve(truth[:, j], proba[:, j])
            pr[label] = {
                "precision": np.round(prec, 5).tolist(),
                "recall": np.round(rec, 5).tolist(),
            }
    return ap, auc_per_class, pr_auc_per_class, roc, pr


def _macro_ap(truth: np.ndarray, proba: np.ndarray, resamples: np.ndarray) -> np.ndarray:
    """Macro average precision of each resample of rows (tags absent from one are left out)."""
    out = np.full(len(resamples), np.nan)
    for r, rows in enumerate(resamples):
        ap = _ranking_scores(truth[rows], proba[rows])[0]
        if np.isfinite(ap).any():
            out[r] = np.nanmean(ap)
    return out


def _ranking_scores(truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average precision and ROC AUC per column, as sklearn's (NaN where undefined).

    One sort of all columns at once serves both: sklearn's validation per call costs more than
    the arithmetic when a training run evaluates hundreds of models.
    """
    n, k = score.shape
    if k == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-score, axis=0)  # the order within tied scores does not matter below
    s = np.take_along_axis(score, order, axis=0)
    hit = np.take_along_axis(truth, order, axis=0)
    tp = np.cumsum(hit, axis=0, dtype=np.float64)
    positives = tp[-1]
    rows = np.arange(n)[:, None]
    # Tied scores are one threshold: every row of a run of ties takes the values at its ends.
    new_score = s[:-1] != s[1:]
    end = np.ones(s.shape, dtype=bool)
    end[:-1] = new_score
    start = np.ones(s.shape, dtype=bool)
    start[1:] = new_score
    end_at = np.minimum.accumulate(np.where(end, rows, n)[::-1], axis=0)[::-1]
    start_at = np.maximum.accumulate(np.where(start, rows, 0), axis=0)
    # AP = sum_k (R_k - R_k-1) P_k: the precision at each positive row's threshold, averaged.
    precision = tp / (rows + 1)
    hits_at = (hit * np.take_along_axis(precision, end_at, axis=0)).sum(axis=0)
    ap = np.divide(hits_at, positives, out=np.full(k, np.nan), where=positives > 0)
    # AUC as _auc's Mann-Whitney statistic: ascending ranks, ties sharing their mean rank.
    rank = n - (start_at + end_at) / 2
    pairs = positives * (n - positives)
    u = (hit * rank).sum(axis=0) - positives * (positives + 1) / 2
    auc = np.divide(u, pairs, out=np.full(k, np.nan), where=pairs > 0)
    return ap, auc
