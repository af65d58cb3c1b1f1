"""The SVM head's batch-invariant kernel against the float32 product it replaced.

Scores 10,000 rows of 768 features against 2,000 support vectors both ways, several rounds, and
prints the median seconds and the ratio (new / old), and how far the two kernels' values and the
decision values apart are. The old kernel's answer for a row changed with the rows beside it
(BLAS blocks a product by its shape); the new one is exact integer arithmetic in float64.

    python benchmarks/svm_kernel.py [--rows 10000] [--out benchmarks/results/svm_kernel.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from cpu_levers import cpu_name

from wav2genre_cache.heads.estimators import SVMHead


def float32_kernel(head: SVMHead, P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """The kernel before: one float32 product (a row's values depend on its batch)."""
    d2 = (P * P).sum(1)[:, None] + (Q * Q).sum(1)[None, :] - 2.0 * (P @ Q.T)
    return np.exp(-head.gamma_ * np.maximum(d2, 0.0)).astype(np.float64)


def median_seconds(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--support", type=int, default=2_000)
    parser.add_argument("--features", type=int, default=768)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/svm_kernel.json")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    y = np.arange(args.support) % 10
    X_train = (rng.standard_normal((args.support, args.features)) + y[:, None] * 0.05).astype(
        np.float32
    )
    head = SVMHead().fit(X_train, y)
    sv = head.support_vectors_
    B = head._scale(rng.standard_normal((args.rows, args.features)).astype(np.float32))

    old = median_seconds(lambda: float32_kernel(head, B, sv), args.rounds)
    new = median_seconds(lambda: head._kernel(B, sv), args.rounds)
    X_test = rng.standard_normal((args.rows, args.features)).astype(np.float32)
    whole = median_seconds(lambda: head.decision_function(X_test), args.rounds)
    k_old, k_new = float32_kernel(head, B, sv), head._kernel(B, sv)
    result = {
        "machine": cpu_name(),
        "rows": args.rows,
        "support_vectors": len(sv),
        "features": args.features,
        "float32_product_s": round(old, 4),
        "exact_float64_s": round(new, 4),
        "ratio_new_over_old": round(new / old, 2),
        "decision_function_s": round(whole, 4),
        "max_abs_kernel_difference": float(np.abs(k_old - k_new).max()),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
