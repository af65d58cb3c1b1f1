"""Overlapping segments and augmented training segments, with a few clips per label, measured by
artist-grouped cross-validation (issue 24, part 5).

The 60 GTZAN dev clips embedded once with the real whisper-base encoder, 10 s segments every 5 s
(`--hop-seconds 5`), and one augmented copy of every track (`--augment pitch,stretch,noise
--augment-copies 1`, with a split file that puts every clip in training so that every clip has
its copy). From that one cache, on the same folds (5-fold x 3 repeats by artist, as
benchmarks/few_examples.py; a genre of one artist only trains, so 36 tracks are tested):

- baseline: train and predict on the non-overlapping segments (starts 0, 10, 20 s), as `embed`'s
  default hop;
- overlap at prediction: train as baseline, predict from every 5 s segment (the mean of 5
  segments' probabilities instead of 3);
- overlap in training and prediction;
- augmented training: the baseline plus the augmented copies of the training tracks;
- augmented training and overlap at prediction.

Heads: a logistic-regression probe on layers 2 and 3 (the layers the selection picks on these
clips). Track accuracy is the mean of segment probabilities; mean +/- std over the 15 folds and a
95 % Wilson interval over the tracks the first repeat tests.

    python benchmarks/segments_and_augmentation.py   # writes benchmarks/results/segments_and_augmentation.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT.parent / "shared" / "data" / "gtzan_dev"
LAYERS = (2, 3)
# name: (training segments, prediction segments); "hop10" keeps starts 0, 10, 20 s.
CONDITIONS = {
    "baseline (hop 10 s)": ("hop10", "hop10"),
    "overlap at prediction (hop 5 s)": ("hop10", "hop5"),
    "overlap in training and prediction": ("hop5", "hop5"),
    "augmented training": ("hop10+aug", "hop10"),
    "augmented training, overlap at prediction": ("hop10+aug", "hop5"),
}


NOTE = (
    "Whisper packs consecutive segments into 30 s windows (3 per window here, overlap copied "
    "twice), so the hop-10 segments of this cache sit beside other neighbours than in a hop-10 "
    "cache: the baseline here differs from few_examples.json's; the conditions compare with "
    "each other, on one cache."
)


def embed(folder: Path) -> Path:
    """The dev clips, 10 s segments every 5 s, one augmented copy of each clip (all in train)."""
    split = folder / "all_train.csv"
    clips = sorted(p for p in CLIPS.glob("*/*.*") if p.suffix in (".flac", ".wav", ".au", ".mp3"))
    split.write_text("track_id,split\n" + "".join(f"{p.stem},train\n" for p in clips))
    out = folder / "dev_hop5_aug.h5"
    cmd = [sys.executable, "-m", "wav2genre_cache", "embed", str(CLIPS), "--out", str(out),
           "--model", "pip:whisper-base", "--hop-seconds", "5", "--split", str(split),
           "--augment", "pitch,stretch,noise", "--augment-copies", "1"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"embed failed:\n{proc.stderr[-3000:]}")
    print(f"embedded in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def segment_masks(starts: np.ndarray, views: np.ndarray) -> dict[str, np.ndarray]:
    """Which segments each named set holds."""
    on_ten = np.isclose(np.mod(starts, 10.0), 0.0)
    return {
        "hop10": (views == 0) & on_ten,
        "hop5": views == 0,
        "hop10+aug": on_ten,  # a copy's segments start where the original's do
    }


def main() -> None:
    """Cross-validate every condition on the same folds; print and write the table."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from artist_folds import artist_folds

    from wav2genre_cache.evaluation.intervals import wilson_interval
    from wav2genre_cache.heads.registry import Rows, head_spec
    from wav2genre_cache.stage_two.scoring import head_scores
    from wav2genre_cache.store.cache import EmbeddingCache

    if not CLIPS.is_dir():
        sys.exit(f"no dev clips at {CLIPS}")
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(embed(Path(tmp)))
        features = cache.features("encoder")
    tracks, seg = cache.tracks, cache.segments
    seg_track = seg.track.to_numpy()
    masks = segment_masks(seg.start.to_numpy(), seg.view.to_numpy())
    split = artist_folds(tracks, repeats=3)  # the folds of few_examples.py
    labels, alone, tested, ok = split.labels, split.alone, split.tested, split.ok
    folds = [(ok[a], ok[b]) for a, b in split.folds]
    y_seg = split.segment_labels(seg_track, tracks)
    spec = head_spec("logreg")
    rows = []
    for layer in LAYERS:
        X = features[:, layer, :]
        for name, (fit_set, predict_set) in CONDITIONS.items():
            accuracy, right = [], 0
            for i, (train_tracks, held_tracks) in enumerate(folds):
                fit = masks[fit_set] & np.isin(seg_track, train_tracks)
                held = masks[predict_set] & np.isin(seg_track, held_tracks)
                model = spec.fit(spec.make(0), Rows(X[fit], y_seg[fit], seg_track[fit]))
                s = head_scores(
                    spec, model, X[held], y_seg[held], seg_track[held], len(labels), False
                )
                hits = s.track.argmax(axis=1) == s.y_track
                accuracy.append(float(hits.mean()))
                right += int(hits.sum()) if i < 5 else 0
            n = int(tested.sum())
            low, high = wilson_interval(right, n)
            row = {
                "layer": layer,
                "condition": name,
                "accuracy_mean": round(float(np.mean(accuracy)), 3),
                "accuracy_std": round(float(np.std(accuracy)), 3),
                "first_repeat": {"right": right, "n": n, "ci95": [round(low, 3), round(high, 3)]},
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "command": "python benchmarks/segments_and_augmentation.py",
        "model": "pip:whisper-base",
        "clips": "GTZAN dev clips (60), folds by artist: 36 tracks of 6 genres tested",
        "train_only_labels": alone,
        "folds": "5 x 3 repeats, StratifiedGroupKFold by artist, seed 0 (as few_examples.py)",
        "head": "logreg",
        "note": NOTE,
        "rows": rows,
    }
    out = ROOT / "benchmarks" / "results" / "segments_and_augmentation.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
