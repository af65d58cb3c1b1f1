"""The Ray engine against the local engine, same audio, same machine, same run.

Each engine runs `wav2genre embed` in its own process tree on two workloads (the real dev
clips, repeated through symlinks to --tracks, and to 4x that). For each run: end-to-end wall
seconds (model loading and, for Ray, starting the runtime and its actors included), audio
seconds per wall second, and peak memory as the largest sum of PSS over the process tree
(proportional set size: shared pages, Ray's object store included, counted once), sampled once
a second. From the two sizes, per engine: the marginal rate (extra audio over extra wall time:
the steady state) and the fixed overhead (wall time beyond what the marginal rate explains).
Prints the ratios ray/local (target: at least 0.8) end to end at the larger size and in the
steady state, and the largest difference between the two engines' caches. Also the decode cost
per core for docs/scaling.md: one process decoding, resampling and segmenting every clip
(features.prepare_track), audio seconds per CPU second.

    python benchmarks/ray_engine.py                       # pip:whisper-tiny.en where installed
    python benchmarks/ray_engine.py --model random-base --tracks 12
    python benchmarks/ray_engine.py --decode-only --out benchmarks/results/decode_cost_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from embed_throughput import DEV, make_workload  # noqa: E402
from processes import descendants  # noqa: E402


def pss_mb(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total / 1024


def run_engine(engine: str, data: Path, out: Path, model: str, device: str) -> dict:
    cmd = [sys.executable, "-m", "wav2genre_cache", "embed", str(data), "--out", str(out),
           "--model", model, "--device", device, "--engine", engine]  # fmt: skip
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # loopback only, always
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, pss_mb({proc.pid, *descendants(proc.pid)}))
        time.sleep(1.0)
    seconds = time.perf_counter() - start
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"{engine} engine failed:\n{stderr[-3000:]}")
    said = re.search(
        r"Embedded .*? \(.*?, ([\d,.]+) s of audio\).*?: ([\d,.]+) audio-seconds", stderr
    )
    audio = float(said.group(1).replace(",", ""))
    return {
        "wall_seconds": seconds,
        "audio_seconds": audio,
        "audio_seconds_per_second": audio / seconds,
        "in_run_audio_seconds_per_second": float(said.group(2).replace(",", "")),
        "peak_pss_mb": peak,
    }


def decode_rate(clips: list[Path]) -> dict:
    """One process: decode, resample, segment every clip; audio seconds per CPU second."""
    from wav2genre_cache.stage_one.per_track import PrepareOptions, prepare_track

    plan = PrepareOptions(10.0, None)
    audio, cpu = 0.0, time.process_time()
    for clip in clips:
        track, reason = prepare_track((str(clip), clip.stem, False), plan)
        assert track is not None, reason
        audio += track.duration
    cpu = time.process_time() - cpu
    return {"clips": len(clips), "audio_seconds": audio, "cpu_seconds": cpu,
            "audio_seconds_per_cpu_second": audio / cpu}  # fmt: skip


def decode_costs(folder: Path) -> dict:
    """Decode cost of the dev clips as they are (FLAC, 22,050 Hz mono) and as a catalogue's MP3s.

    The MP3s are the first 20 clips re-encoded at 44,100 Hz stereo (libsndfile's MP3 encoder):
    FMA's and most previews' format, and the dearer one to decode and resample.
    """
    import soundfile as sf
    import soxr

    clips = sorted(DEV.glob("*/*.flac"))
    mp3s = []
    for clip in clips[:20]:
        y, sr = sf.read(clip, dtype="float32")
        y = soxr.resample(y, sr, 44_100)
        mp3s.append(folder / f"{clip.stem}.mp3")
        sf.write(mp3s[-1], np.stack([y, y], axis=1), 44_100, format="MP3")
    return {"flac_22050_mono": decode_rate(clips), "mp3_44100_stereo": decode_rate(mp3s)}


def default_model() -> str:
    try:
        from wav2genre_cache.encoders.ct2.whisper import PIP_MODELS, pip_model_files

        pip_model_files(PIP_MODELS["pip:whisper-tiny.en"])
        return "pip:whisper-tiny.en"
    except Exception:
        return "random-base"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--tracks", type=int, default=60, help="the smaller size; the larger is 4x")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--decode-only", action="store_true", help="only the decode cost per core")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/ray_engine_cpu.json"))
    args = ap.parse_args()
    model = args.model or default_model()
    from wav2genre_cache.store.cache import EmbeddingCache

    result = {
        "benchmark": "ray_engine",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "model": model,
        "tracks": args.tracks,
        "device": args.device,
    }
    sizes = (args.tracks, 4 * args.tracks)
    with tempfile.TemporaryDirectory() as tmp:
        result["decode"] = decode_costs(Path(tmp))
        for kind, r in result["decode"].items():
            print(f"decode {kind}: {r['audio_seconds_per_cpu_second']:,.0f} audio-s per CPU-s")
        if args.decode_only:
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
            print(f"wrote {args.out}")
            return
        for n in sizes:
            data = make_workload(Path(tmp) / f"data{n}", n)
            for engine in ("local", "ray"):
                r = run_engine(engine, data, Path(tmp) / f"{engine}{n}.h5", model, args.device)
                result[f"{engine}_{n}"] = r
                print(f"{engine:5s} {n:4d} tracks: {r['wall_seconds']:7.1f} s wall, "
                      f"{r['audio_seconds_per_second']:7.1f} audio-s/s end to end, "
                      f"peak PSS {r['peak_pss_mb']:,.0f} MB", flush=True)  # fmt: skip
            a = EmbeddingCache(Path(tmp) / f"local{n}.h5").features()
            b = EmbeddingCache(Path(tmp) / f"ray{n}.h5").features()
            result[f"max_abs_difference_{n}"] = float(np.abs(a - b).max())
    small, large = sizes
    for engine in ("local", "ray"):
        s, big = result[f"{engine}_{small}"], result[f"{engine}_{large}"]
        rate = (big["audio_seconds"] - s["audio_seconds"]) / (
            big["wall_seconds"] - s["wall_seconds"]
        )
        result[f"{engine}_steady"] = {
            "audio_seconds_per_second": rate,
            "fixed_overhead_seconds": big["wall_seconds"] - big["audio_seconds"] / rate,
        }
        print(f"{engine:5s} steady state {rate:7.1f} audio-s/s, fixed overhead "
              f"{result[f'{engine}_steady']['fixed_overhead_seconds']:5.1f} s")  # fmt: skip
    result["ratio_end_to_end"] = (
        result[f"ray_{large}"]["audio_seconds_per_second"]
        / result[f"local_{large}"]["audio_seconds_per_second"]
    )
    result["ratio_steady"] = (
        result["ray_steady"]["audio_seconds_per_second"]
        / result["local_steady"]["audio_seconds_per_second"]
    )
    print(f"ray/local throughput: {result['ratio_end_to_end']:.2f}x end to end at {large} "
          f"tracks, {result['ratio_steady']:.2f}x in the steady state (target >= 0.8); largest "
          f"feature difference {max(result[f'max_abs_difference_{n}'] for n in sizes):.3g}")  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
