"""Stage two: train and compare heads on cached features; select on validation (or by
cross-validation when it is small), report on test.

train_heads runs four steps: plan (plan.py: which heads on which feature sets and layers), the
selection rule (cv_select.py), fit and select (select.py: each job's grid chosen by the rule, the
best model of each head and feature set), and write (here: a bundle per head, best/ the best of
all, metrics.json).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from wav2genre_cache._io import atomic_write_json
from wav2genre_cache._version import __version__
from wav2genre_cache.errors import TrainError
from wav2genre_cache.evaluation.result_row import CalibratedTracks
from wav2genre_cache.feature_sets import ENCODER
from wav2genre_cache.heads.registry import ALL_HEADS, FCNN_SEARCH_SPACE, head_spec
from wav2genre_cache.stage_two.card import card_of
from wav2genre_cache.stage_two.cv_select import choose_rule
from wav2genre_cache.stage_two.data import TrainingData, load_training_data
from wav2genre_cache.stage_two.folds import check_group_by
from wav2genre_cache.stage_two.jobs_store import JobStore, run_settings
from wav2genre_cache.stage_two.options import TrainOptions
from wav2genre_cache.stage_two.plan import (
    feature_sets_for,
    plan_jobs,
    requested_feature_sets,
    requested_heads,
)
from wav2genre_cache.stage_two.scoring import head_scores, metrics_of
from wav2genre_cache.stage_two.select import Fitted, best_overall, select_best
from wav2genre_cache.store.bundles import BundleScoring, write_bundle
from wav2genre_cache.store.cache import EmbeddingCache

__all__ = ["TrainError", "TrainOptions", "train_heads"]


def train_heads(
    cache_path: str | Path, out_dir: str | Path, log: Callable[[str], None] = print, **options
) -> dict:
    """Train every head on every chosen layer of every feature set; write metrics.json and bundles.

    options are TrainOptions' fields. augmented: True trains on every view of the training
    tracks, False on the original views only, "both" does each (the augmentation ablation).
    Each head's best model per feature set is written to bundles/<head>[-<feature set>]/, and
    the best of all to best/ (an encoder model when there is one, since predict and serve embed
    audio with the backbone).
    """
    opts = TrainOptions(**options)
    names = requested_heads(opts.heads)
    # Before any training: a head asked for gets the feature set it needs, or the run stops here.
    # None asks for the default heads, none of them in particular (see feature_sets_for).
    cache = EmbeddingCache(cache_path)
    cache.verify()  # features changed since embed (a disk, a hand) are refused, not trained on
    layers_of = {n: s[1] for n, s in cache.feature_shapes.items()}
    sets = feature_sets_for(
        None if opts.heads is None else names,
        requested_feature_sets(opts.feature_sets),
        layers_of,
        log,
    )
    variants = [True, False] if opts.augmented == "both" else [bool(opts.augmented)]
    # Each job is kept in RUN/jobs as it finishes; a re-run fits only those not yet done.
    store = JobStore.open(Path(out_dir), run_settings(cache, names, sets, opts), log)
    fitted: list[Fitted] = []
    probes: dict[str, list[float]] = {}
    first, rule = None, None
    for fs in sets:
        for aug in variants:
            data = load_training_data(cache_path, fs, aug)
            check_group_by(data.cache.tracks, opts.group_by)  # before any fit, any rule
            if first is None:
                for note in data.notes:
                    log(note)
            first = first or data
            if aug and len(variants) == 2 and not data.has_augmented_views:
                log(f"{fs}: the cache has no augmented views; training once, on the original views")
                continue
            jobs, probe = plan_jobs(data, names, opts.layers, log)
            if probe is not None:
                probes[fs] = probe
            if rule is None:
                rule = choose_rule(data, opts.selection, opts.seed, group_by=opts.group_by)
                log(("warning: " if rule.name == "test" else "selection: ") + rule.reason)
            fitted += store.fit_or_load(data, jobs, rule, opts)
    metrics = {
        **_run_header(cache_path, first, sets, opts),
        "selected_on": rule.name,
        "selection": rule.as_json(),
        "layers": sorted({f.result.layer for f in fitted}),
        "probe_scores": probes,
        "counts": {
            s: int(len(np.unique(first.track[getattr(first, s)])))
            for s in ("train", "valid", "test")
        },
    }
    return write_run(Path(out_dir), fitted, select_best(fitted), metrics)


def _run_header(
    cache_path: str | Path, first: TrainingData, sets: list[str], opts: TrainOptions
) -> dict:
    """metrics.json's first fields: the cache and its data (as the first feature set read them),
    and the run's settings."""
    backbone = first.cache.attrs.get("backbone")
    return {
        "package_version": __version__,
        "cache": str(Path(cache_path).resolve()),
        "backbone": backbone,
        "untrained_backbone": str(backbone or "").startswith("random-"),
        "feature_sets": list(sets),
        "labels": first.labels,
        "multi_label": first.multi_label,
        "sources": first.sources,
        "duplicates": first.duplicates,
        "notes": list(first.notes),
        "grouping": first.grouping,
        "calibration": opts.calibration,
        "augmented_views": opts.augmented,
        "seed": opts.seed,
        "fcnn_search": (
            {"trials": opts.trials, "space": FCNN_SEARCH_SPACE} if opts.trials > 1 else None
        ),
    }


def write_run(out_dir: Path, fitted: list[Fitted], best: dict[str, Fitted], metrics: dict) -> dict:
    """Write a bundle per head and feature set, best/ (the best of all), and metrics.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # predict and serve embed audio with the backbone: an encoder model is best when there is one.
    # Chosen among all rows, so that cross-validation's one-standard-error rule sees every layer
    # of every head; its head's bundle is then that model.
    candidates = [f for f in fitted if f.result.feature_set == ENCODER] or fitted
    top = best_overall(sorted(candidates, key=lambda f: ALL_HEADS.index(f.result.head)))
    best = {**best, top.key: top}
    for key, f in best.items():
        _write_head_bundle(out_dir, f"bundles/{key}", f, metrics)
    top.result = overall = replace(top.result, best_overall=True)
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


def _write_head_bundle(out_dir: Path, bundle: str, f: Fitted, run: dict) -> None:
    """Write the bundle of the best model of a head and feature set, and mark its row so, with
    the test detail the figures draw (its features are re-read: the run does not keep them);
    run (metrics.json's header) tells its model card where the data came from."""
    r, data, test = f.result, f.data, f.data.test
    model = f.model  # read once: a stored job's model is loaded from its folder
    raw = head_scores(
        head_spec(r.head),
        model,
        data.features(r.layer)[test],
        data.y[test],
        data.track[test],
        len(data.labels),
        data.multi_label,
    )
    thresholds = None if r.thresholds is None else np.array(r.thresholds)
    track_metrics = metrics_of(raw.calibrated(f.calibrator), data.labels, thresholds, curves=True)
    tracks = CalibratedTracks.of(raw.track, raw.y_track, data.multi_label, f.calibrator)
    f.result = r = replace(
        r, best_of_head=True, bundle=bundle, test_detail=tracks.detail(track_metrics["track"])
    )
    write_bundle(
        out_dir / bundle,
        model,
        r.head,
        params=r.params,
        layer=r.layer,
        labels=data.labels,
        feature_set=data.feature_set,
        cache_attrs=data.cache.attrs,
        metrics={**r.bundle_metrics(), **_how_measured(data, r)},
        scoring=BundleScoring(data.multi_label, f.calibrator.as_json(), r.thresholds),
        card=card_of(data, r, run),
    )


def _how_measured(data: TrainingData, row) -> dict:
    """What a bundle's figures can be trusted for (serve says it): the artists behind its test
    tracks, the labels test cannot measure, and the rule that chose the model."""
    grouping = {k: v for k, v in (data.grouping or {}).items() if k != "notes"}
    return {"grouping": grouping or None, "selected_on": row.selected_on}
