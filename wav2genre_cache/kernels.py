"""The SVM head's RBF kernel on an exact grid, in numpy alone.

SVMHead trains and predicts with it; an ONNX export's runtime (which carries no scikit-learn)
evaluates an exported SVM with the same function, so both compute the same kernel values.
"""

from __future__ import annotations

import numpy as np


def exact_grid(n_features: int) -> tuple[float, float]:
    """The grid step (a power of two) and clip bound that keep integer dot products exact.

    Values on the grid are integers k with |k| <= 2**b; a squared distance of n_features of them
    is at most 4 * n_features * 4**b, kept at or below 2**53 (float64 integers are exact there).
    The bound is 64 standard deviations; the step is 2**-14 at 768 features, 2**-11 at 40,000:
    finer than the float16 the cache stores.
    """
    bits = (51 - int(np.ceil(np.log2(max(n_features, 2))))) // 2
    return 2.0 ** -(bits - 6), 64.0


def on_grid(X: np.ndarray, step: float, bound: float) -> np.ndarray:
    """X clipped to +-bound and rounded to multiples of step, as float64 integers (step units)."""
    return np.rint(np.clip(np.asarray(X, np.float64), -bound, bound) / step)


def grid_rbf_kernel(P: np.ndarray, Q: np.ndarray, gamma: float) -> np.ndarray:
    """exp(-gamma |p - q|^2), each value independent of the other rows of P and Q.

    The squared distances are computed on the features rounded to a grid (exact_grid) where
    every product and every partial sum is an integer below 2**53: one float64 matrix product is
    then exact, however BLAS blocks it on whatever CPU, so a row's score never depends on the
    batch it came in (a float32 product moved it by 1e-7).
    """
    step, bound = exact_grid(P.shape[1])
    p, q = on_grid(P, step, bound), on_grid(Q, step, bound)
    d2 = (p * p).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2.0 * (p @ q.T)
    return np.exp(-gamma * (d2 * (step * step)))


def rbf_kernel(P: np.ndarray, Q: np.ndarray, gamma: float) -> np.ndarray:
    """exp(-gamma |p - q|^2) in float64, as libsvm computes it (SVMs fitted on many rows)."""
    p, q = np.asarray(P, np.float64), np.asarray(Q, np.float64)
    d2 = (p * p).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2.0 * (p @ q.T)
    return np.exp(-gamma * np.maximum(d2, 0.0))
