"""The scikit-learn heads of our own: an SVM with a precomputed kernel, XGBoost, and the
random forest and logistic regression taught multi-label (mood/theme tags).

Each takes label indices or a tag indicator matrix, as heads.contract describes.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.sparse import issparse
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC
from sklearn.utils import Tags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from wav2genre_cache.heads.contract import (
    is_multi_label,
    keep_init_args,
    multi_label_tags,
    predictions_from_proba,
    rowwise_dot,
    tag_matrix,
    tags_at_half,
)
from wav2genre_cache.kernels import grid_rbf_kernel


class SVMHead(ClassifierMixin, BaseEstimator):
    """RBF-kernel SVM on standardised features.

    Up to `max_precomputed` training rows the kernel matrix is computed with one exact float64
    matrix multiply (BLAS, all cores; see _kernel) and handed to libsvm, faster than libsvm's
    own kernel loop; above it, libsvm computes the kernel itself, row by row, in its bounded
    cache. The matrix grows with the square of the rows (a fit held about three copies: 2.9 GB
    peak at 10,000 rows), so 8,192 rows (512 MiB a copy) bound it; beyond, memory is linear.
    Probabilities are a softmax over the one-vs-rest decision values: they rank classes and
    tracks like the SVM does, without the 5-fold Platt calibration that would cost five more
    fits.

    Fitted on a tag matrix [rows, tags], it fits one binary SVC per tag on the one kernel
    matrix (`svcs_`, for the tags in `fitted_tags_`); a tag's probability is the logistic of
    its decision value (a monotone score, calibrated later if need be). A tag that is constant
    in training gets its training rate (0 or 1) and no SVC.
    """

    def __init__(self, C: float = 10.0, max_precomputed: int = 8_192, random_state: int = 0):
        keep_init_args(self, locals())

    def __sklearn_tags__(self) -> Tags:
        return multi_label_tags(super().__sklearn_tags__())

    def fit(self, X, y) -> SVMHead:
        """Standardise, then fit the SVM (one per tag for a tag matrix)."""
        if is_multi_label(y):
            return self._fit_tags(X, y)
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError("SVMHead needs at least two classes; got 1 class")
        A = self._standardise(X)
        self.precomputed_ = len(A) <= self.max_precomputed
        if self.precomputed_:
            self.svc_ = SVC(kernel="precomputed", C=self.C, random_state=self.random_state).fit(
                self._kernel(A, A), y
            )
            self.support_vectors_ = A[self.svc_.support_]
            self.n_train_ = len(A)
        else:
            self.svc_ = self._rbf_svc().fit(A, y)
        self.multi_label_ = False
        return self

    def _fit_tags(self, X, Y) -> SVMHead:
        X, Y = validate_data(self, X, Y, dtype=np.float32, multi_output=True)
        Y = tag_matrix(Y)
        self.classes_, self.multi_label_ = np.arange(Y.shape[1]), True
        self.tag_rates_ = Y.mean(axis=0)
        self.fitted_tags_ = np.flatnonzero(Y.min(axis=0) != Y.max(axis=0))
        A = self._standardise(X)
        self.precomputed_ = len(A) <= self.max_precomputed
        if self.precomputed_:
            K = self._kernel(A, A)  # once: every tag's SVC trains on the same kernel matrix
            self.svcs_ = [
                SVC(kernel="precomputed", C=self.C, random_state=self.random_state).fit(K, Y[:, k])
                for k in self.fitted_tags_
            ]
            # Prediction needs the kernel against the support vectors of any tag.
            used = [svc.support_ for svc in self.svcs_]
            self.support_ = np.unique(np.concatenate(used)) if used else np.zeros(0, np.int64)
            self.support_vectors_ = A[self.support_]
            self.n_train_ = len(A)
        else:
            self.svcs_ = [self._rbf_svc().fit(A, Y[:, k]) for k in self.fitted_tags_]
        return self

    def _standardise(self, X: np.ndarray) -> np.ndarray:
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0) + 1e-6
        A = self._scale(X)
        self.gamma_ = float(1.0 / (A.shape[1] * max(float(A.var()), 1e-12)))
        return A

    def _rbf_svc(self) -> SVC:
        return SVC(kernel="rbf", gamma=self.gamma_, C=self.C, random_state=self.random_state)

    def _scale(self, X) -> np.ndarray:
        return ((np.asarray(X, dtype=np.float32) - self.mean_) / self.scale_).astype(np.float32)

    def _kernel(self, P: np.ndarray, Q: np.ndarray) -> np.ndarray:
        """The RBF kernel on an exact grid (kernels.grid_rbf_kernel): batch-independent."""
        return grid_rbf_kernel(P, Q, self.gamma_)

    def decision_function(self, X) -> np.ndarray:
        """One-vs-rest decision values, [n, classes] ([n] for two classes, as in SVC).

        For a tag matrix: [n, tags], +inf or -inf for a tag constant in training.
        """
        check_is_fitted(self, "classes_")
        B = self._scale(validate_data(self, X, dtype=np.float32, reset=False))
        if getattr(self, "multi_label_", False):
            return self._tag_decisions(B)
        if not self.precomputed_:
            values = self.svc_.decision_function(B)
        else:
            # Only support-vector columns matter; the others have zero dual coefficients.
            K = np.zeros((len(B), self.n_train_))
            K[:, self.svc_.support_] = self._kernel(B, self.support_vectors_)
            values = self.svc_.decision_function(K)
        return values

    def _tag_decisions(self, B: np.ndarray) -> np.ndarray:
        values = np.tile(np.where(self.tag_rates_ > 0.5, np.inf, -np.inf), (len(B), 1))
        if self.precomputed_:
            K = np.zeros((len(B), self.n_train_))
            K[:, self.support_] = self._kernel(B, self.support_vectors_)  # once for every tag
        else:
            K = B
        for k, svc in zip(self.fitted_tags_, self.svcs_, strict=True):
            values[:, k] = svc.decision_function(K)
        return values

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of the decision values, columns in the order of classes_.

        For a tag matrix: each tag's logistic of its decision value, independent of the others.
        """
        d = self.decision_function(X)
        if getattr(self, "multi_label_", False):
            return expit(d)
        if d.ndim == 1:  # two classes: one value, positive for classes_[1]
            d = np.stack([-d / 2, d / 2], axis=1)
        e = np.exp(d - d.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """The class with the highest decision value (for a tag matrix: the tags over 0.5)."""
        if getattr(self, "multi_label_", False):
            return tags_at_half(self.predict_proba(X))
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

    def __sklearn_tags__(self) -> Tags:
        return multi_label_tags(super().__sklearn_tags__())

    def fit(self, X, y) -> XGBHead:
        """Fit boosted trees on integer-coded labels, or on a tag matrix (XGBoost's multi-label)."""
        if is_multi_label(y):
            X, Y = validate_data(self, X, y, dtype=np.float32, multi_output=True)
            Y = tag_matrix(Y)
            self.classes_, self.multi_label_ = np.arange(Y.shape[1]), True
            # XGBoost's own multi-label: binary:logistic per column, trees grown per tag.
            self.booster_ = self._model().fit(X, Y)
            return self
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("XGBHead needs at least two classes; got 1 class")
        self.booster_ = self._model().fit(X, y_idx)
        self.multi_label_ = False
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of classes_ (for a tag matrix: per tag)."""
        check_is_fitted(self, "booster_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        proba = self.booster_.predict_proba(X)
        if getattr(self, "multi_label_", False):
            return proba.astype(np.float64)
        return proba if proba.ndim == 2 else np.stack([1 - proba, proba], 1)

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row (for a tag matrix: the tags over 0.5)."""
        return predictions_from_proba(self, self.predict_proba(X))


class ForestHead(RandomForestClassifier):
    """scikit-learn's random forest; a tag matrix fits one forest with an output per tag.

    Its trees are shared by the tags (scikit-learn's native multi-output): one forest, not one
    per tag. `tag_classes_` keeps the values each tag took in training (a constant tag has one).
    """

    def fit(self, X, y, sample_weight=None) -> ForestHead:
        """Fit the forest on labels, or on a tag indicator matrix."""
        with warnings.catch_warnings():
            # The registry's half-size bootstraps are chosen on purpose; on a few training
            # tracks scikit-learn advises an integer instead, once per fit (per layer, per run).
            warnings.filterwarnings("ignore", "Using the fractional value max_samples", UserWarning)
            return self._fit(X, y, sample_weight)

    def _fit(self, X, y, sample_weight) -> ForestHead:
        if not is_multi_label(y):
            super().fit(X, y, sample_weight)
            self.multi_label_ = False
            return self
        Y = tag_matrix(y)
        super().fit(X, Y, sample_weight)
        # The forest's per-output classes; ours are the tags, as every multi-label head's.
        self.tag_classes_ = self.classes_
        self.classes_, self.multi_label_ = np.arange(Y.shape[1]), True
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities; for a tag matrix, each tag's probability [n, tags]."""
        proba = self._mean_of_trees(X)
        if not getattr(self, "multi_label_", False):
            return proba
        # The positive column of each tag's [n, values]; none (probability 0) if it never occurred.
        return np.stack(
            [p[:, c == 1].sum(axis=1) for c, p in zip(self.tag_classes_, proba, strict=True)], 1
        )

    def _mean_of_trees(self, X) -> np.ndarray | list[np.ndarray]:
        """The trees' mean probabilities (a list per output), added in the trees' order.

        scikit-learn's threads add each tree's share in the order they finish, so the last
        digits of a row's probabilities changed from call to call and with the batch.
        """
        check_is_fitted(self)
        X = self._validate_X_predict(X)
        total = None
        for tree in self.estimators_:
            p = tree.predict_proba(X, check_input=False)
            p = p if isinstance(p, list) else [p]
            total = p if total is None else [a + b for a, b in zip(total, p, strict=True)]
        mean = [a / len(self.estimators_) for a in total]
        return mean if self.n_outputs_ > 1 else mean[0]

    def predict(self, X) -> np.ndarray:
        """The most probable class (for a tag matrix: the tags over 0.5)."""
        if getattr(self, "multi_label_", False):
            return tags_at_half(self.predict_proba(X))
        return super().predict(X)


class LogisticRegressionHead(LogisticRegression):
    """scikit-learn's logistic regression; a tag matrix fits one binary regression per tag.

    One-vs-rest with every hyper-parameter (C above all) passed on to each tag's regression;
    their weights are stacked in `coef_` [tags, features] and `intercept_` [tags]. A tag that
    is constant in training gets no regression: zero weights and an infinite intercept, so
    its probability is its training rate (0 or 1).
    """

    def __sklearn_tags__(self) -> Tags:
        return multi_label_tags(super().__sklearn_tags__())

    def fit(self, X, y, sample_weight=None) -> LogisticRegressionHead:
        """Fit on labels (as LogisticRegression), or one regression per tag of a tag matrix."""
        # lbfgs makes hundreds of small products; waking BLAS threads for each costs more than
        # it saves: one thread fitted 10x faster at 180 x 512 and 1.5x at 10,000 x 768
        # (benchmarks/results/logreg_threads.json, 2-core AMD EPYC).
        with threadpool_limits(1, user_api="blas"):
            return self._fit(X, y, sample_weight)

    def _fit(self, X, y, sample_weight) -> LogisticRegressionHead:
        if not is_multi_label(y):
            super().fit(X, y, sample_weight)
            self.multi_label_ = False
            return self
        X, Y = validate_data(self, X, y, accept_sparse="csr", multi_output=True)
        Y = tag_matrix(Y)
        n_tags = Y.shape[1]
        coef, n_iter = np.zeros((n_tags, X.shape[1])), np.zeros(n_tags, np.int32)
        intercept = np.where(Y.mean(axis=0) > 0.5, np.inf, -np.inf)
        for k in np.flatnonzero(Y.min(axis=0) != Y.max(axis=0)):
            one = LogisticRegression(**self.get_params()).fit(X, Y[:, k], sample_weight)
            coef[k], intercept[k], n_iter[k] = one.coef_[0], one.intercept_[0], one.n_iter_[0]
        self.coef_, self.intercept_, self.n_iter_ = coef, intercept, n_iter
        self.classes_, self.multi_label_ = np.arange(n_tags), True
        return self

    def decision_function(self, X) -> np.ndarray:
        """LogisticRegression's scores, each row's computed alone (rowwise_dot)."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", reset=False)
        # scipy's sparse products already sum row by row; a dense one goes through rowwise_dot.
        if issparse(X) or issparse(self.coef_):
            scores = np.asarray(X @ self.coef_.T)
        else:
            scores = rowwise_dot(X, self.coef_)
        scores = scores + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities; for a tag matrix, each tag's own (logistic of its score)."""
        if getattr(self, "multi_label_", False):
            return expit(self.decision_function(X))
        return super().predict_proba(X)

    def predict(self, X) -> np.ndarray:
        """The most probable class (for a tag matrix: the tags over 0.5)."""
        if getattr(self, "multi_label_", False):
            return tags_at_half(self.predict_proba(X))
        return super().predict(X)


class PipelineHead(Pipeline):
    """A scikit-learn Pipeline that tells, as every head does, whether it was fitted on tags."""

    @property
    def multi_label_(self) -> bool:
        """Whether its last step was fitted on a tag indicator matrix."""
        return getattr(self._final_estimator, "multi_label_", False)
