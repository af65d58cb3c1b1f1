"""The torch heads (fcnn, attention, cnn) fitted with one torch thread against torch's default (one per
core), on an idle machine and beside a busy process per core, and how far the thread count
moves their probabilities.

A cross-validated FCNN search is hundreds of fits of small matrices; waking threads for each
may cost more than it saves, above all on a loaded machine (a CI box, a second job). Each fit
runs in its own process, 5 times for fcnn and attention and once for cnn (the median is
printed). The attention head reads three rows per track, as three 10 s segments of a clip.

    python benchmarks/torch_head_threads.py [--heads fcnn,attention,cnn]
        [--out benchmarks/results/torch_head_threads.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from cpu_levers import cpu_name

CASES = {  # head: (rows, features, rounds): the sizes of the dev clips' cross-validated fits
    "fcnn": (480, 768, 5),
    "attention": (480, 768, 5),
    "cnn": (480, 128 * 313, 1),
}


def fit_once(head: str, threads: int) -> dict:
    """One fit in this process with `threads` torch threads (0: torch's default, one per core):
    its seconds and its probabilities on held-out rows."""
    from wav2genre_cache.heads.registry import Rows, head_spec

    rows, features, _ = CASES[head]
    rng = np.random.default_rng(0)
    y = np.arange(rows + 60) % 10
    X = (rng.standard_normal((rows + 60, features)) + 2.4 * np.eye(10, features)[y]).astype(
        np.float32
    )
    spec = head_spec(head)
    tracks = np.arange(rows + 60) // 3 if spec.predicts_tracks else None
    model = spec.make(0)
    model._fit_threads = threads or None  # the lever heads/networks.py sets per head
    start = time.perf_counter()
    spec.fit(model, Rows(X[:rows], y[:rows], None if tracks is None else tracks[:rows]))
    seconds = time.perf_counter() - start
    held = {} if tracks is None else {"groups": tracks[rows:]}
    return {"seconds": seconds, "proba": model.predict_proba(X[rows:], **held).tolist()}


def spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def timed(head: str, threads: int) -> tuple[float, np.ndarray]:
    """The median seconds of the head's fits, each in a fresh process, and one's probabilities."""
    runs = []
    for _ in range(CASES[head][2]):
        code = (
            "import json, sys; sys.path.insert(0, 'benchmarks'); from torch_head_threads import "
            f"fit_once; print(json.dumps(fit_once({head!r}, {threads})))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return statistics.median(r["seconds"] for r in runs), np.array(runs[0]["proba"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", default="fcnn,attention,cnn")
    parser.add_argument("--out", default="benchmarks/results/torch_head_threads.json")
    args = parser.parse_args()
    cases = []
    for busy in (False, True):
        stop = mp.Event()
        spinners = [
            mp.Process(target=spin, args=(stop,)) for _ in range(os.cpu_count() if busy else 0)
        ]
        for p in spinners:
            p.start()
        try:
            for head in args.heads.split(","):
                default, p_default = timed(head, 0)
                one, p_one = timed(head, 1)
                cases.append(
                    {
                        "head": head,
                        "rows x features": list(CASES[head][:2]),
                        "rounds": CASES[head][2],
                        "busy": busy,
                        "default_threads_s": round(default, 3),
                        "one_thread_s": round(one, 3),
                        "speedup": round(default / one, 2),
                        "max_proba_difference": float(np.abs(p_default - p_one).max()),
                    }
                )
                print(json.dumps(cases[-1]), flush=True)
        finally:
            stop.set()
            for p in spinners:
                p.join()
    result = {"benchmark": "torch_head_threads", "cpu": cpu_name(), "cases": cases}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
