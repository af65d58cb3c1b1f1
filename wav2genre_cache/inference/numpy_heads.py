"""Heads that an ONNX export evaluates in numpy from their saved arrays (head.npz).

A multi-label logistic regression (one regression per tag, infinite intercepts for constant
tags: no converter takes it), a multi-label random forest (one forest, an output per tag:
skl2onnx takes one output) or XGBoost (a target per tag: onnxmltools takes one) and the SVM head (an RBF kernel on an exact grid, one-vs-one
decision values turned one-vs-rest as scikit-learn's SVC does, then a softmax; or per tag a
logistic): onnx_heads writes the arrays, onnx_runtime calls `numpy_probabilities`. numpy only.
"""

from __future__ import annotations

import numpy as np

from wav2genre_cache.errors import ExportError
from wav2genre_cache.evaluation.calibration_map import expit, softmax
from wav2genre_cache.kernels import grid_rbf_kernel, rbf_kernel


def numpy_probabilities(kind: str, arrays: dict, x: np.ndarray, multi_label: bool) -> np.ndarray:
    """The head's probabilities [rows, head classes] of pooled features x (float32)."""
    if kind == "linear":
        return linear_probabilities(arrays, x, multi_label)
    if kind == "svm":
        return svm_probabilities(arrays, x, multi_label)
    if kind == "forest":
        return forest_probabilities(arrays, x)
    if kind == "boosted":
        return boosted_probabilities(arrays, x)
    raise ExportError(f"unknown numpy head kind {kind!r} in the export's manifest")


def linear_probabilities(arrays: dict, x: np.ndarray, multi_label: bool) -> np.ndarray:
    """A logreg head's probabilities from its arrays: standardise, then softmax or sigmoid."""
    scores = ((x - arrays["mean"]) / arrays["scale"]) @ arrays["coef"].T + arrays["intercept"]
    if multi_label:
        return expit(scores)
    if scores.shape[1] == 1:  # two classes: one score, for the second class
        p = expit(scores[:, 0])
        return np.stack([1 - p, p], axis=1)
    return softmax(scores)


def svm_probabilities(arrays: dict, x: np.ndarray, multi_label: bool) -> np.ndarray:
    """SVMHead.predict_proba from its arrays (support vectors, dual coefficients, intercepts)."""
    scaled = ((np.asarray(x, np.float32) - arrays["mean"]) / arrays["scale"]).astype(np.float32)
    kernel = grid_rbf_kernel if bool(arrays["grid"]) else rbf_kernel
    K = kernel(scaled, arrays["vectors"], float(arrays["gamma"]))
    if multi_label:
        values = np.tile(arrays["tag_values"], (len(K), 1))
        values[:, arrays["fitted_tags"]] = K @ arrays["dual"].T + arrays["intercept"]
        return expit(values)
    n_support = arrays["n_support"]
    if len(n_support) == 2:  # one value, positive for the second class
        d = K @ arrays["dual"][0] + arrays["intercept"][0]
        return softmax(np.stack([-d / 2, d / 2], axis=1))
    return softmax(_one_vs_rest(_one_vs_one(K, arrays["dual"], arrays["intercept"], n_support)))


def forest_probabilities(arrays: dict, x: np.ndarray) -> np.ndarray:
    """A multi-label ForestHead's tag probabilities: each tree's leaf, added in the trees'
    order and divided by their number, as ForestHead.predict_proba adds them."""
    total = None
    for root in arrays["roots"]:
        leaf = arrays["leaf"][_leaves(arrays, x, root, strict=False)]
        total = leaf if total is None else total + leaf
    return total / len(arrays["roots"])


def boosted_probabilities(arrays: dict, x: np.ndarray) -> np.ndarray:
    """A multi-label XGBHead's tag probabilities: each tag's base margin plus its trees' leaf
    values, in float32 as XGBoost adds them, through a sigmoid."""
    margin = np.tile(arrays["base_margin"], (len(x), 1)).astype(np.float32)
    for root, tag in zip(arrays["roots"], arrays["target"], strict=True):
        margin[:, tag] += arrays["value"][_leaves(arrays, x, root, strict=True)]
    return expit(margin.astype(np.float64))


def _leaves(arrays: dict, x: np.ndarray, root: int, strict: bool) -> np.ndarray:
    """The leaf each row of x reaches in the tree at root: left where x <= threshold
    (scikit-learn; float32 against float64), or where x < threshold (XGBoost, float32)."""
    x = np.asarray(x, np.float32)
    left, right = arrays["left"], arrays["right"]
    feature, threshold = arrays["feature"], arrays["threshold"]
    rows, node = np.arange(len(x)), np.full(len(x), root)
    inner = left[node] >= 0
    while inner.any():
        at = node[inner]
        value = x[rows[inner], feature[at]]
        go_left = value < threshold[at] if strict else value <= threshold[at]
        node[inner] = np.where(go_left, left[at], right[at])
        inner = left[node] >= 0
    return node


def _one_vs_one(K: np.ndarray, dual: np.ndarray, intercept: np.ndarray, n_support) -> np.ndarray:
    """libsvm's decision value of each class pair (i < j), positive for class i."""
    ends = np.cumsum(n_support)
    starts = ends - n_support
    values, pair = np.zeros((len(K), len(intercept))), 0
    for i in range(len(n_support)):
        for j in range(i + 1, len(n_support)):
            si, sj = slice(starts[i], ends[i]), slice(starts[j], ends[j])
            values[:, pair] = K[:, si] @ dual[j - 1, si] + K[:, sj] @ dual[i, sj] + intercept[pair]
            pair += 1
    return values


def _one_vs_rest(ovo: np.ndarray) -> np.ndarray:
    """Votes plus bounded confidences per class (scikit-learn's _ovr_decision_function)."""
    n_classes = int(round((1 + np.sqrt(1 + 8 * ovo.shape[1])) / 2))
    votes, confidence, pair = np.zeros((len(ovo), n_classes)), np.zeros((len(ovo), n_classes)), 0
    for i in range(n_classes):
        for j in range(i + 1, n_classes):
            confidence[:, i] += ovo[:, pair]
            confidence[:, j] -= ovo[:, pair]
            votes[ovo[:, pair] >= 0, i] += 1
            votes[ovo[:, pair] < 0, j] += 1
            pair += 1
    return votes + confidence / (3 * (np.abs(confidence) + 1))
