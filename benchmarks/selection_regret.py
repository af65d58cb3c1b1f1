"""What model selection costs on small data: the selected model's test accuracy against the best
row on test (the oracle), for selection on the validation split and by cross-validation.

The 60 GTZAN dev clips embedded once with the real whisper-base encoder (`pip:whisper-base`);
then, for each of N seeded splits of them (`--split random`'s stratified 80/10/10: 40 train, 10
valid, 10 test tracks), every default vector head (fcnn, svm, rf, xgb, logreg) on every layer is
trained twice, once per rule (`--selection valid` and `--selection cv`), and the model each rule
selects (as `train-heads` writes best/) is scored on test; for cross-validation both ways of
its one-standard-error rule: toward the simpler head, then its best layer (train-heads'
default), and toward the simpler head, then the lower layer. Regret = oracle test accuracy minus the
selected model's. Intervals are 95 % percentile bootstraps over the splits (seeded).

--grouping random splits ignore artists (GTZAN's consecutive clips share artists, so test
artists were heard in training: every figure is inflated); --grouping artist keeps an artist on
one side (GTZAN's artist index), where four one-artist genres only ever train.

    python benchmarks/selection_regret.py --splits 20 --grouping random
    python benchmarks/selection_regret.py --splits 20 --grouping artist
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT.parent / "shared" / "data" / "gtzan_dev"
HEADS = ["fcnn", "svm", "rf", "xgb", "logreg"]


def dev_cache(folder: Path) -> Path:
    """The dev clips embedded with whisper-base: the demo's cache where `make demo` left one."""
    demo = ROOT / "artifacts" / "demo" / "cache.h5"
    if demo.is_file():
        return demo
    out = folder / "dev.h5"
    cmd = [sys.executable, "-m", "wav2genre_cache", "embed", str(CLIPS), "--out", str(out)]
    proc = subprocess.run([*cmd, "--model", "pip:whisper-base"], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"embed failed:\n{proc.stderr[-3000:]}")
    return out


def dev_original_segments():
    """The dev cache's tracks, and its original views' segment tracks and encoder features."""
    from wav2genre_cache.store.cache import EmbeddingCache

    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(dev_cache(Path(tmp)))
        original = cache.segments.view.to_numpy() == 0
        seg_track = cache.segments.track.to_numpy()[original]
        return cache.tracks, seg_track, np.asarray(cache.features("encoder")[original])


def split_masks(data, seed: int, grouping: str) -> dict[str, np.ndarray]:
    """A `--split random` split of the cache's tracks, as track-level split names."""
    from wav2genre_cache.data.splits import assign_splits
    from wav2genre_cache.data.tracks import Track

    tracks = data.cache.tracks
    listed = [
        Track(
            str(t.track_id), str(t.path), str(t.label), "", t.artist if grouping == "artist" else ""
        )
        for t in tracks.itertuples()
    ]
    return np.array([t.split for t in assign_splits(listed, "random", seed)])


def with_split(data, split: np.ndarray):
    """The same training data with each track's split replaced."""
    s = split[data.track]
    original = data.view == 0
    return dataclasses.replace(
        data,
        train=(s == "train") & (original | data.augmented),
        valid=(s == "valid") & original,
        test=(s == "test") & original,
        track_split=split,
    )


def one_split(data, rule_name: str, seed: int) -> dict:
    """Every head on every layer chosen by one rule; the selected row and the oracle on test."""
    from wav2genre_cache.heads.registry import ALL_HEADS
    from wav2genre_cache.stage_two.cv_select import choose_rule
    from wav2genre_cache.stage_two.plan import plan_jobs
    from wav2genre_cache.stage_two.select import best_overall, fit_jobs

    rule = choose_rule(data, rule_name, seed)
    jobs, _ = plan_jobs(data, HEADS, "all", lambda _: None)
    start = time.perf_counter()
    fitted = fit_jobs(data, jobs, seed, 0, lambda _: None, "auto", rule)
    ordered = sorted(fitted, key=lambda f: ALL_HEADS.index(f.result.head))
    test = {(f.result.head, f.result.layer): f.result.test["track"]["accuracy"] for f in fitted}
    row = {"rule": rule.name, "oracle_test_accuracy": max(test.values())}
    for name, lower in (("selected", False), ("selected_lower_layer", True)):
        chosen = best_overall(ordered, lower_layer=lower).result
        row[name] = [chosen.head, chosen.layer]
        row[f"{name}_test_accuracy"] = chosen.test["track"]["accuracy"]
    return {
        **row,
        "test_tracks": int(fitted[0].result.test["track"]["n"]),
        "seconds": round(time.perf_counter() - start, 1),
    }


def bootstrap(values: list[float], seed: int = 0, draws: int = 10_000) -> dict:
    """The mean and its 95 % percentile bootstrap interval over the splits."""
    v = np.asarray(values, float)
    means = np.random.default_rng(seed).choice(v, (draws, len(v))).mean(axis=1)
    return {
        "mean": round(float(v.mean()), 4),
        "ci95": [round(float(x), 4) for x in np.percentile(means, [2.5, 97.5])],
        "n_splits": len(v),
    }


def main() -> None:
    """Run the splits, print and write the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--grouping", choices=("random", "artist"), default="random")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or ROOT / "benchmarks" / "results" / f"selection_regret_{args.grouping}.json"
    from wav2genre_cache.stage_two.data import load_training_data

    with tempfile.TemporaryDirectory() as tmp:
        base = load_training_data(dev_cache(Path(tmp)), "encoder", augmented=False)
        runs = []
        for seed in range(args.splits):
            data = with_split(base, split_masks(base, seed, args.grouping))
            row = {"seed": seed}
            for rule in ("valid", "cv"):
                row[rule] = one_split(data, rule, seed)
            runs.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for rule, variant in (
        ("valid", "selected"),
        ("cv", "selected"),
        ("cv", "selected_lower_layer"),
    ):
        selected = [r[rule][f"{variant}_test_accuracy"] for r in runs]
        oracle = [r[rule]["oracle_test_accuracy"] for r in runs]
        summary[rule if variant == "selected" else "cv_lower_layer"] = {
            "selected_test_accuracy": bootstrap(selected),
            "oracle_test_accuracy": bootstrap(oracle),
            "regret": bootstrap([o - s for o, s in zip(oracle, selected, strict=True)]),
        }
    for variant in ("selected", "selected_lower_layer"):
        summary[f"cv_{variant}_minus_valid"] = bootstrap(
            [
                r["cv"][f"{variant}_test_accuracy"] - r["valid"]["selected_test_accuracy"]
                for r in runs
            ]
        )
    result = {
        "command": f"python benchmarks/selection_regret.py --splits {args.splits} "
        f"--grouping {args.grouping}",
        "model": "pip:whisper-base",
        "clips": "GTZAN dev clips (60)",
        "grouping": args.grouping,
        "heads": HEADS,
        "summary": summary,
        "splits": runs,
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
