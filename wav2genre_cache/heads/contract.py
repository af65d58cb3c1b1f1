"""What every head shares: scikit-learn's estimator rules, the multi-label contract, and
scores that do not depend on the rows beside them.

Every head takes either label indices (single-label, one genre per row) or a 2-D {0, 1}
indicator matrix [rows, tags] (multi-label). Fitted on the matrix, a head has
`multi_label_ = True`, `classes_ = arange(tags)`, predict_proba gives each tag's own
probability ([rows, tags], rows need not sum to one) and predict the indicator matrix at 0.5.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import issparse
from sklearn.base import BaseEstimator
from sklearn.utils import Tags
from sklearn.utils.multiclass import type_of_target


def keep_init_args(estimator: BaseEstimator, args: dict) -> None:
    """Store an __init__'s arguments (its locals()) as attributes of the same names.

    scikit-learn's rule for estimators: __init__ keeps each hyper-parameter as given, under its
    own name, and does nothing else (get_params and clone read them back).
    """
    for name, value in args.items():
        if name != "self":
            setattr(estimator, name, value)


def is_multi_label(y) -> bool:
    """Whether y is a tag matrix [rows, tags >= 2]; a column vector is single-label, as in sklearn."""
    shape = y.shape if issparse(y) else np.asarray(y).shape
    return len(shape) == 2 and shape[1] > 1


def tag_matrix(Y, n_tags: int | None = None) -> np.ndarray:
    """A multi-label target as an int {0, 1} matrix [rows, tags], or ValueError."""
    Y = Y.toarray() if issparse(Y) else np.asarray(Y)
    if type_of_target(Y) != "multilabel-indicator":
        raise ValueError(
            f"a 2-D target must be a {{0, 1}} tag indicator matrix; got {Y.dtype} {Y.shape}"
        )
    if n_tags is not None and Y.shape[1] != n_tags:
        raise ValueError(f"{Y.shape[1]} tags where the training rows have {n_tags}")
    return Y.astype(np.int64)


def tags_at_half(proba: np.ndarray) -> np.ndarray:
    """The indicator matrix of the tags whose probability exceeds 0.5."""
    return (proba > 0.5).astype(np.int64)


def predictions_from_proba(head: BaseEstimator, proba: np.ndarray) -> np.ndarray:
    """The most probable class of each row; for a head fitted on tags, the tags over 0.5."""
    if getattr(head, "multi_label_", False):
        return tags_at_half(proba)
    return head.classes_[np.argmax(proba, axis=1)]


def multi_label_tags(tags: Tags) -> Tags:
    """sklearn's tags of a head that also fits a tag matrix (its estimator checks then cover it)."""
    tags.classifier_tags.multi_label = True
    return tags


def rowwise_dot(X: np.ndarray, W: np.ndarray) -> np.ndarray:
    """X @ W.T in float64, each value a sum in one fixed order whatever the other rows.

    BLAS blocks a product by its shape and the CPU's instruction set, so a row's values there
    depend on the rows beside it. Here each value is numpy's pairwise sum of that row's own
    products (its order set by the number of features alone), in blocks of about 64 MB.
    """
    X, W = np.asarray(X, np.float64), np.asarray(W, np.float64)
    out = np.empty((len(X), len(W)))
    step = max(1, 2**23 // max(1, W.size))
    for i in range(0, len(X), step):
        out[i : i + step] = (X[i : i + step, None, :] * W[None, :, :]).sum(axis=-1)
    return out
