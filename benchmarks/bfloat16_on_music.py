"""How far bfloat16 embeddings are from float32 on real music, per window mode (Whisper base).

The load-time precision check compares the two on a 2 s synthetic probe; this measures the same
thing on 10 real dev clips, per segment and layer: the max relative difference (the check's
measure, max |a - b| / max |b|) and the cosine.

    python benchmarks/bfloat16_on_music.py [--model pip:whisper-base]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from wav2genre_cache.audio import load_track
from wav2genre_cache.backbone import load_backbone
from wav2genre_cache.embed import embed_tracks

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "gtzan_dev"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pip:whisper-base")
    p.add_argument("--clips", type=Path, default=CLIPS)
    p.add_argument("--windows", default="packed,alone")
    args = p.parse_args()
    waves = [load_track(c).samples for c in sorted(args.clips.glob("*/*.flac"))[::6][:10]]
    for window in args.windows.split(","):
        exact = load_backbone(args.model, device="cpu", dtype="float32", window=window)
        fast = load_backbone(args.model, device="cpu", dtype="bfloat16", window=window)
        a = np.concatenate(embed_tracks(fast, waves, 10.0, None, 2))
        b = np.concatenate(embed_tracks(exact, waves, 10.0, None, 2))
        rel = [
            np.abs(a[i, k] - b[i, k]).max() / np.abs(b[i, k]).max()
            for i in range(len(b))
            for k in range(b.shape[1])
        ]
        cos = [
            float(a[i, k] @ b[i, k] / np.linalg.norm(a[i, k]) / np.linalg.norm(b[i, k]))
            for i in range(len(b))
            for k in range(b.shape[1])
        ]
        print(
            f"{args.model} {window}: computed in {fast.dtype}; per segment and layer, max relative "
            f"difference worst {max(rel):.2g}, median {np.median(rel):.2g}; min cosine {min(cos):.6f}"
        )


if __name__ == "__main__":
    main()
