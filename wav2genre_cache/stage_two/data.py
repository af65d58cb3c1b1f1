"""Stage two's input: one feature set of a cache, checked and arranged for training."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wav2genre_cache._io import comma_list
from wav2genre_cache.data.duplicates import find_duplicates
from wav2genre_cache.data.tracks import TAG_SEPARATOR
from wav2genre_cache.errors import TrainError
from wav2genre_cache.feature_sets import ENCODER, feature_set_name
from wav2genre_cache.store.cache import EmbeddingCache

# The layer of a head that reads every layer at once (in results, metrics.json and bundles).
EVERY_LAYER = -1


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
    augmented: bool  # the training rows include the augmented views of training tracks
    # Multi-label (tags): y is a {0,1} matrix [segments, tags] instead of label indices.
    multi_label: bool = False
    # Every track's dataset and its split after duplicates were kept to one side.
    track_source: np.ndarray | None = None
    track_split: np.ndarray | None = None
    duplicates: dict | None = None  # what find_duplicates found and moved
    notes: tuple[str, ...] = ()  # for the user: tags dropped, duplicates moved, groups
    grouping: dict | None = None  # what is known of artists, and the labels test cannot measure
    track_group: np.ndarray | None = None  # each cache track's artist, or its own id if unknown

    @property
    def sources(self) -> list[str]:
        """The datasets the tracks came from (one empty name for a cache from before sources)."""
        return sorted(set(self.track_source)) if self.track_source is not None else [""]

    @property
    def has_augmented_views(self) -> bool:
        """Whether the cache holds augmented views at all (else `augmented` asks nothing)."""
        return bool((self.view > 0).any())

    @property
    def views_note(self) -> str:
        """What the log says after a job of these rows: nothing, or that they leave out the
        augmented views."""
        return "" if self.augmented else " (original views only)"

    @property
    def selected_on(self) -> str:
        """The split hyper-parameters and layers are chosen on: valid, or test if there is none."""
        return "valid" if self.valid.any() else "test"

    @property
    def bag(self) -> np.ndarray:
        """Each segment's bag for the heads that predict tracks: one per (track, view), so an
        augmented copy of a track is a track of its own."""
        return self.track * 1000 + self.view

    def features(self, layer: int) -> np.ndarray:
        """Every segment's features at a layer, or at all of them flattened (EVERY_LAYER)."""
        return self.all_layers() if layer == EVERY_LAYER else self.layer(layer)

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
    tracks = cache.tracks.copy()
    duplicates, notes = find_duplicates(tracks)
    tracks["split"] = duplicates.pop("split")
    ok = tracks[tracks.status == "ok"]
    if ok.empty:
        raise TrainError(f"{cache_path}: no successfully embedded tracks")
    for split in ("train", "test"):
        if not (ok.split == split).any():
            raise TrainError(
                f"{cache_path}: no {split} tracks; re-embed with a split that has some (e.g. --split random)"
            )
    multi_label = bool(cache.config.get("multi_label", False))
    if multi_label:
        labels, track_y, dropped = _tag_matrix(cache_path, ok, tracks)
        notes += dropped
    else:
        labels, track_y = _label_indices(cache_path, ok, tracks)
    source = tracks.source.to_numpy().astype(str)
    if isinstance(cache.config.get("data"), str):
        # One dataset: one source, also where a run resumed from an earlier version's shards
        # left some tracks without the name.
        source[:] = max(source, key=len) if len(source) else ""
    grouping = artist_grouping(ok, labels, multi_label)
    notes += grouping.pop("notes")
    seg = cache.segments
    t = seg.track.to_numpy()
    split = tracks.split.to_numpy()[t]
    view = seg.view.to_numpy()
    return TrainingData(
        cache=cache,
        feature_set=feature_set,
        labels=labels,
        y=track_y[t],
        track=t,
        view=view,
        train=(split == "train") & ((view == 0) | augmented),
        valid=(split == "valid") & (view == 0),
        test=(split == "test") & (view == 0),
        n_layers=cache.feature_shapes[feature_set][1],
        augmented=augmented,
        multi_label=multi_label,
        track_source=source,
        track_split=tracks.split.to_numpy().astype(str),
        duplicates=duplicates,
        notes=tuple(notes),
        grouping=grouping,
        track_group=np.where(
            tracks.artist.to_numpy() != "",
            tracks.artist.to_numpy().astype(str),
            [f"\0track{i}" for i in range(len(tracks))],
        ),
    )


def artist_grouping(ok: pd.DataFrame, labels: list[str], multi_label: bool) -> dict:
    """How many artists the tracks have, which labels have no test track and why, and notes.

    A label whose artists are all in training cannot be measured on music the model has not
    heard: its figure would measure the artist. Without artists, the split may have put one
    artist on both sides, which inflates every figure.
    """
    known = ok[ok.artist != ""]
    tags = ok.label.str.split(TAG_SEPARATOR) if multi_label else ok.label.map(lambda x: [x])
    in_test = {tag for row, s in zip(tags, ok.split, strict=True) if s == "test" for tag in row}
    unmeasured = {}
    for label in labels:
        if label in in_test:
            continue
        artists = {a for row, a in zip(tags, ok.artist, strict=True) if label in row and a}
        unmeasured[label] = (
            (f"one artist: {min(artists)}" if len(artists) == 1 else f"{len(artists)} artists")
            if artists
            else ""
        )
    notes = []
    if unmeasured:
        notes.append(
            "Not measured on test (no test track): "
            + ", ".join(f"{k} ({v})" if v else k for k, v in unmeasured.items())
            + ": their tracks only train the model, and no figure here measures them"
            + (
                " (a split that keeps each artist on one side keeps a label of one or two "
                "artists in training)"
                if len(known)
                else ""
            )
        )
    test_artists = set(known.artist[known.split == "test"])
    heard = sorted(test_artists & set(known.artist[known.split != "test"]))
    if heard:
        notes.append(
            f"{len(heard)} of the {len(test_artists)} test artists also have tracks in training "
            f"or validation ({', '.join(heard[:3])}{', ...' if len(heard) > 3 else ''}): the "
            "split was not made by artist (a given split), and test figures are inflated by "
            "artists the model has heard"
        )
    if known.empty:
        notes.append(
            "No artist is known for these tracks: the split may put one artist on both sides, "
            "which inflates every figure and narrows every interval (give a CSV an artist "
            "column; for GTZAN, put Sturm's GTZANindex.txt beside the data)"
        )
    return {
        "by": "artist" if len(known) else None,
        "artists": int(known.artist.nunique()),
        "test_artists_heard": len(heard),  # test artists with tracks in train or valid too
        "tracks_without_artist": int(len(ok) - len(known)),
        "unmeasured_labels": unmeasured,
        "notes": notes,
    }


def _label_indices(cache_path, ok, tracks) -> tuple[list[str], np.ndarray]:
    """Single-label: the labels, and each track's label index (-1 for tracks not trained on)."""
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
    lab_index = {lab: i for i, lab in enumerate(labels)}
    return labels, np.array([lab_index.get(lab, -1) for lab in tracks.label.to_numpy()])


def _tag_matrix(cache_path, ok, tracks) -> tuple[list[str], np.ndarray, list[str]]:
    """Multi-label: the tags kept, each track's {0,1} row, and notes on the tags dropped.

    A tag needs two tracks and one of them in train to be learnt and scored; rarer tags are
    dropped (and said), as tagging benchmarks keep the tags with enough examples.
    """
    tags_of_ok = [set(filter(None, label.split(TAG_SEPARATOR))) for label in ok.label]
    in_train = [tags for tags, s in zip(tags_of_ok, ok.split, strict=True) if s == "train"]
    count = Counter(tag for tags in tags_of_ok for tag in tags)
    trained = set().union(*in_train) if in_train else set()
    labels = sorted(tag for tag, n in count.items() if n >= 2 and tag in trained)
    dropped = sorted(set(count) - set(labels))
    if len(labels) < 2:
        raise TrainError(
            f"{cache_path}: {len(labels)} tag(s) have two tracks and one in train; a tagger "
            "needs at least two"
        )
    index = {tag: i for i, tag in enumerate(labels)}
    y = np.zeros((len(tracks), len(labels)), dtype=np.int64)
    for row, label in enumerate(tracks.label.to_numpy()):
        for tag in label.split(TAG_SEPARATOR):
            if tag in index:
                y[row, index[tag]] = 1
    notes = (
        [
            f"{len(dropped)} tag(s) dropped, with fewer than two tracks or none in train: "
            + ", ".join(dropped[:10])
            + (" ..." if len(dropped) > 10 else "")
        ]
        if dropped
        else []
    )
    return labels, y, notes


def parse_layers(spec: str, n_layers: int) -> list[int] | str:
    """'all', 'best', or comma-separated layer numbers (negative counts from the top)."""
    if spec in ("all", "best"):
        return spec
    try:
        layers = [int(x) for x in comma_list(spec)]
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
    onehot = data.y if data.multi_label else np.eye(len(data.labels))[data.y]
    Y = onehot[data.train].astype(np.float32) * 2 - 1
    scores = []
    for i in range(data.n_layers):
        X = data.layer(i)
        mean, std = X[data.train].mean(0), X[data.train].std(0) + 1e-6
        A = (X[data.train] - mean) / std
        B = (X[target] - mean) / std
        out = _ridge_dual(A, Y, B, alpha) if A.shape[1] > len(A) else _ridge(A, Y, B, alpha)
        if data.multi_label:  # tags: the mean ROC-AUC of the tags scored
            scores.append(_mean_auc(data.y[target], out))
        else:
            scores.append(float((np.argmax(out, axis=1) == data.y[target]).mean()))
    return int(np.argmax(scores)), scores


def _ridge(A: np.ndarray, Y: np.ndarray, B: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge fitted on (A, Y), its outputs on B: a [dim x dim] system, for narrow sets."""
    A1 = np.hstack([A, np.ones((len(A), 1), np.float32)])
    reg = alpha * np.eye(A1.shape[1], dtype=np.float32)
    reg[-1, -1] = 0  # no penalty on the intercept
    W = np.linalg.solve(A1.T @ A1 + reg, A1.T @ Y)
    return B @ W[:-1] + W[-1]


def _ridge_dual(A: np.ndarray, Y: np.ndarray, B: np.ndarray, alpha: float) -> np.ndarray:
    """The same ridge as _ridge solved over rows, for sets wider than their rows: the primal
    system of a log-mel set (40,065 wide) took 6 GB per copy and 22 GB in all (issue 25).

    A's columns are centred (standardised on these rows), so the intercept is Y's mean and
    (A'A + aI)^-1 A' = A' (AA' + aI)^-1 gives the weights from a [rows x rows] system.
    """
    offset = Y.mean(axis=0)
    gram = A @ A.T + alpha * np.eye(len(A), dtype=np.float32)
    return (B @ A.T) @ np.linalg.solve(gram, Y - offset) + offset


def _mean_auc(Y: np.ndarray, scores: np.ndarray) -> float:
    """Mean ROC-AUC over the tags that have positives and negatives among the rows."""
    from wav2genre_cache.evaluation.metrics import _auc

    aucs = [
        _auc(Y[:, k] == 1, scores[:, k]) for k in range(Y.shape[1]) if 0 < Y[:, k].sum() < len(Y)
    ]
    return float(np.mean(aucs)) if aucs else 0.0
