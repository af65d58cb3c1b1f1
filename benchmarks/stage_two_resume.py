"""A `train-heads --trials` search and a `cross-validate --out` killed half-way and resumed (issue
25): seconds of the uninterrupted run, of the resumed run and of a re-run of the finished one,
as ratios of the uninterrupted run, with the results compared.

A synthetic cache (wav2genre_cache.testing); each command runs in a process of its own
(OMP_NUM_THREADS=1), is killed with SIGKILL once half its steps (trials, fold scores) are kept,
then run again, then run once more finished; --repeats times, the median kept. Wall seconds
swing with whatever else the machine runs; CPU seconds (user + system of the process) much
less, so the ratios are of CPU seconds. `startup` is `wav2genre --version` (the command line
without the model libraries, which every timed run also imports). Prints and writes benchmarks/results/stage_two_resume.json.

    python benchmarks/stage_two_resume.py [--trials 16] [--tracks 120] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}
TIMING = {"fit_seconds", "predict_seconds"}


def command(*args: str) -> list[str]:
    """The real command line."""
    return [sys.executable, "-m", "wav2genre_cache", *args]


def timed(args: list[str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of one run to its end, and its stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(args, env=ENV, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu, done.stderr


def killed_at(args: list[str], kept, half: int) -> int:
    """Run until `half` steps are kept, then SIGKILL; the number kept."""
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while len(kept()) < half:
        if proc.poll() is not None:
            raise SystemExit(f"{args}: finished before {half} steps were kept")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(kept())


def untimed(value):
    """metrics.json without its timings (they differ between any two runs)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def measure(name: str, args_for, kept_for, total: int, result_of, repeats: int) -> dict:
    """Uninterrupted, killed at half and resumed, finished and re-run: seconds and ratios."""
    runs = []
    for r in range(repeats):
        full = timed(args_for(f"full{r}"))
        kept = killed_at(args_for(f"run{r}"), kept_for(f"run{r}"), total // 2)
        resumed = timed(args_for(f"run{r}"))
        rerun = timed(args_for(f"run{r}"))
        same = result_of(f"run{r}") == result_of(f"full{r}")
        runs.append((full, kept, resumed, rerun, same))

    def median(phase: int, what: int) -> float:
        return round(statistics.median(run[phase][what] for run in runs), 2)

    out = {
        "steps": total,
        "kept_when_killed": [run[1] for run in runs],
        "same_result": all(run[4] for run in runs),
        **{
            f"{phase}_{kind}_seconds": median(i, k)
            for i, phase in ((0, "full"), (2, "resumed"), (3, "finished_rerun"))
            for k, kind in ((0, "wall"), (1, "cpu"))
        },
        "resumed_over_full_cpu": round(median(2, 1) / median(0, 1), 3),
        "rerun_over_full_cpu": round(median(3, 1) / median(0, 1), 3),
        "resumed_log": [line for line in runs[-1][2][2].splitlines() if "read back" in line],
        "rerun_log": [line for line in runs[-1][3][2].splitlines() if "read back" in line],
    }
    print(name, json.dumps(out, indent=1), flush=True)
    return out


def main() -> None:
    """Both commands, measured in one process run; print and write the result."""
    from wav2genre_cache.testing.synthetic import write_synthetic_cache

    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--tracks", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    a = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="stage_two_resume-"))
    cache = write_synthetic_cache(
        tmp / "c.h5", n_tracks=a.tracks, n_layers=2, dim=32, n_labels=4, segments_per_track=2
    )
    startup = timed(command("--version"))[:2]

    search = ("--heads", "fcnn", "--layers", "0", "--trials", str(a.trials), "--selection", "valid")
    trials = measure(
        f"train-heads {' '.join(search)}",
        lambda run: command("train-heads", str(cache), "--out", str(tmp / run), *search),
        lambda run: lambda: list((tmp / run / "jobs").glob("*/*/*.steps/*/step.json")),
        a.trials,
        lambda run: untimed(json.loads((tmp / run / "metrics.json").read_text())),
        a.repeats,
    )
    cv = (
        "--feature-set",
        "encoder",
        "--heads",
        "fcnn,logreg,svm",
        "--folds",
        "5",
        "--repeats",
        "3",
    )
    crossval = measure(
        f"cross-validate {' '.join(cv)}",
        lambda run: command("cross-validate", str(cache), *cv, "--out", str(tmp / f"{run}.json")),
        lambda run: lambda: list((tmp / f"{run}.json.folds").glob("*/step.json")),
        5 * 3 * 3,
        lambda run: (tmp / f"{run}.json").read_bytes(),
        a.repeats,
    )
    result = {
        "command": "python benchmarks/stage_two_resume.py " + " ".join(sys.argv[1:]),
        "cache": {"tracks": a.tracks, "dim": 32, "labels": 4, "segments_per_track": 2},
        "cpus": os.cpu_count(),
        "repeats": a.repeats,
        "startup_wall_seconds": round(startup[0], 2),
        "startup_cpu_seconds": round(startup[1], 2),
        "train_heads_trials": {"options": " ".join(search), **trials},
        "cross_validate": {"options": " ".join(cv), **crossval},
    }
    out = ROOT / "benchmarks" / "results" / "stage_two_resume.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
