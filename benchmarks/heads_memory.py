"""Peak memory of fitting each head, against the number of rows (issue 25: a 22 GB train-heads).

Each (head, rows) fit runs in its own subprocess under an address-space limit (so a blow-up
fails there instead of taking the machine) and reports its own peak RSS. Spectrogram heads
train on synthetic log-mel rows of 128 x 313 (a 10 s segment); svm, logreg and fcnn on
768-wide encoder rows, for reference; `probe` is stage two's `--layers best` layer probe on
the log-mel rows. The synthetic rows themselves take rows x width x 4 bytes, so the slope
over that ("overhead") says whether a fit's own memory is flat in the number of rows.

    python benchmarks/heads_memory.py [--rows 100,1000,10000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

N_MELS, FRAMES, ENCODER_DIM = 128, 313, 768
LIMIT_BYTES = 6 * 2**30  # a fit over this fails (MemoryError) rather than swapping the machine
SPECTROGRAM = ("cnn", "lstm", "cnn-lstm")
VECTOR = ("svm", "logreg", "fcnn", "rf", "xgb", "attention", "fcnn-weighted")
HEADS = (*SPECTROGRAM, "probe", *VECTOR)
LAYERS = 13  # fcnn-weighted's rows: every layer of a base encoder, flattened
SEGMENTS_PER_TRACK = 5  # attention pools a track's segments


def child(head: str, n_rows: int, epochs: int) -> None:
    """Fit one head on synthetic rows in this process (run by the parent, one per subprocess)."""
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))
    import numpy as np
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    width = ENCODER_DIM if head in VECTOR else N_MELS * FRAMES
    width *= LAYERS if head == "fcnn-weighted" else 1
    X = rng.standard_normal((n_rows, width), dtype=np.float32)
    y = np.arange(n_rows) % 4
    tracks = np.arange(n_rows) // SEGMENTS_PER_TRACK
    start = time.perf_counter()
    if head == "probe":
        _probe(X, y)
    else:
        from wav2genre_cache.heads.registry import Rows, head_spec

        spec = head_spec(head)
        params = {"max_epochs": epochs} if spec.stops_early else {}
        if head == "fcnn-weighted":
            params["n_layers"] = LAYERS
        if head == "attention":
            y = y[tracks]  # a track's segments share its label
        fitted = spec.fit(spec.make(0, **params), Rows(X, y, tracks))
        spec.predict_proba(fitted, X[:8])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds, data_mb = time.perf_counter() - start, X.nbytes / 2**20
    print(json.dumps({"peak_rss_mb": round(peak_mb, 1), "seconds": seconds, "data_mb": data_mb}))


def _probe(X, y) -> None:
    from types import SimpleNamespace

    import numpy as np

    from wav2genre_cache.stage_two.data import probe_best_layer

    train = np.arange(len(y)) % 10 < 8
    data = SimpleNamespace(
        valid=~train, train=train, y=y, labels=list("abcd"), multi_label=False, n_layers=1
    )
    data.layer = lambda i: X
    probe_best_layer(data)


def measure(head: str, n_rows: int, epochs: int) -> dict:
    """Peak RSS (MB) of one fit in a fresh subprocess, its seconds, or the error that ended it."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", head, str(n_rows), str(epochs)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    row = {"head": head, "rows": n_rows}
    if done.returncode:
        error = (done.stderr.strip().splitlines() or ["killed"])[-1]
        return {**row, "ok": False, "error": error[:200], "peak_rss_mb": None}
    return {**row, "ok": True, **json.loads(done.stdout.splitlines()[-1])}


def slopes(rows: list[dict]) -> dict:
    """Per head: MB per 1,000 rows between the smallest and largest sizes, and over the data."""
    out = {}
    for head in dict.fromkeys(r["head"] for r in rows):
        ok = [r for r in rows if r["head"] == head and r["ok"] and r["peak_rss_mb"]]
        if len(ok) < 2:
            out[head] = {"shape": "failed" if any(not r["ok"] for r in rows) else "unknown"}
            continue
        lo, hi = ok[0], ok[-1]
        per_k = 1000 / (hi["rows"] - lo["rows"])
        slope = (hi["peak_rss_mb"] - lo["peak_rss_mb"]) * per_k
        data = (hi["data_mb"] - lo["data_mb"]) * per_k
        overhead = slope - data
        out[head] = {
            "mb_per_1000_rows": round(slope, 1),
            "data_mb_per_1000_rows": round(data, 1),
            "overhead_mb_per_1000_rows": round(overhead, 1),
            # Flat: the fit's own memory grows by under a third of the rows' own size.
            "shape": "flat" if overhead < data / 3 else "linear",
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100,1000,10000")
    parser.add_argument("--heads", default=",".join(HEADS))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default="benchmarks/results/heads_memory.json")
    parser.add_argument("--child", nargs=3, metavar=("HEAD", "ROWS", "EPOCHS"))
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), int(args.child[2]))
    sizes = [int(n) for n in args.rows.split(",")]
    rows = []
    for n_rows in sizes:
        for head in args.heads.split(","):
            rows.append(measure(head, n_rows, args.epochs))
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {"benchmark": "heads_memory"}
    record["machine"] = f"{platform.machine()} {os.cpu_count()} cores"
    record["command"] = "python " + " ".join(sys.argv)
    record[args.label or "results"] = {
        "limit_gb": LIMIT_BYTES / 2**30,
        "epochs": args.epochs,
        "fits": rows,
        "slopes": slopes(rows),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record[args.label or "results"]["slopes"], indent=2))


if __name__ == "__main__":
    main()
