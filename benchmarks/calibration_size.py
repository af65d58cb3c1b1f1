"""How many held-out tracks temperature scaling needs before it helps: calibration error on a
large test set before and after a temperature fitted on n tracks, for n from 5 to 400.

Synthetic tracks with known structure (`testing.synthetic`: 10 labels, 3 segments a track, a
weak signal) and, where `make demo` left it, the real whisper-base cache of the 60 GTZAN dev
clips. A head (logreg, svm, fcnn) is trained on a small training set (the few-clips regime this
project serves), scored per track (mean of segment probabilities), and for each n and seed a
temperature is fitted on n random held-out tracks; the expected calibration error (15 bins) of
the test tracks before and after, and how often after < before, over the seeds.

    python benchmarks/calibration_size.py      # writes benchmarks/results/calibration_size.json
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = (5, 10, 20, 40, 80, 160, 400)
SEEDS = 40


def track_scores(spec, head, X, y, track, n_labels):
    """Per-track probabilities (mean of segments) and labels."""
    from wav2genre_cache.stage_two.scoring import head_scores

    s = head_scores(spec, head, X, y, track, n_labels, False)
    return s.track, s.y_track


def measure(X, y, track, n_labels, train_tracks, pool_tracks, test_tracks, heads) -> dict:
    """ECE before/after per head and calibration-set size, over SEEDS draws of the set."""
    from wav2genre_cache.evaluation.calibration import expected_calibration_error, fit_calibrator
    from wav2genre_cache.heads.registry import Rows, head_spec

    out = {}
    rows = {
        name: np.isin(track, t)
        for name, t in (("train", train_tracks), ("pool", pool_tracks), ("test", test_tracks))
    }
    for name in heads:
        spec = head_spec(name)
        r = rows["train"]
        head = spec.fit(spec.make(0), Rows(X[r], y[r], track[r]))
        pool_p, pool_y = track_scores(
            spec, head, X[rows["pool"]], y[rows["pool"]], track[rows["pool"]], n_labels
        )
        test_p, test_y = track_scores(
            spec, head, X[rows["test"]], y[rows["test"]], track[rows["test"]], n_labels
        )
        before = expected_calibration_error(test_p, test_y, False)
        per_size = {}
        for n in SIZES:
            if n > len(pool_y):
                continue
            after = []
            for seed in range(SEEDS):
                pick = np.random.default_rng(seed).choice(len(pool_y), n, replace=False)
                cal = fit_calibrator(pool_p[pick], pool_y[pick], False, method="temperature")
                after.append(expected_calibration_error(cal.apply(test_p), test_y, False))
            after = np.array(after)
            per_size[n] = {
                "ece_after_mean": round(float(after.mean()), 4),
                "ece_after_p90": round(float(np.percentile(after, 90)), 4),
                "better_than_before": round(float((after < before).mean()), 3),
            }
        out[name] = {"ece_before": round(float(before), 4), "by_size": per_size}
        print(name, out[name], flush=True)
    return out


def synthetic() -> dict:
    """10 labels, 60 training tracks, a pool of 400 held-out tracks, 1,000 test tracks."""
    from wav2genre_cache.stage_two.data import load_training_data
    from wav2genre_cache.testing.synthetic import write_synthetic_cache

    with tempfile.TemporaryDirectory() as tmp:
        path = write_synthetic_cache(
            Path(tmp) / "s.h5", n_tracks=1460, n_layers=1, dim=64, n_labels=10, signal=0.25
        )
        data = load_training_data(path)
        X = data.layer(0)
    order = np.random.default_rng(0).permutation(np.unique(data.track))
    return measure(
        X, data.y, data.track, 10, order[:60], order[60:460], order[460:], ("logreg", "svm", "fcnn")
    )


def main() -> None:
    """Run the measurement and write it."""
    result = {
        "command": "python benchmarks/calibration_size.py",
        "method": "temperature scaling fitted on n held-out tracks; ECE (15 bins) of the test "
        f"tracks; {SEEDS} draws of the n tracks per size",
        "synthetic": synthetic(),
    }
    out = ROOT / "benchmarks" / "results" / "calibration_size.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
