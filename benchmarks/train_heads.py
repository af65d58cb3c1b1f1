"""Time `wav2genre train-heads` on a GTZAN-sized synthetic cache (stage two's speed target).

1,000 tracks x 3 segments x 13 layers x 768, 10 labels, with the label carried by a few layers.
Times `--layers all` with all five heads and `--layers best`, through the real command line.
Targets on a 2-core laptop-class machine: all heads on all layers < 60 s; --layers best < 10 s.

    python benchmarks/train_heads.py [--out benchmarks/results/train_heads.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wav2genre_cache.testing.synthetic import write_synthetic_cache

TARGETS = {"all": 60.0, "best": 10.0}


def timed_cli(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "wav2genre_cache", *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/train_heads.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = write_synthetic_cache(
            Path(tmp) / "gtzan_sized.h5",
            n_tracks=1000,
            segments_per_track=3,
            n_layers=13,
            dim=768,
            n_labels=10,
            informative_layers=(6, 7, 8),
            signal=0.15,
            seed=0,
        )
        results = {}
        for layers in ("all", "best"):
            run = Path(tmp) / f"run_{layers}"
            seconds = timed_cli("train-heads", str(cache), "--out", str(run), "--layers", layers)
            metrics = json.loads((run / "metrics.json").read_text())
            best = next(r for r in metrics["results"] if r.get("best_overall"))
            results[layers] = {
                "seconds": round(seconds, 2),
                "target_seconds": TARGETS[layers],
                "met": seconds < TARGETS[layers],
                "models": len(metrics["results"]),
                "fit_seconds_by_head": {
                    h: round(sum(r["fit_seconds"] for r in metrics["results"] if r["head"] == h), 2)
                    for h in dict.fromkeys(r["head"] for r in metrics["results"])
                },
                "best": f"{best['head']} layer {best['layer']}",
                "best_test_track_accuracy": best["test"]["track"]["accuracy"],
            }
            print(
                f"--layers {layers}: {seconds:.1f} s for {len(metrics['results'])} models "
                f"(target < {TARGETS[layers]:.0f} s: {'met' if seconds < TARGETS[layers] else 'NOT met'}); "
                f"best {results[layers]['best']} at {results[layers]['best_test_track_accuracy']:.3f}"
            )
            print("  fit seconds by head:", results[layers]["fit_seconds_by_head"])
    record = {
        "benchmark": "train_heads",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}",
        "workload": "1000 tracks x 3 segments x 13 layers x 768, 10 labels",
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
