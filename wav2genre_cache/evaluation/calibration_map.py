"""A fitted calibration map applied to scores, with numpy alone: what training, `predict` and an
ONNX export's runtime (which carries no scipy) all apply, so the three agree."""

from __future__ import annotations

import numpy as np

# Scores are clipped before taking logs so that a 0 or 1 has a finite logit.
EPS = 1e-7


def apply_map(
    p: np.ndarray, method: str, multi_label: bool, temperature: float, isotonic: list | None
) -> np.ndarray:
    """Calibrated scores [n, K] from raw ones p (float64, not changed): temperature or isotonic."""
    if method == "none" or len(p) == 0:
        return p
    if method == "temperature":
        if multi_label:
            return expit(tag_logits(p) / temperature)
        return softmax(np.log(np.clip(p, EPS, 1.0)) / temperature)
    out = np.empty_like(p)
    for k, m in enumerate(isotonic):
        out[:, k] = np.interp(p[:, k], m["x"], m["y"])
    if multi_label:
        return out
    # One-vs-rest maps no longer sum to 1 per row; a row they all map to 0 carries no
    # information from the maps, so it keeps its raw scores rather than becoming 0/0.
    sums = out.sum(axis=1, keepdims=True)
    dead = sums[:, 0] <= 0
    out[dead] = p[dead]
    sums[dead] = p[dead].sum(axis=1, keepdims=True)
    return np.divide(out, sums, out=np.zeros_like(out), where=sums > 0)


def tag_logits(p: np.ndarray) -> np.ndarray:
    """Multi-label logits of the clipped per-tag scores."""
    q = np.clip(p, EPS, 1.0 - EPS)
    return np.log(q / (1.0 - q))


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def expit(z: np.ndarray) -> np.ndarray:
    """The logistic function; an infinite score (a constant tag) gives 0 or 1."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))
