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

from wav2genre_cache.audio.decode import load_track
from wav2genre_cache.encoders.backbone import load_backbone, probe_signal, relative_error
from wav2genre_cache.encoders.embed_tracks import embed_tracks

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "gtzan_dev"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pip:whisper-base")
    p.add_argument("--clips", type=Path, default=CLIPS)
    p.add_argument("--windows", default="packed,alone")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    waves = [load_track(c).samples for c in sorted(args.clips.glob("*/*.flac"))[::6][:10]]
    for window in args.windows.split(","):
        exact = load_backbone(args.model, device=args.device, dtype="float32", window=window)
        fast = load_backbone(args.model, device=args.device, dtype="bfloat16", window=window)
        batch = 2 if args.device == "cpu" else 16
        a = np.concatenate(embed_tracks(fast, waves, 10.0, None, batch))
        b = np.concatenate(embed_tracks(exact, waves, 10.0, None, batch))
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
        l2 = np.linalg.norm(a - b, axis=2) / np.linalg.norm(b, axis=2)
        worst = np.array(rel).reshape(len(b), b.shape[1]).max(axis=0)
        probe = probe_signal(fast.frontend.window_samples / 16_000)[None]
        print(
            f"{args.model} {window} on {args.device}: computed in {fast.dtype}; per segment and layer, max relative "
            f"difference worst {max(rel):.2g}, median {np.median(rel):.2g} (worst per layer "
            f"{', '.join(f'{x:.3f}' for x in worst)}); relative L2 worst {l2.max():.2g}; min "
            f"cosine {min(cos):.6f}; the load-time check's probe (one whole window): "
            f"{relative_error(fast.embed(probe)[0], exact.embed(probe)[0]):.2g}"
        )


if __name__ == "__main__":
    main()
