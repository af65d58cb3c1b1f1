"""Stage two: train and compare heads on cached features; select on validation, report on test."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .bundles import write_bundle
from .cache import EmbeddingCache
from .errors import Wav2GenreError
from .feature_sets import ENCODER, HANDCRAFTED, LOGMEL, feature_set_name
from .heads import (
    ALL_HEADS,
    FCNN_SEARCH_SPACE,
    HEADS,
    HeadSpec,
    Inputs,
    Rows,
    head_spec,
    heads_reading,
)
from .jsonable import jsonable
from .metrics import aggregate_tracks, classification_metrics


class TrainError(Wav2GenreError):
    """A cache or request that training cannot use; the message says why."""


@dataclass
class TrainingData:
    """One feature set of a cache, arranged for training: segment rows with labels and splits."""

    cache: EmbeddingCache
    feature_set: str
    labels: list[str]
    y: np.ndarray  # label index per segment
    track: np.ndarray  # track row per segment
    view: np.ndarray  # 0 = original audio, 1..K = augmented copies
    train: np.ndarray  # boolean masks over segments
    valid: np.ndarray
    test: np.ndarray
    n_layers: int

    def layer(self, i: int) -> np.ndarray:
        """Every segment's features at one layer, [segments, dim] float32."""
        return self.cache.features(self.feature_set, i)

    def all_layers(self) -> np.ndarray:
        """Every segment's features at every layer, flattened: [segments, layers * dim]."""
        features = self.cache.features(self.feature_set)
        return features.reshape(len(features), -1)


def load_training_data(
    cache_path: str | Path, feature_set: str = ENCODER, augmented: bool = True
) -> TrainingData:
    """Read a cache and check it can be trained on, with clear errors when it cannot."""
    cache = EmbeddingCache(cache_path)
    feature_set = feature_set_name(feature_set)
    if feature_set not in cache.feature_names:
        raise TrainError(
            f"{cache_path}: no feature set {feature_set!r}; it has {cache.feature_names}"
        )
    tracks = cache.tracks
    ok = tracks[tracks.status == "ok"]
    if ok.empty:
        raise TrainError(f"{cache_path}: no successfully embedded tracks")
    for split in ("train", "test"):
        if not (ok.split == split).any():
            raise TrainError(
                f"{cache_path}: no {split} tracks; re-embed with a split that has some (e.g. --split random)"
            )
    counts = ok.label.value_counts()
    few = sorted(counts[counts < 2].index)
    if few:
        raise TrainError(
            f"{cache_path}: label(s) {few} have fewer than two tracks; add tracks or remove the label"
        )
    untrained = sorted(set(ok.label) - set(ok[ok.split == "train"].label))
    if untrained:
        raise TrainError(
            f"{cache_path}: label(s) {untrained} have no training tracks under this split"
        )
    labels = sorted(ok.label.unique())
    seg = cache.segments
    t = seg.track.to_numpy()
    split = tracks.split.to_numpy()[t]
    view = seg.view.to_numpy()
    lab_index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([lab_index.get(lab, -1) for lab in tracks.label.to_numpy()[t]])
    return TrainingData(
        cache=cache,
        feature_set=feature_set,
        labels=labels,
        y=y,
        track=t,
        view=view,
        train=(split == "train") & ((view == 0) | augmented),
        valid=(split == "valid") & (view == 0),
        test=(split == "test") & (view == 0),
        n_layers=cache.feature_shapes[feature_set][1],
    )


def parse_layers(spec: str, n_layers: int) -> list[int] | str:
    """'all', 'best', or comma-separated layer numbers (negative counts from the top)."""
    if spec in ("all", "best"):
        return spec
    try:
        layers = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise TrainError(f"--layers {spec!r}: use all, best, or numbers like 0,6,12") from None
    bad = [i for i in layers if not -n_layers <= i < n_layers]
    if bad or not layers:
        raise TrainError(
            f"--layers {spec!r}: layer(s) {bad} out of range; this feature set has layers 0..{n_layers - 1}"
        )
    return sorted({i % n_layers for i in layers})


def probe_best_layer(data: TrainingData, alpha: float = 10.0) -> tuple[int, list[float]]:
    """Pick the layer a fast linear probe (ridge on standardised features) does best on in validation.

    The ridge is solved in closed form in float32 (one 768 x 768 system per layer), which keeps
    the probe of 13 layers well under a second on a GTZAN-sized cache.
    """
    target = data.valid if data.valid.any() else data.train
    Y = np.eye(len(data.labels), dtype=np.float32)[data.y[data.train]] * 2 - 1
    scores = []
    for i in range(data.n_layers):
        X = data.layer(i)
        mean, std = X[data.train].mean(0), X[data.train].std(0) + 1e-6
        A = (X[data.train] - mean) / std
        A1 = np.hstack([A, np.ones((len(A), 1), np.float32)])
        reg = alpha * np.eye(A1.shape[1], dtype=np.float32)
        reg[-1, -1] = 0  # no penalty on the intercept
        W = np.linalg.solve(A1.T @ A1 + reg, A1.T @ Y)
        B = (X[target] - mean) / std
        pred = np.argmax(B @ W[:-1] + W[-1], axis=1)
        scores.append(float((pred == data.y[target]).mean()))
    return int(np.argmax(scores)), scores


def evaluate(
    spec: HeadSpec,
    head,
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


def train_heads(
    cache_path: str | Path,
    out_dir: str | Path,
    heads: list[str] | tuple[str, ...] | None = None,
    layers: str = "all",
    feature_sets: str | list[str] | tuple[str, ...] = (ENCODER,),
    seed: int = 0,
    augmented: bool | str = True,
    trials: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Train every head on every chosen layer of every feature set; write metrics.json and bundles.

    augmented: True trains on every view of the training tracks, False on the original views
    only, "both" does each (the augmentation ablation). Each head's best model per feature set
    is written to bundles/<head>[-<feature set>]/, and the best of all to best/ (an encoder
    model when there is one, since predict and serve embed audio with the backbone).
    """
    # None: the default heads, none asked for in particular (see feature_sets_for).
    asked, heads = heads is not None, list(HEADS if heads is None else heads)
    unknown = [h for h in heads if h not in ALL_HEADS]
    if unknown or not heads:
        raise TrainError(f"unknown head(s) {unknown}; available: {', '.join(ALL_HEADS)}")
    if isinstance(feature_sets, str):
        feature_sets = [f.strip() for f in feature_sets.split(",") if f.strip()]
    feature_sets = [feature_set_name(f) for f in feature_sets]
    # Before any training: a head asked for gets the feature set it needs, or the run stops here.
    layers_of = {n: s[1] for n, s in EmbeddingCache(cache_path).feature_shapes.items()}
    feature_sets = feature_sets_for(heads if asked else None, feature_sets, layers_of, log)
    variants = [True, False] if augmented == "both" else [bool(augmented)]
    rows, best, probes, first = [], {}, {}, None
    for fs in feature_sets:
        for aug in variants:
            data = load_training_data(cache_path, fs, aug)
            first = first or data
            has_views = bool((data.cache.segments.view.to_numpy() > 0).any())
            if aug and len(variants) == 2 and not has_views:
                log(f"{fs}: the cache has no augmented views; training once, on the original views")
                continue
            chosen = parse_layers(layers, data.n_layers)
            if chosen == "all":
                chosen = list(range(data.n_layers))
            elif chosen == "best":
                best_layer, probes[fs] = probe_best_layer(data)
                log(
                    f"{fs} layer probe (validation accuracy per layer): "
                    f"{', '.join(f'{x:.2f}' for x in probes[fs])} -> layer {best_layer}"
                )
                chosen = [best_layer]
            select_on = "valid" if data.valid.any() else "test"
            if select_on == "test":
                log(
                    "warning: no validation tracks; hyper-parameters and layers are selected on test (optimistic)"
                )
            # Per-layer heads on each chosen layer; then heads that weigh all layers at once
            # (layer -1 in the results), once per feature set.
            jobs = [(layer, h) for layer in chosen for h in heads_for(fs, heads)]
            if fs != LOGMEL and data.n_layers > 1:
                jobs += [(-1, h) for h in heads if head_spec(h).inputs is Inputs.ALL_LAYERS]
            X, X_layer = None, None
            for layer, name in jobs:
                if X_layer != layer:
                    X, X_layer = (data.all_layers() if layer == -1 else data.layer(layer)), layer
                row, model = _fit_and_select(name, X, data, seed, select_on, trials)
                # augmented is None where the cache has no augmented views: no such question.
                row.update(
                    head=name,
                    layer=layer,
                    feature_set=fs,
                    augmented=aug if has_views else None,
                    selected_on=select_on,
                )
                if head_spec(name).inputs is Inputs.ALL_LAYERS:
                    row["layer_weights"] = [round(float(w), 5) for w in model.layer_weights_]
                rows.append(row)
                where = "all layers, learned weights" if layer == -1 else f"layer {layer:>2}"
                log(
                    f"{name:>6} {fs} {where}{'' if aug else ' (original views only)'}: "
                    f"test track accuracy {row['test']['track']['accuracy']:.3f}, "
                    f"macro-F1 {row['test']['track']['macro_f1']:.3f} (fit {row['fit_seconds']:.1f} s)"
                )
                key = name if fs == ENCODER else f"{name}-{fs}"
                score = (row["selection_score"], aug, -layer)
                if key not in best or score > best[key][0]:
                    best[key] = (score, row, model, X, data)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for key, (_, row, model, X, data) in best.items():
        row["best_of_head"] = True
        row["bundle"] = f"bundles/{key}"
        # The best model of each head keeps its ROC curves and track probabilities for the figures.
        row["test_detail"] = evaluate(
            head_spec(row["head"]),
            model,
            X[data.test],
            data.y[data.test],
            data.track[data.test],
            data.labels,
            curves=True,
        )["track"]
        write_bundle(
            out_dir / "bundles" / key,
            model,
            row["head"],
            params=row["params"],
            layer=row["layer"],
            labels=data.labels,
            feature_set=data.feature_set,
            cache_attrs=data.cache.attrs,
            metrics=bundle_metrics(row),
        )
    candidates = [b for b in best.values() if b[1]["feature_set"] == ENCODER] or list(best.values())
    overall = max(candidates, key=lambda b: (b[0], -ALL_HEADS.index(b[1]["head"])))[1]
    overall["best_overall"] = True
    if (out_dir / "best").exists():
        shutil.rmtree(out_dir / "best")
    shutil.copytree(out_dir / overall["bundle"], out_dir / "best")

    cache = first.cache
    metrics = {
        "package_version": __version__,
        "cache": str(Path(cache_path).resolve()),
        "backbone": cache.attrs.get("backbone"),
        "untrained_backbone": str(cache.attrs.get("backbone", "")).startswith("random-"),
        "feature_sets": list(feature_sets),
        "labels": first.labels,
        "selected_on": "valid" if first.valid.any() else "test",
        "augmented_views": augmented,
        "seed": seed,
        "fcnn_search": {"trials": trials, "space": FCNN_SEARCH_SPACE} if trials > 1 else None,
        "layers": sorted({r["layer"] for r in rows}),
        "probe_scores": probes,
        "counts": {
            s: int(len(np.unique(first.track[getattr(first, s)])))
            for s in ("train", "valid", "test")
        },
        "results": rows,
        "best": {
            "head": overall["head"],
            "layer": overall["layer"],
            "feature_set": overall["feature_set"],
            "bundle": overall["bundle"],
        },
    }
    (out_dir / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=1))
    return metrics


def bundle_metrics(row: dict) -> dict:
    """The scores a bundle carries (serve shows them): test track and segment, and validation."""
    return {
        "test_track_accuracy": row["test"]["track"]["accuracy"],
        "test_track_macro_f1": row["test"]["track"]["macro_f1"],
        "test_track_macro_auc": row["test"]["track"]["macro_auc"],
        "test_segment_accuracy": row["test"]["segment"]["accuracy"],
        "valid": row["valid"],
    }


def heads_for(feature_set: str, heads) -> list[str]:
    """The per-layer heads of `heads` that train on a feature set: log-mel images or vectors.

    A logmel feature set that none of `heads` trains on gets all the spectrogram heads (what
    `run --features ...,logmel` does with the default heads); feature_sets_for has made sure
    that every head asked for has a feature set to train on.
    """
    spectrogram = heads_reading(Inputs.SPECTROGRAM)
    if feature_set == LOGMEL:
        return [h for h in heads if h in spectrogram] or list(spectrogram)
    per_segment = (Inputs.VECTOR, Inputs.SEGMENTS)
    return [h for h in heads if head_spec(h).inputs in per_segment]


VECTOR_FEATURE_SETS = (ENCODER, HANDCRAFTED)  # in order of preference


def feature_sets_for(
    heads: list[str] | None,
    feature_sets,
    layers_of: dict[str, int],
    log: Callable[[str], None] = print,
) -> list[str]:
    """The feature sets to train on: those asked for, plus those the heads asked for need.

    cnn, lstm and cnn-lstm train on logmel; the other heads on a vector set (encoder, else
    handcrafted), fcnn-weighted on one of several layers. A head whose feature set the run
    lacks trains on the cache's (`layers_of`: the cache's feature sets and their layer counts),
    and if the cache lacks it too, TrainError names the feature set to embed: a head asked for
    is never dropped without a word. A feature set that none of the heads trains on is left
    out, with a word. `heads` None (the default heads) asks for no head in particular.
    """
    plan = list(dict.fromkeys(feature_sets))
    if not plan:
        raise TrainError("no feature set to train on; name one or more, e.g. encoder")
    asked = [] if heads is None else list(dict.fromkeys(heads))
    held = sorted(layers_of)

    def fits(head: str, fs: str) -> bool:
        inputs = head_spec(head).inputs
        if inputs is Inputs.SPECTROGRAM:
            return fs == LOGMEL
        # A set the cache lacks passes here; load_training_data then says that it is missing.
        several = inputs is not Inputs.ALL_LAYERS or layers_of.get(fs, 2) > 1
        return fs in VECTOR_FEATURE_SETS and several

    for head in asked:
        if any(fits(head, fs) for fs in plan):
            continue
        found = [fs for fs in (LOGMEL, *VECTOR_FEATURE_SETS) if fs in held and fits(head, fs)]
        if not found:
            inputs = head_spec(head).inputs
            if inputs is Inputs.SPECTROGRAM:
                need, add = "the logmel feature set", LOGMEL
            elif inputs is Inputs.ALL_LAYERS:
                need, add = "the layers of the encoder feature set", ENCODER
            else:
                need, add = "a vector feature set (encoder or handcrafted)", ENCODER
            embed_with = ",".join(dict.fromkeys([*held, add]))
            raise TrainError(
                f"head {head} trains on {need}, which this cache does not hold; "
                f"re-run embed with --features {embed_with}"
            )
        log(f"head {head} trains on {found[0]}, which the cache holds: training on {found[0]} too")
        plan.append(found[0])

    def trains_on(fs: str) -> bool:
        # logmel always has heads (heads_for), and HEADS all train on vectors; a set of another
        # name stays for load_training_data to refuse.
        return not asked or fs not in VECTOR_FEATURE_SETS or any(fits(h, fs) for h in asked)

    for fs in [fs for fs in plan if not trains_on(fs)]:
        log(f"{fs}: none of the heads asked for ({', '.join(asked)}) trains on it; left out")
        plan.remove(fs)
    return plan


def _fit_and_select(
    name: str, X: np.ndarray, data: TrainingData, seed: int, select_on: str, trials: int = 0
):
    """Fit each grid point (or search trial) on train, keep the best on validation track accuracy."""
    spec = head_spec(name)
    sel = getattr(data, select_on)
    best = None
    grid = spec.search(trials, seed) if spec.search and trials > 1 else spec.grid
    if spec.inputs is Inputs.ALL_LAYERS:
        grid = [{**p, "n_layers": data.n_layers} for p in grid]
    # One bag per (track, view) for the heads that predict tracks: an augmented copy is its own.
    bag = data.track * 1000 + data.view
    train = Rows(X[data.train], data.y[data.train], bag[data.train])
    valid = Rows(X[data.valid], data.y[data.valid], bag[data.valid]) if data.valid.any() else None
    tried = []
    for params in grid:
        head = spec.make(seed, **params)
        start = time.perf_counter()
        spec.fit(head, train, valid)
        fit_seconds = time.perf_counter() - start
        scores = evaluate(spec, head, X[sel], data.y[sel], data.track[sel], data.labels)["track"]
        key = (scores["accuracy"], scores["macro_f1"])
        tried.append(
            {
                "params": jsonable(params),
                "valid_accuracy": scores["accuracy"],
                "valid_macro_f1": scores["macro_f1"],
                "fit_seconds": fit_seconds,
            }
        )
        if best is None or key > best[0]:
            best = (key, head, params, fit_seconds, scores)
    (acc, f1), head, params, fit_seconds, valid = best
    start = time.perf_counter()
    test = evaluate(spec, head, X[data.test], data.y[data.test], data.track[data.test], data.labels)
    predict_seconds = time.perf_counter() - start
    valid = (
        evaluate(
            spec, head, X[data.valid], data.y[data.valid], data.track[data.valid], data.labels
        )["track"]
        if data.valid.any()
        else None
    )
    row = {
        "params": jsonable(params),
        "trials": tried if len(tried) > 1 else None,
        "selection_score": acc + 1e-3 * f1,
        "valid": {"accuracy": valid["accuracy"], "macro_f1": valid["macro_f1"]} if valid else None,
        "test": test,
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
    }
    return row, head


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

    Folds are by track (a track's segments never straddle train and test) and use original
    views only; track predictions are the mean of segment probabilities. Returns per head the
    mean and standard deviation of track accuracy and macro-F1 over the folds x repeats.
    """
    from sklearn.model_selection import RepeatedStratifiedKFold

    unknown = [h for h in heads if h not in ALL_HEADS]
    if unknown:
        raise TrainError(f"unknown head(s) {unknown}; available: {', '.join(ALL_HEADS)}")
    cache = EmbeddingCache(cache_path)
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
    scores: dict[str, list[tuple[float, float]]] = {h: [] for h in heads}
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    for train_idx, test_idx in splitter.split(ok, y_track):
        train_rows = np.isin(seg_track, ok[train_idx])
        test_rows = np.isin(seg_track, ok[test_idx])
        for name in heads:
            spec = head_spec(name)
            train = Rows(X[train_rows], y_seg[train_rows], seg_track[train_rows])
            head = spec.fit(spec.make(seed), train)
            test = (X[test_rows], y_seg[test_rows], seg_track[test_rows])
            m = evaluate(spec, head, *test, labels)["track"]
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
