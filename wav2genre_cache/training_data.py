"""Stage two's input: one feature set of a cache, checked and arranged for training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import EmbeddingCache
from .errors import Wav2GenreError
from .feature_sets import ENCODER, feature_set_name

# The layer of a head that reads every layer at once (in results, metrics.json and bundles).
EVERY_LAYER = -1


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
    augmented: bool  # the training rows include the augmented views of training tracks

    @property
    def has_augmented_views(self) -> bool:
        """Whether the cache holds augmented views at all (else `augmented` asks nothing)."""
        return bool((self.view > 0).any())

    @property
    def selected_on(self) -> str:
        """The split hyper-parameters and layers are chosen on: valid, or test if there is none."""
        return "valid" if self.valid.any() else "test"

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
        augmented=augmented,
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
