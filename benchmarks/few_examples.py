"""What lifts accuracy with a few clips per label, measured by artist-grouped cross-validation:
one layer against several layers at once (concatenated, or weighted by a learned softmax).

The 60 GTZAN dev clips embedded once with the real whisper-base encoder (`make demo`'s cache,
else embedded here), 5-fold x 3 repeats, folds grouped by artist (GTZAN's artist index; a genre
of one artist only trains, so 36 tracks are tested), the same folds for every candidate. Track
accuracy is the mean of segment probabilities; mean +/- std over the 15 folds, and a 95 %
Wilson interval over the tracks one repeat tests.

    python benchmarks/few_examples.py     # writes benchmarks/results/few_examples.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = (
    ("logreg", "layer 1", [1]),
    ("logreg", "layer 2", [2]),
    ("logreg", "layer 3", [3]),
    ("logreg", "layers 1-3 concatenated", [1, 2, 3]),
    ("logreg", "every layer concatenated", "all"),
    ("svm", "layer 2", [2]),
    ("fcnn", "layer 2", [2]),
    ("fcnn-weighted", "every layer, learned weights", "weighted"),
)


def main() -> None:
    """Cross-validate every candidate on the same folds; print and write the table."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from artist_folds import artist_folds
    from selection_regret import dev_original_segments

    from wav2genre_cache.evaluation.intervals import wilson_interval
    from wav2genre_cache.heads.registry import Rows, head_spec
    from wav2genre_cache.stage_two.scoring import head_scores

    tracks, seg_track, every = dev_original_segments()  # every: [segments, layers, dim]
    split = artist_folds(tracks, repeats=3)
    labels, alone, tested, ok = split.labels, split.alone, split.tested, split.ok
    folds = [(ok[a], ok[b]) for a, b in split.folds]
    y_seg = split.segment_labels(seg_track, tracks)
    rows = []
    for head, name, layers in CANDIDATES:
        if layers == "all" or layers == "weighted":
            X = every.reshape(len(every), -1)
        else:
            X = every[:, layers, :].reshape(len(every), -1)
        spec = head_spec(head)
        params = {"n_layers": every.shape[1]} if layers == "weighted" else {}
        start = time.perf_counter()
        accuracy, right = [], 0
        for i, (train_tracks, held_tracks) in enumerate(folds):
            fit = np.isin(seg_track, train_tracks)
            held = np.isin(seg_track, held_tracks)
            model = spec.fit(spec.make(0, **params), Rows(X[fit], y_seg[fit], seg_track[fit]))
            s = head_scores(spec, model, X[held], y_seg[held], seg_track[held], len(labels), False)
            hits = s.track.argmax(axis=1) == s.y_track
            accuracy.append(float(hits.mean()))
            right += int(hits.sum()) if i < 5 else 0
        n = int(tested.sum())
        low, high = wilson_interval(right, n)
        row = {
            "head": head,
            "features": name,
            "accuracy_mean": round(float(np.mean(accuracy)), 3),
            "accuracy_std": round(float(np.std(accuracy)), 3),
            "first_repeat": {"right": right, "n": n, "ci95": [round(low, 3), round(high, 3)]},
            "seconds": round(time.perf_counter() - start, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "command": "python benchmarks/few_examples.py",
        "model": "pip:whisper-base",
        "clips": "GTZAN dev clips (60), folds by artist: 36 tracks of 6 genres tested",
        "train_only_labels": alone,
        "folds": "5 x 3 repeats, StratifiedGroupKFold by artist, seed 0",
        "rows": rows,
    }
    out = ROOT / "benchmarks" / "results" / "few_examples.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
