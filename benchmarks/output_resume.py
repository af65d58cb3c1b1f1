"""A 10,000-row `predict --output` killed half-way and resumed gives the file an uninterrupted
run gives (issue 26's catalogue check, at a size the test suite cannot afford; the suite's
tests/inference/test_predict_output.py does the same with 41 files).

Synthetic clips: 10,000 inputs (symbolic links to 5 short tones, so each is its own file and
row), a random-tiny bundle trained on tones, `--output labels.jsonl`; the real command is
killed with SIGKILL once half the rows are written, run again with --resume, and compared row
for row with an uninterrupted run. Prints and writes benchmarks/results/output_resume.json.

    python benchmarks/output_resume.py [--files 10000] [--runtime torch|onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def wav2genre(*args: str, **kw) -> subprocess.Popen:
    """The real command, in a process of its own."""
    return subprocess.Popen([sys.executable, "-m", "wav2genre_cache", *args], **kw)


def main() -> None:
    """Kill half-way, resume, compare with an uninterrupted run; print and write the result."""
    from conftest import make_label_folder, write_audio

    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument(
        "--runtime", default="torch", help="torch, or onnx: the bundle exported (the same writer)"
    )
    options = parser.parse_args()
    n = options.files
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_label_folder(root / "data", per_label=5, seconds=2.0)
        train = wav2genre("run", str(data), "--out", str(root / "run"), "--model", "random-tiny",
                          "--heads", "logreg", "--layers", "best", "--segment-seconds", "1",
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        if train.wait() != 0:
            sys.exit(train.stderr.read().decode()[-2000:])
        tones = [write_audio(root / f"tone{i}.wav", 1.2, freq=200 + 90 * i) for i in range(5)]
        songs = root / "songs"
        songs.mkdir()
        for i in range(n):
            os.symlink(tones[i % 5], songs / f"song{i:06d}.wav")
        bundle = root / "run" / "bundles" / "logreg"
        args = ["predict", str(songs), "--bundle", str(bundle)]
        if options.runtime == "onnx":
            export = wav2genre("export", str(bundle), "--onnx", str(root / "onnx"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
            if export.wait() != 0:
                sys.exit(export.stderr.read().decode()[-2000:])
            args = ["predict", str(songs), "--bundle", str(root / "onnx"), "--runtime", "onnx"]
        killed, whole = root / "killed.jsonl", root / "whole.jsonl"

        start = time.perf_counter()
        proc = wav2genre(*args, "-o", str(killed), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)  # fmt: skip
        while not killed.exists() or killed.read_bytes().count(b"\n") < n // 2:
            if proc.poll() is not None:
                sys.exit("the run ended before half of it was written")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rows_at_kill = killed.read_bytes().count(b"\n")
        if wav2genre(*args, "-o", str(killed), "--resume", stderr=subprocess.DEVNULL).wait():
            sys.exit("the resumed run failed")
        killed_seconds = time.perf_counter() - start

        start = time.perf_counter()
        if wav2genre(*args, "-o", str(whole), stderr=subprocess.DEVNULL).wait():
            sys.exit("the uninterrupted run failed")
        whole_seconds = time.perf_counter() - start

        resumed_rows = killed.read_text().splitlines()
        whole_rows = whole.read_text().splitlines()
        result = {
            "command": f"python benchmarks/output_resume.py --files {n} --runtime {options.runtime}",
            "files": n,
            "rows_when_killed": rows_at_kill,
            "rows_after_resume": len(resumed_rows),
            "distinct_files": len({json.loads(r)["file"] for r in resumed_rows}),
            "same_rows_as_uninterrupted": sorted(resumed_rows) == sorted(whole_rows),
            "same_order_as_uninterrupted": resumed_rows == whole_rows,
            "seconds_killed_and_resumed": round(killed_seconds, 1),
            "seconds_uninterrupted": round(whole_seconds, 1),
            "machine": f"{os.cpu_count()} cores",
        }
    print(json.dumps(result, indent=1))
    out = ROOT / "benchmarks" / "results" / "output_resume.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    if not result["same_rows_as_uninterrupted"]:
        sys.exit("the resumed file differs from the uninterrupted one")


if __name__ == "__main__":
    main()
