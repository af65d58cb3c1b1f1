"""Every classifier head, registered once: what it is made from, what it reads, how it is saved.

A head is a scikit-learn estimator. Its registry entry (HeadSpec) says everything the rest of
the package asks about it: the factory that makes it, the hyper-parameter grid tried on
validation, what one row of its input is (Inputs), whether it stops early on a validation set,
and the file format it is saved in (heads.formats; never pickle). Training, bundles and predict ask the
registry and never branch on a head's name; adding a head is one entry here.

Every head is also multi-label (mood/theme tags): fitted on Rows whose y is a 2-D {0, 1}
indicator matrix [rows, tags], it has `multi_label_ = True`, `classes_ = arange(tags)`, and
predict_proba gives each tag's independent probability (torch heads: sigmoid outputs trained
with binary cross-entropy; the others: one-vs-rest or their library's native multi-label).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.preprocessing import StandardScaler

from wav2genre_cache.errors import HeadError
from wav2genre_cache.heads.estimators import (
    ForestHead,
    LogisticRegressionHead,
    PipelineHead,
    SVMHead,
    XGBHead,
)
from wav2genre_cache.heads.formats import SKOPS, TORCH, XGBOOST, HeadFormat
from wav2genre_cache.heads.networks import FCNNClassifier

# The torch heads live in their own modules; this module is their public home too.
from wav2genre_cache.heads.spectrogram import SPECTROGRAM_HEADS, SpectrogramClassifier
from wav2genre_cache.heads.tracks import AttentionPoolingClassifier


class Inputs(Enum):
    """What one row of a head's input is."""

    VECTOR = "one layer's embedding of a segment"
    ALL_LAYERS = "every layer of a segment, flattened"
    SPECTROGRAM = "a segment's log-mel image, flattened"
    SEGMENTS = "one layer's embedding of a segment, grouped by track"


@dataclass(frozen=True)
class Rows:
    """Rows of one split for a head: features, labels, and the track (bag) of each row.

    y is a label index per row, or for multi-label a {0, 1} indicator matrix [rows, tags].
    """

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None = None


@dataclass(frozen=True)
class HeadSpec:
    """A head's registry entry."""

    name: str
    factory: Callable[..., BaseEstimator]  # factory(seed, **params): a fresh, unfitted head
    grid: tuple[dict, ...]  # hyper-parameters tried, the best kept on validation
    inputs: Inputs
    format: HeadFormat
    stops_early: bool = False  # fit takes X_val, y_val (early stopping on validation)
    default: bool = False  # trained when no heads are named
    # Further hyper-parameter draws for --trials (random search on validation): search(n, seed).
    search: Callable[[int, int], list[dict]] | None = None
    # How much it can fit, for the one-standard-error rule of cross-validated selection: among
    # models that score alike, the lowest is kept (a linear probe 0 ... networks over many
    # inputs 4).
    complexity: int = 3

    @property
    def predicts_tracks(self) -> bool:
        """Whether it answers per track: fit and predict_proba take each row's track (groups)."""
        return self.inputs is Inputs.SEGMENTS

    def make(self, seed: int = 0, **params) -> BaseEstimator:
        """A fresh, unfitted head; lists in params (read from JSON) are the tuples they were."""
        return self.factory(
            seed, **{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        )

    def fit(self, head: BaseEstimator, train: Rows, valid: Rows | None = None) -> BaseEstimator:
        """The one way every head is fitted: what it takes of train and valid, it gets."""
        kwargs = {}
        if self.predicts_tracks:
            kwargs["groups"] = train.groups
        if self.stops_early and valid is not None:
            kwargs.update(X_val=valid.X, y_val=valid.y)
            if self.predicts_tracks:
                kwargs["groups_val"] = valid.groups
        return head.fit(train.X, train.y, **kwargs)

    def predict_proba(self, head: BaseEstimator, X: np.ndarray, groups=None) -> np.ndarray:
        """Class (or each tag's) probabilities per row; a track head gives each row its track's."""
        if self.predicts_tracks:
            return head.predict_proba(X, groups=groups)
        return head.predict_proba(X)


# ---- the registry -------------------------------------------------------------------------


def _random_forest(seed: int = 0, **params) -> ForestHead:
    # Half-size bootstraps: twice as fast on GTZAN-sized caches, same accuracy there.
    return ForestHead(n_estimators=50, max_samples=0.5, n_jobs=-1, random_state=seed, **params)


def _logistic_regression(seed: int = 0, **params) -> BaseEstimator:
    step = "logisticregression"
    params = {k.removeprefix(f"{step}__"): v for k, v in params.items()}
    # Named as make_pipeline named them, so `logisticregression__C` still reaches C.
    return PipelineHead(
        [
            ("standardscaler", StandardScaler()),
            (step, LogisticRegressionHead(max_iter=300, **params)),
        ]
    )


def _seeded(cls: type[BaseEstimator]) -> Callable[..., BaseEstimator]:
    """A factory of cls whose seed is its random_state (a random_state in params wins)."""

    def factory(seed: int = 0, **params) -> BaseEstimator:
        return cls(**{"random_state": seed, **params})

    return factory


def _layer_weighted(seed: int = 0, **params) -> FCNNClassifier:
    # n_layers comes from the data (stage two's grid). 2e-3: the plain FCNN's 5e-3 was measured
    # on one layer only (benchmarks/README.md), so the weighted one keeps the rate it had.
    return FCNNClassifier(**{"learning_rate": 2e-3, "random_state": seed, **params})


def _spectrogram(kind: str) -> Callable[..., SpectrogramClassifier]:
    def factory(seed: int = 0, **params) -> SpectrogramClassifier:
        return SpectrogramClassifier(**{"kind": kind, "random_state": seed, **params})

    return factory


# The FCNN's search space for --trials (random search on the validation split).
FCNN_SEARCH_SPACE = {
    "depth": [1, 2, 3],
    "width": [128, 256, 512],
    "dropout": [0.1, 0.3, 0.5],
    "batch_size": [128, 256, 512],
    "learning_rate": [1e-4, 3e-4, 1e-3, 2e-3, 5e-3],
}


def fcnn_trials(n: int, seed: int) -> list[dict]:
    """n seeded random draws from FCNN_SEARCH_SPACE, the first being the defaults."""
    rng = np.random.default_rng(seed)
    trials = [{}]
    while len(trials) < n:
        pick = {k: v[int(rng.integers(len(v)))] for k, v in FCNN_SEARCH_SPACE.items()}
        width, depth = pick.pop("width"), pick.pop("depth")
        # Funnel-shaped networks: each layer half as wide as the one before.
        pick["hidden_layers"] = tuple(max(32, width // 2**i) for i in range(depth))
        if pick not in trials:
            trials.append(pick)
    return trials


def _by_name(*specs: HeadSpec) -> dict[str, HeadSpec]:
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"head(s) {twice} registered more than once")
    return {s.name: s for s in specs}


# A few hyper-parameter values per head, chosen on the validation split. Small on purpose:
# every head on every layer of a GTZAN-sized cache fits in about a minute on two cores
# (benchmarks/train_heads.py). The torch heads' early stopping and schedulers already adapt
# them to the data. In this order the heads are listed, and ties are broken.
REGISTRY: dict[str, HeadSpec] = _by_name(
    HeadSpec(
        "fcnn",
        _seeded(FCNNClassifier),
        ({},),
        Inputs.VECTOR,
        TORCH,
        stops_early=True,
        default=True,
        search=fcnn_trials,
    ),
    HeadSpec(
        "svm", _seeded(SVMHead), ({"C": 10.0},), Inputs.VECTOR, SKOPS, default=True, complexity=1
    ),
    HeadSpec(
        "rf",
        _random_forest,
        ({"min_samples_leaf": 1},),
        Inputs.VECTOR,
        SKOPS,
        default=True,
        complexity=2,
    ),
    HeadSpec(
        "xgb",
        _seeded(XGBHead),
        ({"max_depth": 3},),
        Inputs.VECTOR,
        XGBOOST,
        default=True,
        complexity=2,
    ),
    HeadSpec(
        "logreg",
        _logistic_regression,
        ({"C": 0.1}, {"C": 1.0}),
        Inputs.VECTOR,
        SKOPS,
        default=True,
        complexity=0,
    ),
    *(
        HeadSpec(
            kind,
            _spectrogram(kind),
            ({},),
            Inputs.SPECTROGRAM,
            TORCH,
            stops_early=True,
            default=True,
            complexity=4,
        )
        for kind in SPECTROGRAM_HEADS
    ),
    HeadSpec(
        "fcnn-weighted",
        _layer_weighted,
        ({},),
        Inputs.ALL_LAYERS,
        TORCH,
        stops_early=True,
        complexity=4,
    ),
    HeadSpec(
        "attention",
        _seeded(AttentionPoolingClassifier),
        ({},),
        Inputs.SEGMENTS,
        TORCH,
        stops_early=True,
        complexity=4,
    ),
)

ALL_HEADS = tuple(REGISTRY)
# The heads trained on embedding vectors when none are named (the spectrogram heads, also
# trained by default, train on log-mel images).
HEADS = tuple(n for n, s in REGISTRY.items() if s.default and s.inputs is Inputs.VECTOR)


def head_spec(name: str) -> HeadSpec:
    """The registry entry of a head, or HeadError naming the heads there are."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise HeadError(f"unknown head {name!r}; available: {', '.join(ALL_HEADS)}") from None


def heads_reading(inputs: Inputs) -> tuple[str, ...]:
    """The heads whose rows are of this kind, in registry order."""
    return tuple(n for n, s in REGISTRY.items() if s.inputs is inputs)


def make_head(name: str, seed: int = 0, **params) -> BaseEstimator:
    """A fresh, unfitted head by name (see ALL_HEADS)."""
    return head_spec(name).make(seed, **params)


def head_files(name: str) -> tuple[str, ...]:
    """The files a head of this name consists of: save_head writes them, load_head reads them all."""
    return head_spec(name).format.files


def save_head(head: BaseEstimator, name: str, directory: Path) -> list[str]:
    """Write a fitted head in a safe format; return the names of every file written, main first.

    The main file is the one to pass to load_head; the caller checksums them all
    (bundles.write_bundle), since load_head trusts each of them.
    """
    return head_spec(name).format.write(head, directory)


def load_head(name: str, path: Path) -> BaseEstimator:
    """Load a head saved by save_head; foreign content raises HeadError, nothing is unpickled."""
    spec = head_spec(name)
    return spec.format.read(spec.make, path, name)
