"""Repeated stratified k-fold by track: accuracy with its spread, for sets too small to split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wav2genre_cache.errors import TrainError
from wav2genre_cache.heads.registry import Rows, head_spec
from wav2genre_cache.stage_two.plan import requested_heads
from wav2genre_cache.stage_two.scoring import head_scores, metrics_of
from wav2genre_cache.store.cache import EmbeddingCache


def cross_validate(
    cache_path: str | Path,
    feature_set: str = "handcrafted",
    heads: list[str] | tuple[str, ...] = ("svm", "rf", "xgb", "logreg"),
    layer: int = 0,
    folds: int = 5,
    repeats: int = 3,
    seed: int = 0,
) -> dict:
    """Repeated stratified k-fold by track over every embedded track, for sets too small to split.

    Folds are by track (a track's segments never straddle train and test, nor do copies of one
    recording) and use original views only; track predictions are the mean of segment
    probabilities. Returns per head the mean and standard deviation of track accuracy and
    macro-F1 over the folds x repeats.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    heads = requested_heads(heads)
    cache = EmbeddingCache(cache_path)
    if cache.config.get("multi_label"):
        raise TrainError(
            f"{cache_path}: a multi-label (tag) cache; cross-validate folds single-label sets. "
            "Train taggers with train-heads, which scores them by macro PR-AUC"
        )
    tracks = cache.tracks
    ok = np.flatnonzero(tracks.status.to_numpy() == "ok")
    labels = sorted(set(tracks.label.to_numpy()[ok]))
    y_track = np.array([labels.index(lab) for lab in tracks.label.to_numpy()[ok]])
    if np.bincount(y_track).min() < folds:
        raise TrainError(
            f"{cache_path}: every label needs at least {folds} tracks for {folds}-fold cross-validation"
        )
    seg = cache.segments
    original = seg.view.to_numpy() == 0
    X = cache.features(feature_set, layer)[original]
    seg_track = seg.track.to_numpy()[original]
    y_seg = np.array(
        [labels.index(lab) if lab in labels else -1 for lab in tracks.label.to_numpy()[seg_track]]
    )
    # Copies of one recording (equal hashes of the decoded audio) fall in one fold together.
    hashes = tracks.content_hash.to_numpy()[ok]
    groups = np.where(hashes != "", hashes, [f"\0{i}" for i in ok])
    scores: dict[str, list[tuple[float, float]]] = {h: [] for h in heads}
    splits = [
        split
        for r in range(repeats)
        for split in StratifiedGroupKFold(folds, shuffle=True, random_state=seed + r).split(
            ok, y_track, groups
        )
    ]
    for train_idx, test_idx in splits:
        train_rows = np.isin(seg_track, ok[train_idx])
        test_rows = np.isin(seg_track, ok[test_idx])
        for name in heads:
            spec = head_spec(name)
            train = Rows(X[train_rows], y_seg[train_rows], seg_track[train_rows])
            head = spec.fit(spec.make(seed), train)
            test = (X[test_rows], y_seg[test_rows], seg_track[test_rows])
            m = metrics_of(head_scores(spec, head, *test, len(labels), False), labels)["track"]
            scores[name].append((m["accuracy"], m["macro_f1"]))
    result = {
        "feature_set": feature_set,
        "layer": layer,
        "folds": folds,
        "repeats": repeats,
        "tracks": len(ok),
        "labels": labels,
        "chance": 1 / len(labels),
        "heads": {
            h: {
                "accuracy_mean": float(np.mean([a for a, _ in s])),
                "accuracy_std": float(np.std([a for a, _ in s])),
                "macro_f1_mean": float(np.mean([f for _, f in s])),
                "macro_f1_std": float(np.std([f for _, f in s])),
            }
            for h, s in scores.items()
        },
    }
    return result
