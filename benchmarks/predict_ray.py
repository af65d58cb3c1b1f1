"""`predict --engine ray` against local `predict`, same files, same bundle, same machine, same run.

A bundle is trained first (`wav2genre run` on 30 of the real dev clips, 3 per genre, with
--model). Then each engine runs `wav2genre predict DATA --bundle B --output labels.parquet` in its
own process tree on two workloads (the 60 dev clips repeated through symlinks to --tracks, and
to 4x that). For each run: end-to-end wall seconds (the model loaded, and for Ray the runtime
and its actors started), files per wall second, peak memory as the largest sum of PSS over the
process tree, and the output's bytes per file. From the two sizes, per engine: the marginal rate
(extra files over extra wall time: the steady state) and the fixed overhead (wall time beyond
what that rate explains); the same for CPU time (the process tree's, user + system), which other
work on the machine does not inflate as it does wall time. Prints the ratios ray/local, and whether the two engines' rows agree
(labels equal, largest score difference).

    python benchmarks/predict_ray.py                          # random-tiny, 24 and 96 files
    python benchmarks/predict_ray.py --model random-base --tracks 12
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from embed_throughput import DEV, make_workload  # noqa: E402
from processes import descendants  # noqa: E402
from ray_engine import pss_mb  # noqa: E402

ENV = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # loopback only, always


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "wav2genre_cache", *args]


def train_bundle(root: Path, model: str) -> Path:
    """A bundle of `model` trained on 3 dev clips per genre (logistic regression, best layer)."""
    rows = ["path,label"]
    for genre in sorted(p for p in DEV.iterdir() if p.is_dir()):
        rows += [f"{clip},{genre.name}" for clip in sorted(genre.glob("*.flac"))[:3]]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    subprocess.run(cli("run", str(root / "manifest.csv"), "--out", str(root / "run"),
                       "--model", model, "--heads", "logreg", "--layers", "best"),
                   check=True, capture_output=True, env=ENV)  # fmt: skip
    return root / "run" / "best"


def cpu_seconds(pids: set[int]) -> dict[tuple[int, int], float]:
    """(pid, start time) -> user + system CPU seconds so far, of each process that runs."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        found[(pid, int(fields[19]))] = (int(fields[11]) + int(fields[12])) / tick
    return found


def run_engine(engine: str, data: Path, bundle: Path, out: Path) -> dict:
    """One `predict --output` run in its own process tree: wall time, rate, peak PSS."""
    cmd = cli("predict", str(data), "--bundle", str(bundle), "--output", str(out),
              "--engine", engine)  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    peak, cpu = 0.0, {}
    while proc.poll() is None:
        tree = {proc.pid, *descendants(proc.pid)}
        peak = max(peak, pss_mb(tree))
        cpu |= cpu_seconds(tree)
        time.sleep(0.5)
    seconds = time.perf_counter() - start
    _, stderr = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"{engine} predict failed:\n{stderr[-3000:]}")
    import pyarrow.parquet as pq

    files = pq.read_metadata(out).num_rows
    return {
        "wall_seconds": seconds,
        "files": files,
        "files_per_second": files / seconds,
        "peak_pss_mb": peak,
        # CPU time of the process tree (each process as last seen, sampled every 0.5 s): what
        # the files cost whatever else shares the cores, where wall time depends on that.
        "cpu_seconds": sum(cpu.values()),
        "output_bytes_per_file": out.stat().st_size / files,
    }


def agreement(a: Path, b: Path) -> dict:
    """How far the two engines' rows are apart: label mismatches and the largest score gap."""
    import pyarrow.parquet as pq

    ra, rb = pq.read_table(a).to_pylist(), pq.read_table(b).to_pylist()
    gaps = [
        abs(s["score"] - t["score"])
        for x, y in zip(ra, rb, strict=True)
        for s, t in zip(x["top"] or [], y["top"] or [], strict=True)
    ]
    return {
        "same_files_in_order": [r["file"] for r in ra] == [r["file"] for r in rb],
        "label_mismatches": sum(x["label"] != y["label"] for x, y in zip(ra, rb, strict=True)),
        "max_score_difference": max(gaps, default=0.0),
    }


def steady(result: dict, engine: str, small: int, large: int) -> dict:
    """The marginal rate between the two sizes, and the fixed overhead it leaves."""
    s, big = result[f"{engine}_{small}"], result[f"{engine}_{large}"]
    rate = (big["files"] - s["files"]) / (big["wall_seconds"] - s["wall_seconds"])
    cpu = (big["cpu_seconds"] - s["cpu_seconds"]) / (big["files"] - s["files"])
    return {
        "files_per_second": rate,
        "seconds_per_file": 1 / rate,
        "fixed_overhead_seconds": big["wall_seconds"] - big["files"] / rate,
        "cpu_seconds_per_file": cpu,
        "fixed_cpu_seconds": big["cpu_seconds"] - big["files"] * cpu,
    }


def cpu_model() -> str:
    """The CPU's model name (Linux), else what platform says."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        return next(line.split(":", 1)[1].strip() for line in text.splitlines()
                    if line.startswith("model name"))  # fmt: skip
    except (OSError, StopIteration):
        return platform.processor() or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random-tiny")
    ap.add_argument("--tracks", type=int, default=24, help="the smaller size; the larger is 4x")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/predict_ray_cpu.json"))
    args = ap.parse_args()
    result = {
        "benchmark": "predict_ray",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {cpu_model()}, "
        f"Python {platform.python_version()}",
        "load_average_at_start": list(os.getloadavg()),
        "model": args.model,
        "clips": "real dev clips (30 s GTZAN FLAC, 22,050 Hz mono), repeated",
        "command": f"python benchmarks/predict_ray.py --model {args.model} --tracks {args.tracks}",
    }
    small, large = args.tracks, 4 * args.tracks
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = train_bundle(tmp, args.model)
        for n in (small, large):
            data = make_workload(tmp / f"data{n}", n)
            for engine in ("local", "ray"):
                r = run_engine(engine, data, bundle, tmp / f"{engine}{n}.parquet")
                result[f"{engine}_{n}"] = r
                print(f"{engine:5s} {n:4d} files: {r['wall_seconds']:7.1f} s wall, "
                      f"{r['files_per_second']:6.2f} files/s end to end, peak PSS "
                      f"{r['peak_pss_mb']:,.0f} MB", flush=True)  # fmt: skip
            result[f"agreement_{n}"] = agreement(tmp / f"local{n}.parquet", tmp / f"ray{n}.parquet")
    for engine in ("local", "ray"):
        result[f"{engine}_steady"] = s = steady(result, engine, small, large)
        print(f"{engine:5s} steady state {s['files_per_second']:6.2f} files/s, fixed overhead "
              f"{s['fixed_overhead_seconds']:5.1f} s; {s['cpu_seconds_per_file']:.3f} CPU-s per "
              f"file, {s['fixed_cpu_seconds']:.1f} CPU-s fixed")  # fmt: skip
    result["ratio_end_to_end"] = (
        result[f"ray_{large}"]["files_per_second"] / result[f"local_{large}"]["files_per_second"]
    )
    result["ratio_steady"] = (
        result["ray_steady"]["files_per_second"] / result["local_steady"]["files_per_second"]
    )
    result["ray_fixed_overhead_beyond_local_seconds"] = (
        result["ray_steady"]["fixed_overhead_seconds"]
        - result["local_steady"]["fixed_overhead_seconds"]
    )
    result["load_average_at_end"] = list(os.getloadavg())
    print(f"ray/local files/s: {result['ratio_end_to_end']:.2f}x end to end at {large} files, "
          f"{result['ratio_steady']:.2f}x in the steady state; Ray's fixed overhead "
          f"{result['ray_fixed_overhead_beyond_local_seconds']:.1f} s beyond local's; rows: "
          f"{result[f'agreement_{large}']}")  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
