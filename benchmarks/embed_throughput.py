"""Stage one's speed and memory: our `embed` against the plain Hugging Face way, same audio.

reference: soundfile + soxr decode, Wav2Vec2FeatureExtractor, then one segment at a time through
           Wav2Vec2Model(output_hidden_states=True) in float32, mean over frames.
ours:      wav2genre's embed (decode workers, resample, segment, batched model, pooling, HDF5).

Each path runs in its own process so that its peak resident memory is its own. Prints audio
seconds per second for each, their ratio, peak memory (and peak GPU memory on CUDA), and the
largest relative difference between the two paths' embeddings per layer. `--memory` adds the
memory checks: 100 vs 1,000 tracks, and one one-hour file.

    python benchmarks/embed_throughput.py                      # CPU, float32 and bfloat16
    python benchmarks/embed_throughput.py --device cuda --tracks 1000 --batch-size 64 --workers 12
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEV = Path(os.environ.get("WAV2GENRE_SHARED", ROOT.parent / "shared")) / "data" / "gtzan_dev"


def make_workload(folder: Path, n_tracks: int) -> Path:
    """n_tracks real clips (the 60 dev clips repeated through symlinks), GTZAN layout."""
    clips = sorted(DEV.glob("*/*.flac"))
    if not clips:
        sys.exit(f"no clips at {DEV}: this benchmark needs ../shared/data/gtzan_dev")
    for i in range(n_tracks):
        src = clips[i % len(clips)]
        genre = src.parent.name
        (folder / genre).mkdir(parents=True, exist_ok=True)
        dst = folder / genre / f"{genre}.{i:05d}.flac"
        if not dst.exists():
            dst.symlink_to(src)
    return folder


# The memory checks use the tiny untrained model: they measure the pipeline, not the model.
PIPELINE_ARGS = (
    "--model",
    "random-tiny",
    "--device",
    "cpu",
    "--dtype",
    "float32",
    "--batch-size",
    "8",
    "--segment-seconds",
    "10",
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_reference(
    data: Path, model_name: str, device: str, out: Path, segment_seconds: float
) -> dict:
    import soundfile as sf
    import soxr
    import torch
    from transformers import AutoModel, Wav2Vec2FeatureExtractor

    from wav2genre_cache.backbone import BUILTIN_MODELS, builtin_model

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()  # both paths are timed from before the model is loaded
    # Plain transformers: none of the tuning load_backbone applies.
    if model_name in BUILTIN_MODELS:
        model = builtin_model(model_name)
    else:
        model = AutoModel.from_pretrained(model_name)
    model.eval().to(device)
    fe = Wav2Vec2FeatureExtractor(do_normalize=True)
    seg = int(segment_seconds * 16_000)
    feats, seconds = [], 0.0
    for path in sorted(data.glob("*/*")):
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
        audio = soxr.resample(audio.mean(axis=1), sr, 16_000)
        seconds += len(audio) / 16_000
        starts = list(range(0, len(audio) - seg + 1, seg))
        if len(audio) - (starts[-1] + seg) >= seg // 2:
            starts.append(len(audio) - seg)  # same segments as ours, to compare embeddings
        for s in starts:
            x = torch.tensor(fe(audio[s : s + seg], sampling_rate=16_000).input_values[0])[None].to(
                device
            )
            with torch.no_grad():
                hs = model(x, output_hidden_states=True).hidden_states
            feats.append(torch.stack([h.mean(dim=1) for h in hs], dim=1)[0].float().cpu().numpy())
    elapsed = time.perf_counter() - start
    np.save(out, np.stack(feats))
    return {
        "seconds": elapsed,
        "audio_seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def run_ours(
    data: Path,
    model_name: str,
    device: str,
    dtype: str,
    out: Path,
    batch_size: int,
    workers: int | None,
    segment_seconds: float,
) -> dict:
    import torch

    from wav2genre_cache.cpu_tuning import keep_freed_memory
    from wav2genre_cache.embed import EmbedOptions, embed_dataset

    keep_freed_memory()  # as `wav2genre embed` does by default
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    summary = embed_dataset(
        EmbedOptions(
            data=str(data),
            out=str(out),
            model=model_name,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            workers=workers,
            segment_seconds=segment_seconds,
        ),
        progress=False,
    )
    elapsed = time.perf_counter() - start  # model load, decode, embed, shard writes and final merge
    return {
        "seconds": elapsed,
        "audio_seconds": summary.audio_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def child(argv: list[str]) -> dict:
    """Run one path in a fresh process and return its JSON result."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *argv], capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"child {argv} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def layer_differences(ours_cache: Path, reference: Path) -> list[float]:
    """Per layer: max |ours - reference| / max |reference| over every segment."""
    from wav2genre_cache.cache import EmbeddingCache

    a = EmbeddingCache(ours_cache).features("wav2vec2")
    b = np.load(reference)
    assert a.shape == b.shape, (a.shape, b.shape)
    return [
        float(np.abs(a[:, i] - b[:, i]).max() / np.abs(b[:, i]).max()) for i in range(b.shape[1])
    ]


def speed(args, tmp: Path) -> dict:
    data = make_workload(tmp / "data", args.tracks)
    common = [
        "--model",
        args.model,
        "--device",
        args.device,
        "--segment-seconds",
        str(args.segment_seconds),
    ]
    ref = child(["reference", str(data), str(tmp / "ref.npy"), *common])
    ref_rate = ref["audio_seconds"] / ref["seconds"]
    print(
        f"reference (transformers, one segment at a time, float32): {ref_rate:,.1f} audio-s/s, "
        f"peak RSS {ref['peak_rss_mb']:,.0f} MB"
        + (f", peak GPU {ref['peak_gpu_mb']:,.0f} MB" if ref["peak_gpu_mb"] else "")
    )
    rows = {"reference": {**ref, "audio_seconds_per_second": ref_rate}}
    for dtype in args.dtypes.split(","):
        cache = tmp / f"ours_{dtype}.h5"
        r = child(
            [
                "ours",
                str(data),
                str(cache),
                *common,
                "--dtype",
                dtype,
                "--batch-size",
                str(args.batch_size),
                *(["--workers", str(args.workers)] if args.workers is not None else []),
            ]
        )
        rate = r["audio_seconds"] / r["seconds"]
        diffs = layer_differences(cache, tmp / "ref.npy")
        rows[f"ours_{dtype}"] = {
            **r,
            "audio_seconds_per_second": rate,
            "ratio": rate / ref_rate,
            "max_relative_difference_per_layer": diffs,
        }
        print(
            f"ours ({dtype}, batch {args.batch_size}): {rate:,.1f} audio-s/s = {rate / ref_rate:.2f}x the "
            f"reference, peak RSS {r['peak_rss_mb']:,.0f} MB"
            + (f", peak GPU {r['peak_gpu_mb']:,.0f} MB" if r["peak_gpu_mb"] else "")
            + f"; max relative difference per layer {max(diffs):.2e} (worst), "
            f"{', '.join(f'{d:.1e}' for d in diffs)}"
        )
    return rows


def memory(args, tmp: Path) -> dict:
    """Peak RSS of embed for 100 and 1,000 tracks, and for one one-hour file (random-tiny: the
    pipeline's memory, not the model's)."""
    out = {}
    for n in (100, 1000):
        data = make_workload(tmp / f"mem{n}", n)
        r = child(
            [
                "ours",
                str(data),
                str(tmp / f"mem{n}.h5"),
                *PIPELINE_ARGS,
            ]
        )
        out[f"tracks_{n}"] = r
        print(f"memory: {n} tracks -> peak RSS {r['peak_rss_mb']:,.0f} MB")
    out["growth_1000_vs_100"] = out["tracks_1000"]["peak_rss_mb"] / out["tracks_100"]["peak_rss_mb"]
    print(f"memory: 1,000 vs 100 tracks: x{out['growth_1000_vs_100']:.2f}")

    import soundfile as sf

    hour = tmp / "hour" / "long"
    hour.mkdir(parents=True)
    clips = sorted(DEV.glob("*/*.flac"))
    with sf.SoundFile(
        hour / "one_hour.wav", "w", samplerate=22_050, channels=1, subtype="PCM_16"
    ) as f:
        written = 0
        while written < 3600 * 22_050:
            audio, _ = sf.read(clips[(written // (30 * 22_050)) % len(clips)], dtype="float32")
            f.write(audio)
            written += len(audio)
    r = child(
        [
            "ours",
            str(tmp / "hour"),
            str(tmp / "hour.h5"),
            *PIPELINE_ARGS,
            "--workers",
            "0",
        ]
    )
    waveform_mb = r["audio_seconds"] * 16_000 * 4 / 2**20
    r["decoded_waveform_mb"] = waveform_mb
    out["one_hour_file"] = r
    print(
        f"memory: one 1-hour file -> peak RSS {r['peak_rss_mb']:,.0f} MB; its 16 kHz float32 waveform is "
        f"{waveform_mb:,.0f} MB, so the rest (Python, torch, model, one block) is {r['peak_rss_mb'] - waveform_mb:,.0f} MB"
    )
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        p = argparse.ArgumentParser()
        p.add_argument("path")
        p.add_argument("data", type=Path)
        p.add_argument("out", type=Path)
        p.add_argument("--model")
        p.add_argument("--device")
        p.add_argument("--dtype", default="float32")
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--workers", type=int, default=None)
        p.add_argument("--segment-seconds", type=float, default=10.0)
        a = p.parse_args(sys.argv[2:])
        if a.path == "reference":
            result = run_reference(a.data, a.model, a.device, a.out, a.segment_seconds)
        else:
            result = run_ours(
                a.data,
                a.model,
                a.device,
                a.dtype,
                a.out,
                a.batch_size,
                a.workers,
                a.segment_seconds,
            )
        print(json.dumps(result))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracks", type=int, default=12, help="clips in the speed workload (30 s each)")
    p.add_argument("--model", default="random-base")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", default=None, help="our dtypes to time (default: float32,bfloat16)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 2 on CPU, 64 on CUDA")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--segment-seconds", type=float, default=10.0)
    p.add_argument("--memory", action="store_true", help="also run the memory checks")
    p.add_argument(
        "--out", default=None, help="JSON result (default benchmarks/results/embed_<device>.json)"
    )
    args = p.parse_args()
    args.dtypes = args.dtypes or "float32,bfloat16"
    args.batch_size = args.batch_size or (64 if args.device == "cuda" else 2)
    with tempfile.TemporaryDirectory() as tmp:
        record = {
            "benchmark": "embed_throughput",
            "machine": machine(args.device),
            "model": args.model,
            "tracks": args.tracks,
            "speed": speed(args, Path(tmp)),
        }
        if args.memory:
            record["memory"] = memory(args, Path(tmp))
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"embed_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


def machine(device: str) -> str:
    text = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if device == "cuda":
        import torch

        text += f", {torch.cuda.get_device_name()}"
    return text


if __name__ == "__main__":
    main()
