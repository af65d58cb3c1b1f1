"""The scikit-learn heads of our own: an SVM with a precomputed kernel, and XGBoost."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.svm import SVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


def keep_init_args(estimator: BaseEstimator, args: dict) -> None:
    """Store an __init__'s arguments (its locals()) as attributes of the same names.

    scikit-learn's rule for estimators: __init__ keeps each hyper-parameter as given, under its
    own name, and does nothing else (get_params and clone read them back).
    """
    for name, value in args.items():
        if name != "self":
            setattr(estimator, name, value)


class SVMHead(ClassifierMixin, BaseEstimator):
    """RBF-kernel SVM on standardised features.

    Up to `max_precomputed` training rows the kernel matrix is computed with one matrix
    multiply (BLAS, all cores) and handed to libsvm, about 3x faster than libsvm's own kernel
    loop; above it, libsvm computes the kernel itself. Probabilities are a softmax over the
    one-vs-rest decision values: they rank classes and tracks like the SVM does, without
    the 5-fold Platt calibration that would cost five more fits.
    """

    def __init__(self, C: float = 10.0, max_precomputed: int = 20_000, random_state: int = 0):
        keep_init_args(self, locals())

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
        keep_init_args(self, locals())

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
