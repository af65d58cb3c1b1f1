"""Repeated stratified k-fold, grouped by artist where known: accuracy with its spread, for sets
too small to split.

With `keep` (the CLI's `<--out>.folds/`), each (repeat, fold, head) score is kept as it is
fitted (steps_store), and the same call re-run reads those back and fits the rest: a killed run
loses only the fit it was in. Other settings are refused with the list of differences.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from wav2genre_cache.errors import TrainError
from wav2genre_cache.heads.registry import Rows, head_spec
from wav2genre_cache.stage_two.folds import (
    fold_groups,
    grouped_folds,
    one_group_labels,
)
from wav2genre_cache.stage_two.plan import requested_heads
from wav2genre_cache.stage_two.scoring import head_scores, metrics_of
from wav2genre_cache.stage_two.steps_store import (
    StepStore,
    any_step,
    cache_identity,
    read_settings,
    setting_differences,
    write_settings,
)
from wav2genre_cache.store.cache import EmbeddingCache

FOLDS_FORMAT = "wav2genre-crossval-folds"
FOLDS_VERSION = 1
SETTINGS_FILE = "settings.json"


def cross_validate(
    cache_path: str | Path,
    feature_set: str = "handcrafted",
    heads: list[str] | tuple[str, ...] = ("svm", "rf", "xgb", "logreg"),
    layer: int = 0,
    folds: int = 5,
    repeats: int = 3,
    seed: int = 0,
    group_by: str = "artist",
    keep: str | Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Repeated stratified k-fold over every embedded track, for sets too small to split.

    Folds keep a group on one side: with group_by "artist", an artist's tracks (where the cache
    knows artists), and always the copies of one recording; a track's segments never straddle.
    A label whose tracks are all one artist cannot be tested on an artist the model has not
    heard: its tracks only ever train, and the result names it. Original views only; a track's
    prediction is the mean of its segments' probabilities. Returns per head the mean and
    standard deviation of track accuracy and macro-F1 over the folds x repeats. With `keep`, a
    folder, each score is kept there as it is fitted and those already there are read back.
    """
    heads = requested_heads(heads)
    cache = EmbeddingCache(cache_path)
    cache.verify()
    if cache.config.get("multi_label"):
        raise TrainError(
            f"{cache_path}: a multi-label (tag) cache; cross-validate folds single-label sets. "
            "Train taggers with train-heads, which scores them by macro PR-AUC"
        )
    tracks = cache.tracks
    ok = np.flatnonzero(tracks.status.to_numpy() == "ok")
    labels = sorted(set(tracks.label.to_numpy()[ok]))
    y_track = np.array([labels.index(lab) for lab in tracks.label.to_numpy()[ok]])
    groups, grouped_by = fold_groups(tracks, ok, group_by)
    alone = one_group_labels(y_track, groups, labels, grouped_by)
    tested = ~np.isin(y_track, [labels.index(lab) for lab in alone])
    counts = np.bincount(y_track[tested], minlength=len(labels))
    if not tested.any() or counts[counts > 0].min() < folds:
        raise TrainError(
            f"{cache_path}: every label needs at least {folds} tracks for {folds}-fold cross-validation"
        )
    X, y_seg, seg_track = _original_rows(cache, feature_set, layer, labels)
    splits = [
        (ok[train], ok[held])
        for train, held in grouped_folds(y_track, groups, tested, folds, repeats, seed)
    ]
    settings = {
        "cache": cache_identity(cache),
        "feature_set": feature_set,
        "layer": layer,
        "heads": list(heads),
        "folds": folds,
        "repeats": repeats,
        "seed": seed,
        "group_by": group_by,
    }
    store = _open_store(Path(keep), settings, log) if keep is not None else None
    if store:
        store.total = len(splits) * len(heads)
    scores = _fold_scores(splits, heads, folds, (X, y_seg, seg_track), labels, seed, store)
    if store and store.read_back:
        log(
            f"{store.read_back} of {len(splits) * len(heads)} fold scores read back from "
            f"{store.root}; {store.written} fitted"
        )
    return {
        "feature_set": feature_set,
        "layer": layer,
        "folds": folds,
        "repeats": repeats,
        "grouped_by": grouped_by,
        "groups": int(len(set(groups[tested]))),
        "tracks": int(tested.sum()),
        "train_only_tracks": int((~tested).sum()),
        "unmeasured_labels": alone,
        "labels": labels,
        "chance": 1 / len(labels),
        "heads": {h: _mean_and_spread(s) for h, s in scores.items()},
    }


def _fold_scores(
    splits: list[tuple[np.ndarray, np.ndarray]],
    heads: list[str],
    folds: int,
    rows: tuple[np.ndarray, np.ndarray, np.ndarray],
    labels: list[str],
    seed: int,
    store: StepStore | None,
) -> dict[str, list[tuple[float, float]]]:
    """Each head's (accuracy, macro-F1) on each split, in order: read back from `store` where
    it holds them, else fitted (and kept there)."""
    seg_track = rows[2]
    scores: dict[str, list[tuple[float, float]]] = {h: [] for h in heads}
    for i, (train_tracks, test_tracks) in enumerate(splits):
        train_rows = np.isin(seg_track, train_tracks)
        test_rows = np.isin(seg_track, test_tracks)
        split = {"train": _digest(train_tracks), "test": _digest(test_tracks)}
        for name in heads:
            step_name = f"repeat{i // folds}-fold{i % folds}-{name}"
            step = store.load(step_name, split) if store else None
            if step is not None:
                record = step.record
            else:
                record = _fold_score(name, seed, rows, train_rows, test_rows, labels)
                if store:
                    store.save(step_name, split, record)
            scores[name].append((record["accuracy"], record["macro_f1"]))
    return scores


def _fold_score(
    name: str,
    seed: int,
    rows: tuple[np.ndarray, np.ndarray, np.ndarray],
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    labels: list[str],
) -> dict:
    """A head fitted on a fold's training rows: its track accuracy and macro-F1 on the rest."""
    X, y_seg, seg_track = rows
    spec = head_spec(name)
    train = Rows(X[train_rows], y_seg[train_rows], seg_track[train_rows])
    head = spec.fit(spec.make(seed), train)
    test = (X[test_rows], y_seg[test_rows], seg_track[test_rows])
    m = metrics_of(head_scores(spec, head, *test, len(labels), False), labels)["track"]
    return {"accuracy": float(m["accuracy"]), "macro_f1": float(m["macro_f1"])}


def _open_store(root: Path, settings: dict, log: Callable[[str], None]) -> StepStore:
    """The kept fold scores of `root`; one holding scores of other settings refused in one line."""
    path = root / SETTINGS_FILE
    stored = read_settings(path, FOLDS_VERSION, "fold scores") if path.is_file() else None
    changed = setting_differences(stored, settings) if stored and any_step(root, "*") else []
    if changed:
        raise TrainError(
            f"{root} holds the fold scores of a cross-validation with other settings "
            f"({'; '.join(changed)}); re-run with its settings to finish it, or use another "
            f"--out (or delete {root} to start over)"
        )
    return StepStore(
        root,
        {"format": FOLDS_FORMAT},
        log,
        lambda: write_settings(path, FOLDS_FORMAT, FOLDS_VERSION, settings),
        label="cross-validate",
    )


def _digest(tracks: np.ndarray) -> str:
    """A fold side's tracks, as a short digest: a kept score is reused for the same fold only."""
    return hashlib.sha256(np.asarray(tracks, dtype=np.int64).tobytes()).hexdigest()[:16]


def _original_rows(
    cache: EmbeddingCache, feature_set: str, layer: int, labels: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The original views' features at a layer, label indices (-1: not a label) and tracks."""
    seg = cache.segments
    original = seg.view.to_numpy() == 0
    seg_track = seg.track.to_numpy()[original]
    index = {label: i for i, label in enumerate(labels)}
    y_seg = np.array([index.get(lab, -1) for lab in cache.tracks.label.to_numpy()[seg_track]])
    return cache.features(feature_set, layer)[original], y_seg, seg_track


def _mean_and_spread(folds: list[tuple[float, float]]) -> dict:
    """The mean and standard deviation of accuracy and macro-F1 over the folds."""
    accuracy, macro_f1 = np.array(folds).T
    return {
        "accuracy_mean": float(accuracy.mean()),
        "accuracy_std": float(accuracy.std()),
        "macro_f1_mean": float(macro_f1.mean()),
        "macro_f1_std": float(macro_f1.std()),
    }
