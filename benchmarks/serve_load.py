"""Load on `wav2genre serve`: 50 concurrent uploads of 30 s clips to a random-base bundle on 127.0.0.1.

Trains a bundle on the dev clips (default: the untrained base-size backbone, the real model's
arithmetic), then for each server setting (one process answering one upload per model call;
the same batching the uploads that wait for the model, --max-batch 4; 2 and 4 worker
processes) starts the server, times one clip alone, sends 50 uploads all at once, and
records requests per second, p50/p95 latency, errors, lost requests and each worker's RSS.
Settings run one after the other in one run, so their ratios share the machine's load (the load
average before and after each is recorded: other work on the machine shows there).

    python benchmarks/serve_load.py [--requests 50] [--concurrency 50] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEV = Path(os.environ.get("WAV2GENRE_SHARED", ROOT.parent / "shared")) / "data" / "gtzan_dev"


def cli(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "wav2genre_cache", *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def train_bundle(tmp: Path, model: str) -> Path:
    """A logreg bundle on the dev clips numbered 0-2 of each genre."""
    clips = sorted(DEV.glob("*/*.flac"))
    manifest = tmp / "m.csv"
    rows = ["path,label"] + [f"{c},{c.parent.name}" for c in clips if int(c.stem.split(".")[1]) < 3]
    manifest.write_text("\n".join(rows) + "\n")
    print(f"training a {model} bundle on {len(rows) - 1} clips...", flush=True)
    cli("run", str(manifest), "--out", f"{tmp}/run", "--model", model, "--heads", "logreg",
        "--layers", "best")  # fmt: skip
    return tmp / "run" / "best"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A /proc/PID/status memory figure in MB (0 if the process is gone)."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def workers_of(pid: int) -> list[int]:
    """The server's worker processes: its children but multiprocessing's resource tracker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_text()
        except OSError:
            continue
        if ppid == pid and "resource_tracker" not in cmd:
            found.append(int(entry.name))
    return found


def start_server(
    bundle: Path, log: Path, workers: int, max_batch: int
) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "wav2genre_cache", "serve", "--bundle", str(bundle)]
        + ["--port", str(port), "--workers", str(workers), "--max-batch", str(max_batch)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 600
    while log.read_text().count("Application startup complete") < workers:
        if server.poll() is not None or time.time() > deadline:
            sys.exit(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.2)
    return server, f"http://127.0.0.1:{port}"


def one(url: str, name: str, data: bytes) -> tuple[float, int, str]:
    """(seconds, status, problem) of one upload; problem is empty for a good answer."""
    start = time.perf_counter()
    try:
        r = httpx.post(url + "/api/predict", files={"file": (name, data)}, timeout=900)
        ok = r.status_code == 200 and len(r.json()["timeline"]) == 3
        return time.perf_counter() - start, r.status_code, "" if ok else r.text[:200]
    except httpx.HTTPError as exc:
        return time.perf_counter() - start, 0, repr(exc)


def measure(bundle: Path, tmp: Path, workers: int, max_batch: int, args, payloads) -> dict:
    """One server setting: one clip alone, then args.requests uploads args.concurrency at once."""
    load_before = os.getloadavg()[0]
    server, url = start_server(bundle, tmp / f"serve_{workers}_{max_batch}.log", workers, max_batch)
    try:
        pids = workers_of(server.pid) if workers > 1 else [server.pid]
        with ThreadPoolExecutor(2 * workers) as pool:  # warm every worker once
            list(pool.map(lambda i: one(url, *payloads[i % len(payloads)]), range(2 * workers)))
        single = [one(url, *payloads[i])[0] for i in range(3)]
        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(
                pool.map(lambda i: one(url, *payloads[i % len(payloads)]), range(args.requests))
            )
        wall = time.perf_counter() - start
        rss = [rss_mb(p) for p in pids]
        peak = [rss_mb(p, "VmHWM") for p in pids]
        health = httpx.get(url + "/api/health").json() if workers == 1 else {}
    finally:
        server.terminate()
        server.wait(60)
    lat = np.array([r[0] for r in results])
    errors = [r for r in results if r[1] != 200 or r[2]]
    record = {
        "workers": workers,
        "max_batch": max_batch,
        "requests_per_second": round(args.requests / wall, 3),
        "p50_seconds": round(float(np.percentile(lat, 50)), 2),
        "p95_seconds": round(float(np.percentile(lat, 95)), 2),
        "errors": len(errors),
        "error_samples": errors[:3],
        "single_clip_p50_seconds": round(float(np.median(single)), 2),
        "rss_mb_per_worker": [round(m) for m in rss],
        "peak_rss_mb_per_worker": [round(m) for m in peak],
        "rss_mb_total": round(sum(rss)),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if health:  # one process: how many uploads each model call answered
        served = health["served"]
        record["uploads_per_model_call"] = round(served / max(1, health["model_calls"]), 2)
        record["lost"] = args.requests + 2 * workers + 3 - served
    print(
        f"workers {workers}, max-batch {max_batch}: {record['requests_per_second']:.2f} requests/s, "
        f"p50 {record['p50_seconds']:.1f} s, p95 {record['p95_seconds']:.1f} s, errors {len(errors)}, "
        f"one clip alone {record['single_clip_p50_seconds']:.2f} s, RSS per worker "
        f"{record['rss_mb_per_worker']} MB",
        flush=True,
    )
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--workers", default="1,2,4", help="worker counts to measure")
    p.add_argument("--model", default="random-base")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load.json"))
    args = p.parse_args()
    if not sorted(DEV.glob("*/*.flac")):
        sys.exit(f"no clips at {DEV}: this benchmark needs ../shared/data/gtzan_dev")
    payloads = [(c.name, c.read_bytes()) for c in sorted(DEV.glob("*/*.flac"))]
    # (workers, max-batch): one upload per model call in 1, 2 and 4 processes, and one process
    # answering the uploads that wait for the model by one call
    counts = [int(w) for w in args.workers.split(",")]
    settings = [(w, 1) for w in counts[:1]] + [(counts[0], 4)] + [(w, 1) for w in counts[1:]]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = train_bundle(Path(tmp), args.model)
        runs = [measure(bundle, Path(tmp), w, b, args, payloads) for w, b in settings]
    base = runs[0]["requests_per_second"]
    for r in runs:
        r["throughput_vs_one_call_per_upload"] = round(r["requests_per_second"] / base, 2)
    record = {
        "benchmark": "serve_load",
        "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": args.model,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "clip_seconds": 30,
        "settings": runs,
        "errors": sum(r["errors"] for r in runs),
    }
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
