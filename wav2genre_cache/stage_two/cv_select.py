"""Selection by cross-validation on train+valid, for validation splits too small to choose on.

Ten validation clips choose noise: one clip is ten points. Below SMALL_VALID_TRACKS validation
tracks (or SMALL_VALID_PER_LABEL of some label), each grid point of each head and layer is
scored by repeated stratified k-fold over the training and validation tracks together, an
artist (or a recording) kept on one side of every fold; the models are then refitted on
train+valid and test is touched once. Calibration is fitted on the folds' held-out predictions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from wav2genre_cache._io import jsonable
from wav2genre_cache.errors import TrainError
from wav2genre_cache.heads.registry import HeadSpec, Rows
from wav2genre_cache.stage_two.data import TrainingData
from wav2genre_cache.stage_two.folds import fold_groups, grouped_folds, one_group_labels
from wav2genre_cache.stage_two.options import SELECTION_RULES
from wav2genre_cache.stage_two.scoring import Scores, head_scores
from wav2genre_cache.stage_two.steps_store import StepStore

SMALL_VALID_TRACKS = 100
SMALL_VALID_PER_LABEL = 10
CV_FOLDS, CV_REPEATS = 5, 2
MIN_FOLDS = 3


@dataclass(frozen=True)
class SelectionRule:
    """How a run chooses head, layer and hyper-parameters, and why."""

    name: str  # valid | cv | test (no validation split: optimistic)
    reason: str
    # cv: each fold's training and held-out tracks (cache rows)
    folds: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    n_folds: int = 0
    repeats: int = 0
    grouped_by: str | None = None  # artist, or recording where no artist is known
    tracks: int = 0  # tracks held out once per repeat
    train_only: dict = field(default_factory=dict)  # labels of one artist: they only train

    def as_json(self) -> dict:
        """metrics.json's `selection`: the rule, why, and the folds' shape."""
        out = {"rule": self.name, "reason": self.reason}
        if self.name == "cv":
            out.update(
                folds=self.n_folds,
                repeats=self.repeats,
                grouped_by=self.grouped_by,
                tracks=self.tracks,
                train_only_labels=self.train_only,
            )
        return out


def choose_rule(
    data: TrainingData,
    requested: str = "auto",
    seed: int = 0,
    folds: int = CV_FOLDS,
    repeats: int = CV_REPEATS,
    group_by: str = "artist",
) -> SelectionRule:
    """The selection rule a run uses: `requested`, or for auto, cv when validation is small;
    cross-validation keeps a group (group_by: artist, or none) on one side of every fold."""
    if requested not in SELECTION_RULES:
        raise TrainError(f"--selection {requested!r}: use one of {', '.join(SELECTION_RULES)}")
    fallback = _valid_rule(data)
    if requested == "valid":
        return fallback
    if data.multi_label:
        if requested == "cv":
            raise TrainError(
                "--selection cv: cross-validated selection is for single-label runs; "
                "taggers are chosen on validation (--selection valid)"
            )
        return fallback
    small = _small_validation(data)
    if requested == "auto" and not small:
        return fallback
    rule, why_not = _cv_rule(data, seed, folds, repeats, small, group_by)
    if rule is not None:
        return rule
    if requested == "cv":
        raise TrainError(f"--selection cv: {why_not}")
    return SelectionRule(fallback.name, f"{small}, but {why_not}; {fallback.reason}")


def _valid_rule(data: TrainingData) -> SelectionRule:
    if not data.valid.any():
        return SelectionRule("test", "no validation tracks: chosen on test (optimistic)")
    n = len(np.unique(data.track[data.valid]))
    return SelectionRule("valid", f"chosen on the {n} validation tracks")


def _small_validation(data: TrainingData) -> str:
    """Why validation is too small to choose on, or "" where it is large enough."""
    tracks, first = np.unique(data.track[data.valid], return_index=True)
    if not len(tracks):
        return "no validation tracks"
    per_label = np.bincount(data.y[data.valid][first], minlength=len(data.labels))
    if len(tracks) < SMALL_VALID_TRACKS or per_label.min() < SMALL_VALID_PER_LABEL:
        return (
            f"validation is small ({len(tracks)} tracks, {int(per_label.min())} of its rarest "
            f"label; below {SMALL_VALID_TRACKS} or {SMALL_VALID_PER_LABEL} a label one track "
            "moves the choice)"
        )
    return ""


def _cv_rule(
    data: TrainingData, seed: int, folds: int, repeats: int, small: str, group_by: str
) -> tuple[SelectionRule | None, str]:
    """The cross-validation rule over train+valid, or None and why it cannot be."""
    pool_rows = (data.train | data.valid) & (data.view == 0)
    pool, first = np.unique(data.track[pool_rows], return_index=True)
    y_track = data.y[pool_rows][first]
    groups, grouped_by = fold_groups(data.cache.tracks, pool, group_by)
    alone = one_group_labels(y_track, groups, data.labels, grouped_by)
    tested = ~np.isin(y_track, [data.labels.index(lab) for lab in alone])
    # Stratified folds need a label with a track in every fold: with fewer tracks, fewer folds
    # (down to MIN_FOLDS).
    folds = min(folds, int(np.bincount(y_track[tested]).max()) if tested.any() else 0)
    if folds < MIN_FOLDS or len(set(groups[tested])) < folds or len(set(y_track[tested])) < 2:
        return None, (
            f"cross-validation needs {MIN_FOLDS} folds: {MIN_FOLDS} {grouped_by}s and "
            f"{MIN_FOLDS} tracks of some label among the training and validation tracks of "
            "labels with more than one"
        )
    splits = tuple(
        (pool[train], pool[held])
        for train, held in grouped_folds(y_track, groups, tested, folds, repeats, seed)
    )
    how = (
        f"chosen by {repeats} x {folds}-fold cross-validation on the {len(pool)} training and "
        f"validation tracks, folds grouped by {grouped_by}, the simplest model within one "
        "standard error of the best, refitted on train+valid"
    )
    reason = f"{small}: {how}" if small else how[0].upper() + how[1:]
    return SelectionRule(
        "cv", reason, splits, folds, repeats, grouped_by, int(tested.sum()), alone
    ), ""


@dataclass(frozen=True)
class CVScore:
    """A grid point's cross-validated track scores, and the first repeat's held-out scores."""

    accuracy_mean: float
    accuracy_se: float  # the standard error of the mean over the folds
    macro_f1_mean: float
    held_out: Scores  # every tested track once: what calibration is fitted on

    def figures(self) -> dict:
        """Its `selection` figures, as a result row keeps them."""
        return {
            "accuracy_mean": self.accuracy_mean,
            "accuracy_se": self.accuracy_se,
            "macro_f1_mean": self.macro_f1_mean,
        }


def cross_validated(
    spec: HeadSpec,
    params: dict,
    X: np.ndarray,
    data: TrainingData,
    rule: SelectionRule,
    seed: int,
    steps: StepStore | None = None,
    point: int = 0,
) -> tuple[CVScore, float]:
    """One grid point fitted on each fold's training rows and scored on its held-out tracks,
    and the seconds its folds took. Each fold is kept in `steps` as it finishes (those already
    there are read back)."""
    accuracy, macro_f1, held_out, seconds = [], [], [], 0.0
    for i, fold in enumerate(rule.folds):
        name = f"point-{point:03d}-fold-{i:02d}"
        step = steps.load(name, params) if steps else None
        if step:
            record, scores = step.record, _scores_of(step.arrays) if i < rule.n_folds else None
        else:
            start = time.perf_counter()
            record, scores = _fold(spec, params, X, data, fold, seed)
            record["seconds"] = time.perf_counter() - start
            if steps:
                keep = {f: getattr(scores, f) for f in _FIELDS} if i < rule.n_folds else None
                steps.save(name, params, record, keep)
        accuracy.append(record["accuracy"])
        macro_f1.append(record["macro_f1"])
        seconds += record["seconds"]
        if i < rule.n_folds:
            held_out.append(scores)
    score = CVScore(
        float(np.mean(accuracy)),
        float(np.std(accuracy, ddof=1) / np.sqrt(len(accuracy))),
        float(np.mean(macro_f1)),
        _joined(held_out),
    )
    return score, seconds


def _fold(
    spec: HeadSpec,
    params: dict,
    X: np.ndarray,
    data: TrainingData,
    fold: tuple[np.ndarray, np.ndarray],
    seed: int,
) -> tuple[dict, Scores]:
    """One fold: fitted on its training rows; its accuracy and macro-F1, and its held-out scores."""
    from sklearn.metrics import f1_score

    train_tracks, held_tracks = fold
    pool = data.train | data.valid
    fit_rows = pool & np.isin(data.track, train_tracks)
    held_rows = pool & (data.view == 0) & np.isin(data.track, held_tracks)
    head = spec.fit(
        spec.make(seed, **params), Rows(X[fit_rows], data.y[fit_rows], data.bag[fit_rows])
    )
    scores = head_scores(
        spec,
        head,
        X[held_rows],
        data.y[held_rows],
        data.track[held_rows],
        len(data.labels),
        False,
    )
    predicted = scores.track.argmax(axis=1)
    record = {
        "accuracy": float((predicted == scores.y_track).mean()),
        "macro_f1": float(f1_score(scores.y_track, predicted, average="macro")),
    }
    return record, scores


_FIELDS = ("segment", "y", "tracks", "track", "y_track")  # a Scores' arrays


def _scores_of(arrays: dict[str, np.ndarray]) -> Scores:
    """Single-label held-out scores read back from a step."""
    return Scores(**{f: arrays[f] for f in _FIELDS}, multi_label=False)


def _joined(parts: list[Scores]) -> Scores:
    """The held-out scores of the folds of one repeat as one set of tracks."""
    return Scores(
        **{f: np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS}, multi_label=False
    )


@dataclass(frozen=True)
class CVChoice:
    """The grid point cross-validation kept, refitted on train+valid."""

    head: object
    params: dict
    score: CVScore
    fit_seconds: float  # of the refit


def cv_grid_search(
    spec: HeadSpec,
    grid: list[dict],
    X: np.ndarray,
    data: TrainingData,
    rule: SelectionRule,
    seed: int,
    steps: StepStore | None = None,
) -> tuple[CVChoice, list[dict]]:
    """Each grid point cross-validated (each fold kept in `steps` as it finishes); the best mean
    (the first of equals) refitted on train+valid; and every point's row for `trials`."""
    best, tried = None, []
    for point, params in enumerate(grid):
        score, seconds = cross_validated(spec, params, X, data, rule, seed, steps, point)
        tried.append(
            {
                "params": jsonable(params),
                "valid_accuracy": score.accuracy_mean,
                "valid_macro_f1": score.macro_f1_mean,
                "fit_seconds": seconds,
            }
        )
        if best is None or (score.accuracy_mean, score.macro_f1_mean) > best[0]:
            best = ((score.accuracy_mean, score.macro_f1_mean), params, score)
    _, params, score = best
    rows = data.train | data.valid
    bag = data.bag
    start = time.perf_counter()
    head = spec.fit(spec.make(seed, **params), Rows(X[rows], data.y[rows], bag[rows]))
    return CVChoice(head, params, score, time.perf_counter() - start), tried
