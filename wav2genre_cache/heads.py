"""Classifier heads with one contract (scikit-learn's) and safe, pickle-free persistence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .errors import Wav2GenreError
from .jsonable import jsonable

# The torch heads live in torch_heads.py; this module is their public home too.
from .torch_heads import (
    SPECTROGRAM_HEADS,
    AttentionPoolingClassifier,
    FCNNClassifier,
    LayerWeightedClassifier,
    SpectrogramClassifier,
    TorchClassifier,
)

HEADS = ("fcnn", "svm", "rf", "xgb", "logreg")
# SPECTROGRAM_HEADS (from torch_heads) train on log-mel spectrograms, not embedding vectors.
# Heads that read every layer at once (a row is all layers of a segment, flattened).
ALL_LAYER_HEADS = ("fcnn-weighted",)
# Heads that predict a whole track from its segments (fit and predict take the track groups).
TRACK_HEADS = ("attention",)
ALL_HEADS = HEADS + SPECTROGRAM_HEADS + ALL_LAYER_HEADS + TRACK_HEADS


class HeadError(Wav2GenreError):
    """A head that cannot be built, saved or loaded; the message says why."""


class SVMHead(ClassifierMixin, BaseEstimator):
    """RBF-kernel SVM on standardised features.

    Up to `max_precomputed` training rows the kernel matrix is computed with one matrix
    multiply (BLAS, all cores) and handed to libsvm, about 3x faster than libsvm's own kernel
    loop; above it, libsvm computes the kernel itself. Probabilities are a softmax over the
    one-vs-rest decision values: they rank classes and tracks like the SVM does, without
    the 5-fold Platt calibration that would cost five more fits.
    """

    def __init__(self, C: float = 10.0, max_precomputed: int = 20_000, random_state: int = 0):
        self.C = C
        self.max_precomputed = max_precomputed
        self.random_state = random_state

    def fit(self, X, y):
        """Standardise, then fit the SVM."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError("SVMHead needs at least two classes; got 1 class")
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0) + 1e-6
        A = self._scale(X)
        self.gamma_ = float(1.0 / (A.shape[1] * max(float(A.var()), 1e-12)))
        self.precomputed_ = len(A) <= self.max_precomputed
        if self.precomputed_:
            self.svc_ = SVC(kernel="precomputed", C=self.C, random_state=self.random_state).fit(
                self._kernel(A, A), y
            )
            self.support_vectors_ = A[self.svc_.support_]
            self.n_train_ = len(A)
        else:
            self.svc_ = SVC(
                kernel="rbf", gamma=self.gamma_, C=self.C, random_state=self.random_state
            ).fit(A, y)
        return self

    def _scale(self, X) -> np.ndarray:
        return ((np.asarray(X, dtype=np.float32) - self.mean_) / self.scale_).astype(np.float32)

    def _kernel(self, P: np.ndarray, Q: np.ndarray) -> np.ndarray:
        d2 = (P * P).sum(1)[:, None] + (Q * Q).sum(1)[None, :] - 2.0 * (P @ Q.T)
        return np.exp(-self.gamma_ * np.maximum(d2, 0.0)).astype(np.float64)

    def decision_function(self, X) -> np.ndarray:
        """One-vs-rest decision values, [n, classes] ([n] for two classes, as in SVC)."""
        check_is_fitted(self, "svc_")
        B = self._scale(validate_data(self, X, dtype=np.float32, reset=False))
        if not self.precomputed_:
            values = self.svc_.decision_function(B)
        else:
            # Only support-vector columns matter; the others have zero dual coefficients.
            K = np.zeros((len(B), self.n_train_))
            K[:, self.svc_.support_] = self._kernel(B, self.support_vectors_)
            values = self.svc_.decision_function(K)
        return values

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of the decision values, columns in the order of classes_."""
        d = self.decision_function(X)
        if d.ndim == 1:  # two classes: one value, positive for classes_[1]
            d = np.stack([-d / 2, d / 2], axis=1)
        e = np.exp(d - d.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """The class with the highest decision value."""
        values = self.decision_function(X)
        if values.ndim == 1:
            return self.classes_[(values > 0).astype(int)]
        return self.classes_[np.argmax(values, axis=1)]


class XGBHead(ClassifierMixin, BaseEstimator):
    """XGBoost (histogram method) behind the same contract; labels of any type."""

    def __init__(
        self,
        n_estimators: int = 30,
        max_depth: int = 3,
        learning_rate: float = 0.3,
        subsample: float = 0.8,
        colsample_bytree: float = 0.2,
        n_jobs: int | None = None,
        random_state: int = 0,
    ):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _model(self):
        from xgboost import XGBClassifier

        return XGBClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            subsample=self.subsample,
            colsample_bytree=self.colsample_bytree,
            tree_method="hist",
            n_jobs=self.n_jobs,
            random_state=self.random_state,
            max_bin=64,
        )

    def fit(self, X, y):
        """Fit boosted trees on integer-coded labels."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("XGBHead needs at least two classes; got 1 class")
        self.booster_ = self._model().fit(X, y_idx)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of classes_."""
        check_is_fitted(self, "booster_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        proba = self.booster_.predict_proba(X)
        return proba if proba.ndim == 2 else np.stack([1 - proba, proba], 1)

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


def make_head(name: str, seed: int = 0, **params) -> BaseEstimator:
    """A fresh, unfitted head by name (fcnn, svm, rf, xgb, logreg, cnn, lstm, cnn-lstm)."""
    if name == "fcnn":
        if "hidden_layers" in params:
            params = {**params, "hidden_layers": tuple(params["hidden_layers"])}
        return FCNNClassifier(random_state=seed, **params)
    if name in SPECTROGRAM_HEADS:
        return SpectrogramClassifier(kind=name, random_state=seed, **params)
    if name == "fcnn-weighted":
        return LayerWeightedClassifier(random_state=seed, **params)
    if name == "attention":
        return AttentionPoolingClassifier(random_state=seed, **params)
    if name == "svm":
        return SVMHead(random_state=seed, **params)
    if name == "rf":
        # Half-size bootstraps: twice as fast on GTZAN-sized caches, same accuracy there.
        return RandomForestClassifier(
            n_estimators=50, max_samples=0.5, n_jobs=-1, random_state=seed, **params
        )
    if name == "xgb":
        return XGBHead(random_state=seed, **params)
    if name == "logreg":
        return make_pipeline(
            StandardScaler(),
            LogisticRegression(max_iter=300, **_prefixed(params, "logisticregression")),
        )
    raise HeadError(f"unknown head {name!r}; available: {', '.join(ALL_HEADS)}")


# A few hyper-parameter values per head, chosen on the validation split.
# Small on purpose: every head on every layer of a GTZAN-sized cache fits in about a minute on
# two cores (benchmarks/train_heads.py).
PARAM_GRIDS: dict[str, list[dict]] = {
    "fcnn": [{}],  # its early stopping and scheduler already adapt it to the data
    "svm": [{"C": 10.0}],
    "rf": [{"min_samples_leaf": 1}],
    "xgb": [{"max_depth": 3}],
    "logreg": [{"C": 0.1}, {"C": 1.0}],
    "cnn": [{}],
    "lstm": [{}],
    "cnn-lstm": [{}],
    "fcnn-weighted": [{}],
    "attention": [{}],
}


def _prefixed(params: dict, step: str) -> dict:
    return {k.removeprefix(f"{step}__"): v for k, v in params.items()}


# ---- persistence: never pickle ----------------------------------------------------------


def head_files(name: str) -> tuple[str, ...]:
    """The files a head of this name consists of: save_head writes them, load_head reads them all."""
    if name in ("fcnn", "fcnn-weighted", "attention") or name in SPECTROGRAM_HEADS:
        return ("head.safetensors",)
    if name == "xgb":
        # load_head opens the first and reads the classes and parameters from the second.
        return ("head.ubj", "head_params.json")
    if name in ("svm", "rf", "logreg"):
        return ("head.skops",)
    raise HeadError(f"unknown head {name!r}; available: {', '.join(ALL_HEADS)}")


def save_head(head: BaseEstimator, name: str, directory: Path) -> list[str]:
    """Write a fitted head in a safe format; return the names of every file written, main first.

    The main file is the one to pass to load_head; the caller checksums them all (bundles.write_bundle),
    since load_head trusts each of them.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = list(head_files(name))
    if isinstance(head, TorchClassifier):
        from safetensors.torch import save_file

        tensors = {f"net.{k}": v.contiguous() for k, v in head.net_.state_dict().items()}
        tensors["mean"] = torch.from_numpy(head.mean_)
        tensors["scale"] = torch.from_numpy(head.scale_)
        meta = {
            "params": json.dumps(jsonable(head.get_params())),
            "classes": json.dumps(head.classes_.tolist()),
            "n_features_in": str(head.n_features_in_),
        }
        save_file(tensors, directory / files[0], metadata=meta)
        return files
    if name == "xgb":
        head.booster_.save_model(directory / files[0])
        (directory / files[1]).write_text(
            json.dumps(
                {
                    "params": jsonable(head.get_params()),
                    "classes": head.classes_.tolist(),
                    "n_features_in": int(head.n_features_in_),
                }
            )
        )
        return files
    import skops.io as sio

    sio.dump(head, directory / files[0])
    return files


def load_head(name: str, path: Path) -> BaseEstimator:
    """Load a head saved by save_head; foreign content raises HeadError, nothing is unpickled."""
    try:
        if name in ("fcnn", "fcnn-weighted", "attention") or name in SPECTROGRAM_HEADS:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata()
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            params = json.loads(meta["params"])
            if name == "fcnn":
                params["hidden_layers"] = tuple(params["hidden_layers"])
                head = FCNNClassifier(**params)
            elif name == "fcnn-weighted":
                params["hidden_layers"] = tuple(params["hidden_layers"])
                head = LayerWeightedClassifier(**params)
            elif name == "attention":
                head = AttentionPoolingClassifier(**params)
            else:
                head = SpectrogramClassifier(**params)
            head.classes_ = np.array(json.loads(meta["classes"]))
            head.n_features_in_ = int(meta["n_features_in"])
            head.mean_, head.scale_ = tensors.pop("mean").numpy(), tensors.pop("scale").numpy()
            head.net_ = head._build(head.n_features_in_, len(head.classes_))
            head.net_.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items()})
            head.net_.eval()
            return head
        if name == "xgb":
            from xgboost import XGBClassifier

            info = json.loads((path.parent / head_files("xgb")[1]).read_text())
            head = XGBHead(**info["params"])
            head.classes_ = np.array(info["classes"])
            head.n_features_in_ = info["n_features_in"]
            head.booster_ = XGBClassifier()
            head.booster_.load_model(path)
            return head
        if name in ("svm", "rf", "logreg"):
            import skops.io as sio

            untrusted = [t for t in sio.get_untrusted_types(file=path) if t not in _OWN_TYPES]
            if untrusted:
                raise HeadError(
                    f"{path}: refuses to load types that are not known to be safe: {untrusted}"
                )
            return sio.load(path, trusted=list(_OWN_TYPES))
    except HeadError:
        raise
    except Exception as exc:
        raise HeadError(f"{path}: not a valid {name} head ({type(exc).__name__}: {exc})") from None
    raise HeadError(f"unknown head {name!r}; available: {', '.join(ALL_HEADS)}")


# Types skops does not trust by default but that are plain data: our SVM head and sklearn's trees.
_OWN_TYPES = ("wav2genre_cache.heads.SVMHead", "sklearn.tree._tree.Tree")
