"""Load on `wav2genre serve`: concurrent uploads of 30 s clips to a random-base bundle on 127.0.0.1.

Trains a bundle on the dev clips with the untrained base-size backbone (the real model's
arithmetic), starts the server, sends a bounded number of uploads (default 50, 8 at a time),
and prints requests per second, p50/p95 latency and any errors. Also times one clip alone.
Target on a 2-core machine: zero errors, zero lost requests; p50 for one 30 s clip under 5 s.

    python benchmarks/serve_load.py [--requests 50] [--concurrency 8]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--model", default="random-base")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load.json"))
    args = p.parse_args()
    clips = sorted(DEV.glob("*/*.flac"))
    if not clips:
        sys.exit(f"no clips at {DEV}: this benchmark needs ../shared/data/gtzan_dev")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "m.csv"
        rows = ["path,label"] + [
            f"{c},{c.parent.name}" for c in clips if int(c.stem.split(".")[1]) < 3
        ]
        manifest.write_text("\n".join(rows) + "\n")
        print(f"training a {args.model} bundle on {len(rows) - 1} clips...", flush=True)
        cli(
            "run",
            str(manifest),
            "--out",
            f"{tmp}/run",
            "--model",
            args.model,
            "--heads",
            "logreg",
            "--layers",
            "best",
        )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wav2genre_cache",
                "serve",
                "--bundle",
                f"{tmp}/run/best",
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(300):
                try:
                    if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            payloads = [(c.name, c.read_bytes()) for c in clips]

            def one(i: int) -> tuple[float, int, str]:
                name, data = payloads[i % len(payloads)]
                start = time.perf_counter()
                try:
                    r = httpx.post(url + "/api/predict", files={"file": (name, data)}, timeout=600)
                    ok = r.status_code == 200 and len(r.json()["timeline"]) == 3
                    return time.perf_counter() - start, r.status_code, "" if ok else r.text[:200]
                except httpx.HTTPError as exc:
                    return time.perf_counter() - start, 0, str(exc)

            single = [one(i)[0] for i in range(3)]  # one clip at a time: the latency a person sees
            start = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                results = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - start
            served = httpx.get(url + "/api/health").json()["served"]
        finally:
            server.terminate()
            server.wait(10)
    lat = np.array([r[0] for r in results])
    errors = [r for r in results if r[1] != 200 or r[2]]
    record = {
        "benchmark": "serve_load",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": args.model,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "clip_seconds": 30,
        "requests_per_second": args.requests / wall,
        "p50_seconds": float(np.percentile(lat, 50)),
        "p95_seconds": float(np.percentile(lat, 95)),
        "errors": len(errors),
        "error_samples": errors[:3],
        "served_by_server": served - 3,
        "lost": args.requests - (served - 3) if not errors else None,
        "single_clip_p50_seconds": float(np.median(single)),
    }
    print(
        f"{args.requests} uploads of 30 s clips, {args.concurrency} at a time: {record['requests_per_second']:.2f} "
        f"requests/s, p50 {record['p50_seconds']:.2f} s, p95 {record['p95_seconds']:.2f} s under load; "
        f"errors {len(errors)}, lost {record['lost']}; one clip alone: p50 {record['single_clip_p50_seconds']:.2f} s "
        f"(target < 5 s: {'met' if record['single_clip_p50_seconds'] < 5 else 'NOT met'})"
    )
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
