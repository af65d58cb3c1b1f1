"""Peak memory of `predict` and `embed` on one long file, against its duration (issue 25 item 10).

WAVs of 30 s, 1 h and 3 h (16 kHz mono 16-bit: a tone with noise, written block by block with
soundfile) are made in a temporary folder; a bundle is trained there with random-tiny on short
tones. Each command is the real one (`python -m wav2genre_cache ...`) in a subprocess of its
own; its peak RSS is read from os.wait4: that process's, or its decode worker's where that is
larger (a reaped child's peak counts), never the benchmark's. `embed` runs with one decode
worker and streams a file over 10 minutes as `predict` does. The slope is the peak's
growth per hour of audio between the shortest and the longest file (a 16 kHz float32 waveform
is 220 MB per hour: a slope near that or above means the file is held whole).

    python benchmarks/long_files.py [--durations 30,3600,10800] [--commands predict,embed]
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

import numpy as np
import soundfile as sf

SR = 16_000
HERE = Path(__file__).resolve().parent
WAVEFORM_MB_PER_HOUR = 3600 * SR * 4 / 2**20


def write_long_wav(path: Path, seconds: float, block_seconds: float = 60.0) -> Path:
    """A tone with noise, written in blocks: the benchmark itself never holds the file."""
    rng = np.random.default_rng(0)
    n, done = int(seconds * SR), 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(path, "w", SR, 1, "PCM_16") as f:
        while done < n:
            k = min(int(block_seconds * SR), n - done)
            t = (done + np.arange(k)) / SR
            x = 0.3 * np.sin(2 * np.pi * (220 + 40 * np.sin(t / 7)) * t)
            f.write((x + 0.05 * rng.standard_normal(k)).astype(np.float32))
            done += k
    return path


def run(args: list[str]) -> dict:
    """`python -m wav2genre_cache ARGS` in its own process: exit, seconds, peak RSS (MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wav2genre_cache", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = {
        "exit": proc.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }
    if proc.returncode != 0:
        out["stderr_tail"] = stderr[-600:]
    return out


def make_bundle(tmp: Path, model: str) -> Path:
    """A random-tiny bundle trained on 12 tones of two labels, 10 s segments (embed's default)."""
    for i in range(6):
        for label, freq in (("low", 200.0), ("high", 900.0)):
            p = tmp / "train" / label / f"{label}{i}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            t = np.arange(12 * SR) / SR
            sf.write(p, 0.3 * np.sin(2 * np.pi * freq * (1 + 0.02 * i) * t), SR)
    for args in (
        ["embed", str(tmp / "train"), "--out", str(tmp / "c.h5"), "--model", model,
         "--workers", "0"],
        ["train-heads", str(tmp / "c.h5"), "--out", str(tmp / "run"), "--heads", "logreg"],
    ):  # fmt: skip
        r = run(args)
        if r["exit"] != 0:
            raise SystemExit(f"{args[0]} failed: {r}")
    return tmp / "run" / "best"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--durations", default="30,3600,10800", help="seconds, comma-separated")
    ap.add_argument("--commands", default="predict,embed")
    ap.add_argument("--model", default="random-tiny")
    ap.add_argument("--out", default=str(HERE / "results" / "long_files.json"))
    args = ap.parse_args()
    durations = [float(d) for d in args.durations.split(",")]
    commands = args.commands.split(",")
    result = {
        "benchmark": "long_files",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "model": args.model,
        "command": " ".join(["python", "benchmarks/long_files.py", *sys.argv[1:]]),
        "load_average_at_start": os.getloadavg(),
        "rows": {c: {} for c in commands},
    }
    with tempfile.TemporaryDirectory(prefix="long_files_") as tmp:
        tmp = Path(tmp)
        bundle = make_bundle(tmp, args.model) if "predict" in commands else None
        for seconds in durations:
            name = f"{seconds:g}s"
            wav = write_long_wav(tmp / "long" / "x" / f"{name}.wav", seconds)
            if "predict" in commands:
                r = run(["predict", "--bundle", str(bundle), str(wav), "--json"])
                result["rows"]["predict"][name] = {"audio_seconds": seconds, **r}
                print(f"predict {name}: {r}", flush=True)
            if "embed" in commands:
                manifest = tmp / f"{name}.csv"
                manifest.write_text(f"path,label,split\n{wav},x,train\n")
                r = run(["embed", str(manifest), "--out", str(tmp / f"{name}.h5"),
                         "--model", args.model, "--workers", "1"])  # fmt: skip
                result["rows"]["embed"][name] = {"audio_seconds": seconds, **r}
                print(f"embed {name}: {r}", flush=True)
            wav.unlink()
    for command, rows in result["rows"].items():
        first, last = rows[f"{durations[0]:g}s"], rows[f"{durations[-1]:g}s"]
        hours = (last["audio_seconds"] - first["audio_seconds"]) / 3600
        slope = (last["peak_rss_mb"] - first["peak_rss_mb"]) / hours if hours else 0.0
        rows["slope_mb_per_hour"] = round(slope, 1)
        rows["slope_vs_waveform"] = round(slope / WAVEFORM_MB_PER_HOUR, 2)
        print(
            f"{command}: peak RSS {first['peak_rss_mb']:.0f} MB at {durations[0]:g} s, "
            f"{last['peak_rss_mb']:.0f} MB at {durations[-1]:g} s: {slope:+.0f} MB per hour "
            f"({slope / WAVEFORM_MB_PER_HOUR:.2f}x a float32 waveform's {WAVEFORM_MB_PER_HOUR:.0f})"
        )
    result["load_average_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
