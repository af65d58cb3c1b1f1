"""The CPU levers of cpu_tuning.py: one bfloat16 call of random-base on two 10 s segments.

Times transformers' model in bfloat16 untouched, with every lever, with the levers on by default
(cpu_tuning.DEFAULT_LEVERS and the heap setting of embed/run), and with every lever but one
(what each lever is worth where the others are already in place), each in a fresh process (the
heap setting is process-wide), all in the same run. Also times the host's work per batch of 64 segments, the
old way (copy each segment, stack, normalise in numpy) against the new (fill one batch in place;
on CUDA the normalisation runs on the GPU).

    python benchmarks/cpu_levers.py [--out FILE] [--rounds N]

With --rounds N every configuration runs N times, the rounds interleaved, and the fastest run
counts (another process's work only adds time: on 2 cores it made a call up to 7x slower). Before
each configuration the script waits for nothing else to be runnable (--quiet-wait seconds at
most); each run records its CPU seconds per wall second (2 on 2 free cores), and one that had
less than 90% of the cores is run again (--tries per round) and does not count while a clean
one exists. The record names the CPU and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LEVERS = ("eager-attention", "heap", "channels-last-encoder", "packed-and-fused", "position-conv")


def time_call(levers: set[str], repeats: int = 8) -> dict:
    """Median seconds of one model call with the given levers applied, and the process's CPU
    seconds per wall second over the timed calls (about its thread count when it had the cores
    to itself, less when another process took some)."""
    import torch

    from wav2genre_cache.encoders import cpu_tuning as ct
    from wav2genre_cache.encoders.sources import builtin_model

    model = builtin_model("random-base").eval().to(torch.bfloat16)
    if "heap" in levers:
        ct.keep_freed_memory()
    # packed-and-fused: oneDNN-packed linear weights, and GELUs fused into the layers before.
    ct.tune_for_cpu(model, levers=frozenset(levers) & frozenset(ct.LEVERS))
    x = torch.randn(2, 160_000, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            if i == 2:
                cpu_start = time.process_time()
            start = time.perf_counter()
            model(x, output_hidden_states=True)
            if i >= 2:  # the first calls set up kernels
                times.append(time.perf_counter() - start)
    cpu_per_wall = (time.process_time() - cpu_start) / sum(times)
    return {"seconds": float(np.median(times)), "cpu_per_wall": round(cpu_per_wall, 2)}


def wait_for_quiet(limit: float, samples: int = 10) -> float:
    """Wait (at most `limit` seconds) until nothing but us is runnable for `samples` tenths of a
    second in a row, from /proc/loadavg; the seconds waited."""
    start = time.perf_counter()
    quiet = 0
    while quiet < samples and time.perf_counter() - start < limit:
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return 0.0
        quiet = quiet + 1 if running <= 1 else 0
        time.sleep(0.1)
    return round(time.perf_counter() - start, 1)


def host_work(batch: int = 64, repeats: int = 5) -> dict:
    """Milliseconds of the feeding thread's work per batch, the old way and the new."""
    from wav2genre_cache.audio.decode import normalize_segments

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


def cpu_name() -> str:
    """The CPU's model name and its bfloat16 features, from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if "model name" in ln), "")
    flags = set(next((ln for ln in text.splitlines() if ln.startswith("flags")), "").split())
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({os.cpu_count()} cores; {', '.join(bf16) or 'no native bfloat16'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cpu_levers.json")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before each configuration, wait up to this many seconds for no other runnable task",
    )
    parser.add_argument(
        "--min-cpu-per-wall",
        type=float,
        default=0.9 * (os.cpu_count() or 1),
        help="a run below this shared the cores with another process: it is run again",
    )
    parser.add_argument("--tries", type=int, default=4, help="runs of a configuration per round")
    parser.add_argument("--levers", help=argparse.SUPPRESS)  # one configuration, in a child
    args = parser.parse_args()
    if args.levers is not None:
        print(json.dumps(time_call(set(filter(None, args.levers.split(","))))))
        return
    load_before = os.getloadavg()
    from wav2genre_cache.encoders.cpu_tuning import DEFAULT_LEVERS

    # "default": what embed and run apply unless WAV2GENRE_CPU_LEVERS says otherwise.
    default = tuple(x for x in LEVERS if x in DEFAULT_LEVERS or x == "heap")
    configs = [("none (transformers)", ()), ("all", LEVERS), ("default", default)]
    configs += [(f"all but {lever}", tuple(x for x in LEVERS if x != lever)) for lever in LEVERS]
    runs: dict[str, list[dict]] = {name: [] for name, _ in configs}
    for r in range(args.rounds):
        for name, levers in configs:
            for _ in range(args.tries):
                waited = wait_for_quiet(args.quiet_wait)
                proc = subprocess.run(
                    [sys.executable, __file__, "--levers", ",".join(levers)],
                    capture_output=True,
                    text=True,
                )
                if proc.returncode != 0:
                    sys.exit(f"{name} failed:\n{proc.stderr[-2000:]}")
                run = json.loads(proc.stdout.strip().splitlines()[-1])
                run = {**run, "round": r + 1, "waited_for_quiet_s": waited}
                runs[name].append(run)
                print(
                    f"round {r + 1} {name:36s} {run['seconds'] * 1000:6.0f} ms  "
                    f"{20 / run['seconds']:5.1f} audio-s/s  cpu/wall {run['cpu_per_wall']:.2f}  "
                    f"(waited {waited:.0f} s for quiet)",
                    flush=True,
                )
                if run["cpu_per_wall"] >= args.min_cpu_per_wall:
                    break
    # The fastest undisturbed run's median: another process's work only ever adds time.
    rows = {}
    for name, rs in runs.items():
        clean = [x["seconds"] for x in rs if x["cpu_per_wall"] >= args.min_cpu_per_wall]
        rows[name] = min(clean or [x["seconds"] for x in rs])
        if not clean:
            print(f"warning: every run of {name} shared the cores", flush=True)
    none = rows["none (transformers)"]
    print(f"all levers: {none / rows['all']:.2f}x transformers' model")
    print(f"default levers ({', '.join(default)}): {none / rows['default']:.2f}x")
    worth = {lever: rows[f"all but {lever}"] / rows["all"] - 1 for lever in LEVERS}
    for lever in LEVERS:
        print(f"  {lever:24s} worth {worth[lever]:+.0%} with the others in")
    host = host_work()
    print(
        f"host work per 64 segments: copy+stack+normalise {host['copy_stack_normalise_ms']:.0f} ms, "
        f"fill in place {host['fill_in_place_ms']:.0f} ms"
    )
    record = {
        "benchmark": "cpu_levers",
        "cpu": cpu_name(),
        "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
        "rounds": args.rounds,
        "seconds_per_call": rows,
        "worth_with_the_others_in": {k: round(v, 4) for k, v in worth.items()},
        "all_levers_speedup": round(none / rows["all"], 3),
        "default_levers": list(default),
        "default_levers_speedup": round(none / rows["default"], 3),
        "seconds_per_call_is": (
            "per configuration, the fastest median of 8 calls among the runs that had the cores "
            "to themselves (CPU seconds per wall second >= min_cpu_per_wall)"
        ),
        "min_cpu_per_wall": args.min_cpu_per_wall,
        "each_round": runs,
        "host": host,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
