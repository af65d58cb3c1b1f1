"""Stage two's fit and select: each job's grid chosen by the run's rule (validation, or
cross-validation with the one-standard-error rule), calibrated and scored on test; then the best
model of each head and feature set, and of all."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from wav2genre_cache._io import jsonable
from wav2genre_cache.evaluation.calibration import Calibrator, choose_thresholds, fit_calibrator
from wav2genre_cache.evaluation.result_row import (
    SELECTION_FIGURES,
    CalibratedTracks,
    ResultRow,
    selection_key,
    selection_score,
)
from wav2genre_cache.feature_sets import ENCODER
from wav2genre_cache.heads.registry import HeadSpec, Inputs, Rows, head_spec
from wav2genre_cache.stage_two.cv_select import SelectionRule, choose_rule, cv_grid_search
from wav2genre_cache.stage_two.data import EVERY_LAYER, TrainingData
from wav2genre_cache.stage_two.plan import Job
from wav2genre_cache.stage_two.scoring import Scores, head_scores, metrics_of, per_source
from wav2genre_cache.stage_two.steps_store import StepStore

# Single-label scores are calibrated on at least this many held-out tracks: on synthetic tracks a
# temperature fitted on 10 lowered a logistic regression's test calibration error 70 % of the
# time, on 20 88 %, on 40 98 % (benchmarks/calibration_size.py); on the 60 real dev clips one
# fitted on 5 raised it in 19 of 24 draws, on 15 and 20 lowered it in 22 and 23
# (benchmarks/calibration_dev_clips.py).
MIN_CALIBRATION_TRACKS = 20


@dataclass
class Fitted:
    """A result row with its model and the data it was trained on (its features are re-read)."""

    result: ResultRow  # replaced by the run's writer as it marks the best and writes bundles
    model: object
    data: TrainingData
    calibrator: Calibrator

    @property
    def key(self) -> str:
        """Its bundle's name: the head, and the feature set unless it is the encoder's."""
        r = self.result
        return r.head if r.feature_set == ENCODER else f"{r.head}-{r.feature_set}"

    @property
    def score(self) -> tuple:
        """Better validation score first, then augmented training, then the lower layer."""
        return (self.result.selection_score, self.data.augmented, -self.result.layer)


def fit_jobs(
    data: TrainingData,
    jobs: list[Job],
    seed: int,
    trials: int,
    log: Callable[[str], None],
    calibration: str = "auto",
    rule: SelectionRule | None = None,
    keep: Callable[[Job, Fitted], Fitted] | None = None,
    steps: Callable[[Job], StepStore] | None = None,
) -> list[Fitted]:
    """Fit every job on one feature set; the features of a layer are read once for its jobs.

    keep, where given, is called on each job as it is fitted (jobs_store persists it there)
    and its return value is what the list holds; steps, where given, is the store that keeps
    each fit inside a job (a trial, a grid point, a fold) as it finishes.
    """
    rule = rule or choose_rule(data, "valid")
    out = []
    X, X_layer = None, None
    for job in jobs:
        if X_layer != job.layer:
            X, X_layer = data.features(job.layer), job.layer
        spec = head_spec(job.head)
        kept = steps(job) if steps else None
        result, model, calibrator = fit_and_select(
            spec, X, data, job.layer, seed, trials, calibration, rule, kept
        )
        fitted = Fitted(result, model, data, calibrator)
        out.append(keep(job, fitted) if keep else fitted)
        log(_fitted_line(job, data, result))
        if kept and kept.resumed_line():
            log(kept.resumed_line())
    return out


def _fitted_line(job: Job, data: TrainingData, result: ResultRow) -> str:
    """The log line of one fitted job: where it was trained, its test track scores."""
    where = "all layers, learned weights" if job.layer == EVERY_LAYER else f"layer {job.layer:>2}"
    test = result.test["track"]
    scores = (
        f"macro PR-AUC {test['macro_pr_auc']:.3f}, ROC-AUC {test['macro_auc']:.3f}"
        if data.multi_label
        else f"accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f}"
    )
    cv = result.selection
    chosen_by = (
        f"cross-validated {cv['accuracy_mean']:.3f} +/- {cv['accuracy_se']:.3f}, " if cv else ""
    )
    return (
        f"{job.head:>6} {data.feature_set} {where}"
        f"{data.views_note}: "
        f"{chosen_by}test track {scores} (fit {result.fit_seconds:.1f} s)"
    )


def fit_and_select(
    spec: HeadSpec,
    X: np.ndarray,
    data: TrainingData,
    layer: int,
    seed: int,
    trials: int = 0,
    calibration: str = "auto",
    rule: SelectionRule | None = None,
    steps: StepStore | None = None,
) -> tuple[ResultRow, object, Calibrator]:
    """Choose a grid point (or search trial) by `rule`, calibrate it, and score it on test.

    On validation: each point fitted on train, the best kept, calibrated on validation (each
    tag's threshold chosen there). By cross-validation: each point scored over train+valid
    folds, the best refitted on train+valid and calibrated on the folds' held-out tracks.
    Single-label models are chosen by track accuracy (then macro-F1), taggers by macro PR-AUC
    (then macro ROC-AUC), the figure tagging benchmarks rank by. Where the choice takes more
    than one fit, `steps` keeps each as it finishes (and reads back those it holds).
    """
    rule = rule or choose_rule(data, "valid")
    grid = spec.search(trials, seed) if spec.search and trials > 1 else spec.grid
    if spec.inputs is Inputs.ALL_LAYERS:
        grid = [{**p, "n_layers": data.n_layers} for p in grid]
    steps = steps if len(grid) > 1 or rule.name == "cv" else None  # else one fit: the job
    if steps:
        steps.total = len(grid) * (len(rule.folds) if rule.name == "cv" else 1)

    def scores(head, rows: np.ndarray) -> Scores:
        return head_scores(
            spec, head, X[rows], data.y[rows], data.track[rows], len(data.labels), data.multi_label
        )

    if rule.name == "cv":
        cv, tried = cv_grid_search(spec, grid, X, data, rule, seed, steps)
        chosen = _Choice(cv.head, cv.params, {}, cv.fit_seconds)
        held_out, selection = cv.score.held_out, {"rule": "cv", **cv.score.figures()}
        score = cv.score.accuracy_mean + 1e-3 * cv.score.macro_f1_mean
    else:
        chosen, tried = _grid_search(spec, grid, seed, X, data, scores, steps)
        held_out = scores(chosen.head, data.valid) if data.valid.any() else None
        selection, score = None, selection_score(chosen.on_selection, data.multi_label)
    calibrator, thresholds, on_valid = _calibrate(held_out, data, calibration)
    start = time.perf_counter()
    raw_test = scores(chosen.head, data.test)
    predict_seconds = time.perf_counter() - start
    final_test = raw_test.calibrated(calibrator)
    test = metrics_of(
        final_test, data.labels, thresholds, intervals=True, track_groups=data.track_group
    )
    if len(data.sources) > 1:
        test["per_source"] = per_source(final_test, data.track_source, data.labels, thresholds)
    tracks = CalibratedTracks.of(raw_test.track, raw_test.y_track, data.multi_label, calibrator)
    calibrated = tracks.calibration(calibrator)
    if rule.name == "cv" and calibrated["fitted_on"]:
        calibrated["fitted_on"] = "cross-validation (held-out tracks)"
    if held_out is not None and calibrator.method == "none" and calibration != "none":
        calibrated["skipped"] = (
            f"{len(held_out.track)} held-out tracks, fewer than the {MIN_CALIBRATION_TRACKS} a "
            "temperature needs to help (benchmarks/results/calibration_size.json)"
        )
    result = ResultRow(
        head=spec.name,
        feature_set=data.feature_set,
        layer=layer,
        augmented=data.augmented if data.has_augmented_views else None,
        selected_on=rule.name,
        params=jsonable(chosen.params),
        trials=tried if len(tried) > 1 else None,
        selection_score=score,
        valid=on_valid,
        test=test,
        fit_seconds=chosen.fit_seconds,
        predict_seconds=predict_seconds,
        layer_weights=[round(float(w), 5) for w in chosen.head.layer_weights_]
        if spec.inputs is Inputs.ALL_LAYERS
        else None,
        calibration=calibrated,
        thresholds=None if thresholds is None else [float(t) for t in thresholds],
        selection=selection,
    )
    return result, chosen.head, calibrator


@dataclass(frozen=True)
class _Choice:
    """The grid point kept on the selection split."""

    head: object  # fitted on train
    params: dict
    on_selection: dict  # its track metrics on the selection split
    fit_seconds: float


def _grid_search(
    spec: HeadSpec,
    grid: list[dict],
    seed: int,
    X: np.ndarray,
    data: TrainingData,
    scores: Callable[[object, np.ndarray], Scores],
    steps: StepStore | None = None,
) -> tuple[_Choice, list[dict]]:
    """Fit each grid point on train; the best by its track metrics on the selection split (the
    first of equals), and every point's row for `trials`. Each point is kept in `steps` as it
    finishes (its model too while it is the best), and those already there are read back."""
    bag = data.bag
    train = Rows(X[data.train], data.y[data.train], bag[data.train])
    valid = Rows(X[data.valid], data.y[data.valid], bag[data.valid]) if data.valid.any() else None
    selection_rows = getattr(data, data.selected_on)

    def fit(params: dict) -> tuple[object, dict]:
        head = spec.make(seed, **params)
        start = time.perf_counter()
        spec.fit(head, train, valid)
        fit_seconds = time.perf_counter() - start
        on_sel = metrics_of(scores(head, selection_rows), data.labels)["track"]
        figures = {f"valid_{k}": on_sel[k] for k in SELECTION_FIGURES if k in on_sel}
        return head, {"params": jsonable(params), **figures, "fit_seconds": fit_seconds}

    best, best_step, tried = None, None, []
    for i, params in enumerate(grid):
        name = f"point-{i:03d}"
        step = steps.load(name, params) if steps else None
        head, row = (None, step.record) if step else fit(params)
        on_sel = {k: row[f"valid_{k}"] for k in SELECTION_FIGURES if f"valid_{k}" in row}
        key = selection_key(on_sel, data.multi_label)
        better = best is None or key > best[0]
        if steps and not step:
            steps.save(name, params, row, model=head if better else None)
        tried.append(row)
        if better:
            best, best_step = (key, _Choice(head, params, on_sel, row["fit_seconds"])), step
    choice = best[1]
    if choice.head is None:  # a point read back: its model is in its step
        head = steps.model(best_step) or fit(choice.params)[0]
        choice = _Choice(head, choice.params, choice.on_selection, choice.fit_seconds)
    return choice, tried


def _calibrate(
    valid: Scores | None, data: TrainingData, method: str
) -> tuple[Calibrator, np.ndarray | None, dict | None]:
    """The calibration map and tag thresholds fitted on validation tracks, and its scores there.

    Without a validation split nothing is fitted (test must stay unseen): identity map, tags
    at 0.5. Single-label scores are left as they are below MIN_CALIBRATION_TRACKS.
    """
    n = len(data.labels)
    if valid is None:
        thresholds = np.full(n, 0.5) if data.multi_label else None
        return Calibrator("none", data.multi_label), thresholds, None
    if not data.multi_label and len(valid.track) < MIN_CALIBRATION_TRACKS:
        method = "none"  # below this, a temperature fitted on so few tracks more often hurts
    calibrator = fit_calibrator(valid.track, valid.y_track, data.multi_label, method=method)
    # Rounded here, once: metrics.json, the bundle and predict use the very same numbers.
    thresholds = (
        np.round(choose_thresholds(calibrator.apply(valid.track), valid.y_track), 6)
        if data.multi_label
        else None
    )
    on_valid = metrics_of(valid.calibrated(calibrator), data.labels, thresholds)["track"]
    return calibrator, thresholds, {k: on_valid[k] for k in SELECTION_FIGURES if k in on_valid}


def select_best(fitted: list[Fitted], lower_layer: bool = False) -> dict[str, Fitted]:
    """The best model of each head and feature set: by Fitted.score (the first of equals); where
    cross-validation chose and lower_layer, the lowest layer within one standard error."""
    rows: dict[str, list[Fitted]] = {}
    for f in fitted:
        rows.setdefault(f.key, []).append(f)
    simpler = (lambda f: (_layer_rank(f),)) if lower_layer else (lambda f: ())
    return {key: best_of(group, simpler) for key, group in rows.items()}


def best_overall(candidates: list[Fitted], lower_layer: bool = False) -> Fitted:
    """The model of all: the best score (ties to the head listed first), or where
    cross-validation chose, the simplest head within one standard error of the best, then its
    best layer (with lower_layer: its lowest layer within the standard error).

    Leaning to the lower layer as well chose models 0.025 (random splits) and 0.017 (by artist)
    better on test over 20 seeded splits of the dev clips each way (benchmarks/
    selection_regret.py), both well within the splits' noise (95 % intervals about +/- 0.1), and
    on the dev-clip mix it chose layer 0, 0.55 on test where layers 2-3 gave 0.90: a speech
    encoder's layer 0 is its weakest for genre. So by default the rule leans on the head's
    capacity only.
    """

    def simpler(f: Fitted) -> tuple:
        complexity = head_spec(f.result.head).complexity
        return (complexity, _layer_rank(f)) if lower_layer else (complexity,)

    return best_of(candidates, simpler)


def best_of(rows: list[Fitted], simpler: Callable[[Fitted], tuple]) -> Fitted:
    """The best of rows: one standard error rule (toward `simpler`) where cross-validation
    chose, else the best score, the first of equals."""
    best = rows[0]
    for f in rows[1:]:
        if f.score > best.score:
            best = f
    cv = best.result.selection
    if not cv:
        return best
    floor = cv["accuracy_mean"] - cv["accuracy_se"]
    within = [f for f in rows if f.result.selection["accuracy_mean"] >= floor]
    return min(within, key=lambda f: (*simpler(f), tuple(-x for x in f.score)))


def _layer_rank(f: Fitted) -> int:
    """Lower layers are simpler; a model over every layer is the least simple."""
    return f.data.n_layers if f.result.layer == EVERY_LAYER else f.result.layer
