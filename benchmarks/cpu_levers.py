"""The CPU levers of cpu_tuning.py: one bfloat16 call of random-base on two 10 s segments.

Times transformers' model in bfloat16 untouched, with every lever, and with every lever but one
(what each lever is worth where the others are already in place), each in a fresh process (the
heap setting is process-wide), all in the same run. Also times the host's work per batch of 64 segments, the
old way (copy each segment, stack, normalise in numpy) against the new (fill one batch in place;
on CUDA the normalisation runs on the GPU).

    python benchmarks/cpu_levers.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LEVERS = ("eager-attention", "heap", "channels-last-encoder", "packed-and-fused", "position-conv")


def time_call(levers: set[str], repeats: int = 8) -> float:
    """Median seconds of one model call with the given levers applied."""
    import torch

    from wav2genre_cache import cpu_tuning as ct
    from wav2genre_cache.model_sources import builtin_model

    model = builtin_model("random-base").eval().to(torch.bfloat16)
    # packed-and-fused: oneDNN-packed linear weights, and GELUs fused into the layers before.
    fuse = ct.onednn_available() and "packed-and-fused" in levers
    if "eager-attention" in levers:
        model.set_attn_implementation("eager")
    if "heap" in levers:
        ct.keep_freed_memory()
    if "channels-last-encoder" in levers:
        model.feature_extractor = ct.ChannelsLastFeatureEncoder(model.feature_extractor, fuse=fuse)
    if fuse:
        ct.pack_linear_layers(model.encoder)
    if "position-conv" in levers:
        model.encoder.pos_conv_embed = ct.ChannelsLastPositionalConv(
            model.encoder.pos_conv_embed, fuse=fuse
        )
    x = torch.randn(2, 160_000, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            start = time.perf_counter()
            model(x, output_hidden_states=True)
            if i >= 2:  # the first calls set up kernels
                times.append(time.perf_counter() - start)
    return float(np.median(times))


def host_work(batch: int = 64, repeats: int = 5) -> dict:
    """Milliseconds of the feeding thread's work per batch, the old way and the new."""
    from wav2genre_cache.audio import normalize_segments

    rng = np.random.default_rng(0)
    tracks = [rng.standard_normal(480_000, dtype=np.float32) for _ in range(batch // 3 + 1)]
    starts = (0, 160_000, 320_000)

    def old() -> None:
        segs = [t[s : s + 160_000].copy() for t in tracks for s in starts][:batch]
        normalize_segments(np.stack(segs))

    buffer = np.empty((batch, 160_000), np.float32)

    def new() -> None:
        rows = [(t, s) for t in tracks for s in starts][:batch]
        for i, (t, s) in enumerate(rows):
            buffer[i] = t[s : s + 160_000]
        buffer.copy()  # stands in for the copy into pinned memory

    out = {}
    for name, fn in (("copy_stack_normalise_ms", old), ("fill_in_place_ms", new)):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        out[name] = (time.perf_counter() - start) / repeats * 1000
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--levers":
        print(json.dumps(time_call(set(filter(None, sys.argv[2].split(","))))))
        return
    configs = [("none (transformers)", ()), ("all", LEVERS)]
    configs += [(f"all but {lever}", tuple(x for x in LEVERS if x != lever)) for lever in LEVERS]
    rows = {}
    for name, levers in configs:
        proc = subprocess.run(
            [sys.executable, __file__, "--levers", ",".join(levers)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            sys.exit(f"{name} failed:\n{proc.stderr[-2000:]}")
        rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"{name:36s} {rows[name] * 1000:6.0f} ms  {20 / rows[name]:5.1f} audio-s/s", flush=True
        )
    print(f"all levers: {rows['none (transformers)'] / rows['all']:.2f}x transformers' model")
    for lever in LEVERS:
        print(
            f"  {lever:24s} worth {rows[f'all but {lever}'] / rows['all'] - 1:+.0%} with the others in"
        )
    host = host_work()
    print(
        f"host work per 64 segments: copy+stack+normalise {host['copy_stack_normalise_ms']:.0f} ms, "
        f"fill in place {host['fill_in_place_ms']:.0f} ms"
    )
    out = ROOT / "benchmarks" / "results" / "cpu_levers.json"
    record = {"benchmark": "cpu_levers", "seconds_per_call": rows, "host": host}
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
