"""What checking a cache's checksums costs (train-heads checks them on open), against reading
its features once, which every training run does at least once; on a synthetic cache of
whisper-base's shape (13 layers x 768, float16).

    python benchmarks/cache_checksums.py [--tracks 4000]   # writes results/cache_checksums.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cpu_levers import cpu_name

from wav2genre_cache.store.cache import EmbeddingCache
from wav2genre_cache.testing.synthetic import write_synthetic_cache

ROOT = Path(__file__).resolve().parents[1]


def best_of(runs: int, work) -> float:
    """The fastest of `runs` timings of work(), in seconds (the page cache warm after the first)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracks", type=int, default=4000)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cache_checksums.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_synthetic_cache(
            Path(tmp) / "c.h5", n_tracks=args.tracks, segments_per_track=3, n_layers=13, dim=768
        )
        cache = EmbeddingCache(path)
        read = best_of(3, lambda: cache.features())
        verify = best_of(3, cache.verify)
        record = {
            "machine": cpu_name(),
            "segments": len(cache.segments),
            "feature_mb": round(path.stat().st_size / 2**20, 1),
            "read_features_s": round(read, 3),
            "verify_s": round(verify, 3),
            "verify_over_read": round(verify / read, 2),
        }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
