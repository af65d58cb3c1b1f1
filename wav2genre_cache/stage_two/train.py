"""Stage two: train and compare heads on cached features; select on validation, report on test.

train_heads runs four steps: plan (train_plan: which heads on which feature sets and layers),
fit (each job's grid on train, the best point on validation), select (the best model of each
head and feature set, and the best of all), and write (a bundle per head, metrics.json).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from wav2genre_cache import __version__
from wav2genre_cache._io import atomic_write_json, jsonable
from wav2genre_cache.errors import TrainError
from wav2genre_cache.evaluation.calibration import METHODS as CALIBRATION_METHODS
from wav2genre_cache.evaluation.calibration import Calibrator, choose_thresholds, fit_calibrator
from wav2genre_cache.feature_sets import ENCODER
from wav2genre_cache.heads.registry import (
    ALL_HEADS,
    FCNN_SEARCH_SPACE,
    HeadSpec,
    Inputs,
    Rows,
    head_spec,
)
from wav2genre_cache.stage_two.data import EVERY_LAYER, TrainingData, load_training_data
from wav2genre_cache.stage_two.plan import (
    Job,
    feature_sets_for,
    plan_jobs,
    requested_feature_sets,
    requested_heads,
)
from wav2genre_cache.stage_two.scoring import (
    Scores,
    calibration_report,
    head_scores,
    metrics_of,
    per_source,
    reliability_curves,
)
from wav2genre_cache.store.bundles import write_bundle
from wav2genre_cache.store.cache import EmbeddingCache

__all__ = ["Result", "TrainError", "train_heads"]


@dataclass
class Result:
    """One fitted head on one layer of one feature set: a row of metrics.json's results."""

    head: str
    feature_set: str
    layer: int  # EVERY_LAYER: a head that weighs all layers
    augmented: bool | None  # None where the cache has no augmented views: no such question
    selected_on: str  # the split its hyper-parameters were chosen on
    params: dict
    trials: list[dict] | None  # every grid point or search trial, where there were several
    selection_score: float
    valid: dict | None
    test: dict
    fit_seconds: float
    predict_seconds: float
    layer_weights: list[float] | None = None  # heads over all layers: the weight of each
    # The calibration map fitted on validation (method, map, ECE of test tracks before/after)
    # and, for tags, each tag's threshold chosen on validation.
    calibration: dict | None = None
    thresholds: list[float] | None = None
    # Set on the best model of each head and feature set, which gets a bundle ...
    best_of_head: bool = False
    bundle: str | None = None
    test_detail: dict | None = None  # its ROC curves and track probabilities, for the figures
    # ... and on the best of those, copied to best/.
    best_overall: bool = False

    def as_json(self) -> dict:
        """The row as metrics.json holds it: the optional fields only where they are set."""
        row = asdict(self)
        for key in ("layer_weights", "bundle", "test_detail", "calibration", "thresholds"):
            if row[key] is None:
                del row[key]
        for key in ("best_of_head", "best_overall"):
            if not row[key]:
                del row[key]
        return row

    def bundle_metrics(self) -> dict:
        """The scores its bundle carries (serve shows them): test track and segment, validation."""
        track, segment = self.test["track"], self.test["segment"]
        scores = {
            "test_track_accuracy": track["accuracy"],
            "test_track_macro_f1": track["macro_f1"],
            "test_track_macro_auc": track["macro_auc"],
            "test_segment_accuracy": segment["accuracy"],
            "valid": self.valid,
        }
        if "macro_pr_auc" in track:
            scores["test_track_macro_pr_auc"] = track["macro_pr_auc"]
            scores["test_track_micro_f1"] = track["micro_f1"]
        if self.calibration:
            scores["test_ece_before"] = self.calibration["ece_before"]
            scores["test_ece_after"] = self.calibration["ece_after"]
        return scores


@dataclass
class Fitted:
    """A result with its model and the data it was trained on (its features are re-read)."""

    result: Result
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


def train_heads(
    cache_path: str | Path,
    out_dir: str | Path,
    heads: list[str] | tuple[str, ...] | None = None,
    layers: str = "all",
    feature_sets: str | list[str] | tuple[str, ...] = (ENCODER,),
    seed: int = 0,
    augmented: bool | str = True,
    trials: int = 0,
    calibration: str = "auto",
    log: Callable[[str], None] = print,
) -> dict:
    """Train every head on every chosen layer of every feature set; write metrics.json and bundles.

    augmented: True trains on every view of the training tracks, False on the original views
    only, "both" does each (the augmentation ablation). Each head's best model per feature set
    is written to bundles/<head>[-<feature set>]/, and the best of all to best/ (an encoder
    model when there is one, since predict and serve embed audio with the backbone).
    """
    if calibration not in CALIBRATION_METHODS:
        raise TrainError(
            f"--calibration {calibration!r}: use one of {', '.join(CALIBRATION_METHODS)}"
        )
    names = requested_heads(heads)
    # Before any training: a head asked for gets the feature set it needs, or the run stops here.
    # None asks for the default heads, none of them in particular (see feature_sets_for).
    layers_of = {n: s[1] for n, s in EmbeddingCache(cache_path).feature_shapes.items()}
    sets = feature_sets_for(
        None if heads is None else names, requested_feature_sets(feature_sets), layers_of, log
    )
    variants = [True, False] if augmented == "both" else [bool(augmented)]
    fitted: list[Fitted] = []
    probes: dict[str, list[float]] = {}
    first = None
    for fs in sets:
        for aug in variants:
            data = load_training_data(cache_path, fs, aug)
            if first is None:
                for note in data.notes:
                    log(note)
            first = first or data
            if aug and len(variants) == 2 and not data.has_augmented_views:
                log(f"{fs}: the cache has no augmented views; training once, on the original views")
                continue
            jobs, probe = plan_jobs(data, names, layers, log)
            if probe is not None:
                probes[fs] = probe
            if data.selected_on == "test":
                log(
                    "warning: no validation tracks; hyper-parameters and layers are selected on test (optimistic)"
                )
            fitted += fit_jobs(data, jobs, seed, trials, log, calibration)
    best = select_best(fitted)
    metrics = {
        "package_version": __version__,
        "cache": str(Path(cache_path).resolve()),
        "backbone": first.cache.attrs.get("backbone"),
        "untrained_backbone": str(first.cache.attrs.get("backbone", "")).startswith("random-"),
        "feature_sets": list(sets),
        "labels": first.labels,
        "multi_label": first.multi_label,
        "sources": first.sources,
        "duplicates": first.duplicates,
        "notes": list(first.notes),
        "calibration": calibration,
        "selected_on": first.selected_on,
        "augmented_views": augmented,
        "seed": seed,
        "fcnn_search": {"trials": trials, "space": FCNN_SEARCH_SPACE} if trials > 1 else None,
        "layers": sorted({f.result.layer for f in fitted}),
        "probe_scores": probes,
        "counts": {
            s: int(len(np.unique(first.track[getattr(first, s)])))
            for s in ("train", "valid", "test")
        },
    }
    return write_run(Path(out_dir), fitted, best, metrics)


def fit_jobs(
    data: TrainingData,
    jobs: list[Job],
    seed: int,
    trials: int,
    log: Callable[[str], None],
    calibration: str = "auto",
) -> list[Fitted]:
    """Fit every job on one feature set; the features of a layer are read once for its jobs."""
    out = []
    X, X_layer = None, None
    for job in jobs:
        if X_layer != job.layer:
            X, X_layer = data.features(job.layer), job.layer
        spec = head_spec(job.head)
        result, model, calibrator = fit_and_select(
            spec, X, data, job.layer, seed, trials, calibration
        )
        out.append(Fitted(result, model, data, calibrator))
        where = (
            "all layers, learned weights" if job.layer == EVERY_LAYER else f"layer {job.layer:>2}"
        )
        test = result.test["track"]
        scores = (
            f"macro PR-AUC {test['macro_pr_auc']:.3f}, ROC-AUC {test['macro_auc']:.3f}"
            if data.multi_label
            else f"accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f}"
        )
        log(
            f"{job.head:>6} {data.feature_set} {where}"
            f"{'' if data.augmented else ' (original views only)'}: "
            f"test track {scores} (fit {result.fit_seconds:.1f} s)"
        )
    return out


def fit_and_select(
    spec: HeadSpec,
    X: np.ndarray,
    data: TrainingData,
    layer: int,
    seed: int,
    trials: int = 0,
    calibration: str = "auto",
) -> tuple[Result, object, Calibrator]:
    """Fit each grid point (or search trial) on train, keep the best on validation, calibrate it
    on validation (and choose each tag's threshold there), and score it on test.

    Single-label models are chosen by track accuracy (then macro-F1), taggers by macro PR-AUC
    (then macro ROC-AUC), the figure tagging benchmarks rank by.
    """
    sel = getattr(data, data.selected_on)
    grid = spec.search(trials, seed) if spec.search and trials > 1 else spec.grid
    if spec.inputs is Inputs.ALL_LAYERS:
        grid = [{**p, "n_layers": data.n_layers} for p in grid]
    # One bag per (track, view) for the heads that predict tracks: an augmented copy is its own.
    bag = data.track * 1000 + data.view
    train = Rows(X[data.train], data.y[data.train], bag[data.train])
    valid = Rows(X[data.valid], data.y[data.valid], bag[data.valid]) if data.valid.any() else None

    def scores(head, rows: np.ndarray) -> Scores:
        return head_scores(
            spec, head, X[rows], data.y[rows], data.track[rows], len(data.labels), data.multi_label
        )

    best, tried = None, []
    for params in grid:
        head = spec.make(seed, **params)
        start = time.perf_counter()
        spec.fit(head, train, valid)
        fit_seconds = time.perf_counter() - start
        on_sel = metrics_of(scores(head, sel), data.labels)["track"]
        tried.append(
            {
                "params": jsonable(params),
                **{f"valid_{k}": on_sel[k] for k in _SELECTION_FIGURES if k in on_sel},
                "fit_seconds": fit_seconds,
            }
        )
        key = _selection_key(on_sel, data.multi_label)
        if best is None or key > best[0]:
            best = (key, head, params, fit_seconds)
    key, head, params, fit_seconds = best
    calibrator, thresholds, on_valid = _calibrate(
        scores(head, data.valid) if data.valid.any() else None, data, calibration
    )
    start = time.perf_counter()
    raw_test = scores(head, data.test)
    predict_seconds = time.perf_counter() - start
    final_test = raw_test.calibrated(calibrator)
    test = metrics_of(final_test, data.labels, thresholds)
    if len(data.sources) > 1:
        test["per_source"] = per_source(final_test, data.track_source, data.labels, thresholds)
    result = Result(
        head=spec.name,
        feature_set=data.feature_set,
        layer=layer,
        augmented=data.augmented if data.has_augmented_views else None,
        selected_on=data.selected_on,
        params=jsonable(params),
        trials=tried if len(tried) > 1 else None,
        selection_score=key[0] + 1e-3 * key[1],
        valid=on_valid,
        test=test,
        fit_seconds=fit_seconds,
        predict_seconds=predict_seconds,
        calibration=calibration_report(raw_test, calibrator),
        thresholds=None if thresholds is None else [float(t) for t in thresholds],
    )
    result.calibration["fitted_on"] = "valid" if calibrator.method != "none" else None
    if spec.inputs is Inputs.ALL_LAYERS:
        result.layer_weights = [round(float(w), 5) for w in head.layer_weights_]
    return result, head, calibrator


# What a grid point's row in `trials` and a result's `valid` hold.
_SELECTION_FIGURES = ("accuracy", "macro_f1", "macro_pr_auc", "macro_auc")


def _selection_key(track_metrics: dict, multi_label: bool) -> tuple[float, float]:
    """What models are chosen by: macro PR-AUC then ROC-AUC for tags, else accuracy then F1."""
    if multi_label:
        return (track_metrics["macro_pr_auc"], track_metrics["macro_auc"])
    return (track_metrics["accuracy"], track_metrics["macro_f1"])


def _calibrate(
    valid: Scores | None, data: TrainingData, method: str
) -> tuple[Calibrator, np.ndarray | None, dict | None]:
    """The calibration map and tag thresholds fitted on validation tracks, and its scores there.

    Without a validation split nothing is fitted (test must stay unseen): identity map, tags
    at 0.5.
    """
    n = len(data.labels)
    if valid is None:
        thresholds = np.full(n, 0.5) if data.multi_label else None
        return Calibrator("none", data.multi_label), thresholds, None
    calibrator = fit_calibrator(valid.track, valid.y_track, data.multi_label, method=method)
    # Rounded here, once: metrics.json, the bundle and predict use the very same numbers.
    thresholds = (
        np.round(choose_thresholds(calibrator.apply(valid.track), valid.y_track), 6)
        if data.multi_label
        else None
    )
    on_valid = metrics_of(valid.calibrated(calibrator), data.labels, thresholds)["track"]
    return calibrator, thresholds, {k: on_valid[k] for k in _SELECTION_FIGURES if k in on_valid}


def select_best(fitted: list[Fitted]) -> dict[str, Fitted]:
    """The best model of each head and feature set (by Fitted.score; the first of equals)."""
    best: dict[str, Fitted] = {}
    for f in fitted:
        if f.key not in best or f.score > best[f.key].score:
            best[f.key] = f
    return best


def write_run(out_dir: Path, fitted: list[Fitted], best: dict[str, Fitted], metrics: dict) -> dict:
    """Write a bundle per head and feature set, best/ (the best of all), and metrics.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for key, f in best.items():
        r, data = f.result, f.data
        r.best_of_head, r.bundle = True, f"bundles/{key}"
        test = data.test
        raw = head_scores(
            head_spec(r.head),
            f.model,
            data.features(r.layer)[test],
            data.y[test],
            data.track[test],
            len(data.labels),
            data.multi_label,
        )
        calibrator = f.calibrator
        thresholds = None if r.thresholds is None else np.array(r.thresholds)
        final = raw.calibrated(calibrator)
        r.test_detail = metrics_of(final, data.labels, thresholds, curves=True)["track"]
        r.test_detail["y_true"] = final.y_track.tolist()
        r.test_detail["proba"] = np.round(final.track, 5).tolist()
        r.test_detail["reliability"] = reliability_curves(raw, calibrator)
        write_bundle(
            out_dir / r.bundle,
            f.model,
            r.head,
            params=r.params,
            layer=r.layer,
            labels=data.labels,
            feature_set=data.feature_set,
            cache_attrs=data.cache.attrs,
            metrics=r.bundle_metrics(),
            multi_label=data.multi_label,
            calibration=f.calibrator.as_json(),
            thresholds=r.thresholds,
        )
    # predict and serve embed audio with the backbone: an encoder model is best when there is one.
    candidates = [f for f in best.values() if f.result.feature_set == ENCODER] or list(
        best.values()
    )
    overall = max(candidates, key=lambda f: (f.score, -ALL_HEADS.index(f.result.head))).result
    overall.best_overall = True
    if (out_dir / "best").exists():
        shutil.rmtree(out_dir / "best")
    shutil.copytree(out_dir / overall.bundle, out_dir / "best")
    metrics = {
        **metrics,
        "results": [f.result.as_json() for f in fitted],
        "best": {
            "head": overall.head,
            "layer": overall.layer,
            "feature_set": overall.feature_set,
            "bundle": overall.bundle,
        },
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics
