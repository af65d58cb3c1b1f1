"""The logistic-regression head fitted with one BLAS thread against the machine's default.

lbfgs makes hundreds of small matrix products; on small VMs waking BLAS threads for each costs
more than the product. Fits the same head (standardised features, 10 classes) both ways at two
sizes, several rounds each, and prints the median seconds and the ratio (default / one thread).
The coefficients are compared too: the thread count must not change the fitted model beyond
rounding.

    python benchmarks/logreg_threads.py [--out benchmarks/results/logreg_threads.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from cpu_levers import cpu_name
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_info

from wav2genre_cache.heads.estimators import LogisticRegressionHead


def median_seconds(fit, rounds: int) -> tuple[float, object]:
    times, model = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        model = fit()
        times.append(time.perf_counter() - start)
    return statistics.median(times), model


def case(rows: int, features: int, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    y = np.arange(rows) % 10
    # Classes that overlap, as real embeddings do: lbfgs takes about 100 iterations, not 10.
    X = rng.standard_normal((rows, features)) + 0.5 * np.eye(10, features)[y]
    X = (X - X.mean(0)) / X.std(0)
    params = {"C": 0.1, "max_iter": 1000}
    default, a = median_seconds(lambda: LogisticRegression(**params).fit(X, y), rounds)
    one, b = median_seconds(lambda: LogisticRegressionHead(**params).fit(X, y), rounds)
    return {
        "rows": rows,
        "features": features,
        "default_threads_s": round(default, 4),
        "one_thread_s": round(one, 4),
        "speedup": round(default / one, 2),
        "iterations": int(b.n_iter_[0]),
        "max_coef_difference": float(np.abs(a.coef_ - b.coef_).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/logreg_threads.json")
    args = parser.parse_args()
    blas = [
        (i["internal_api"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"
    ]
    result = {
        "benchmark": "logreg_threads",
        "cpu": cpu_name(),
        "blas_default_threads": blas,
        "cases": [case(180, 512, args.rounds), case(10_000, 768, max(1, args.rounds // 2))],
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
