"""Fine-tuned against frozen: real Whisper encoders on the 60 GTZAN dev clips, over seeds.

For each model (the real OpenAI weights of `pip:whisper-tiny.en` and `pip:whisper-base`) and
each seed, one random stratified split by track (40 train, 10 valid, 10 test) is made by the
seed, and on it:

- frozen: `wav2genre run` embeds the clips and trains the heads on every layer; the row
  compare marks best (layer and head selected on validation) is the frozen figure;
- fine-tuned: `wav2genre finetune` into the same run folder (the same split, checked by
  compare), training the top transformer layers with the head from audio.

Both are scored on the same test tracks. Seconds per epoch and peak memory come from the
fine-tuning run. Then whisper-base is fine-tuned for one epoch with and without gradient
checkpointing, with its top 2 layers and with all of them unfrozen, to measure peak memory. Results go to benchmarks/results/ as JSON, and a
Markdown table is printed.

    python benchmarks/finetune_vs_frozen.py                    # the committed CPU run
    python benchmarks/finetune_vs_frozen.py --device cuda --out benchmarks/results/finetune_vs_frozen_cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIPS = Path(os.environ.get("WAV2GENRE_SHARED", ROOT.parent / "shared")) / "data" / "gtzan_dev"


def cli(*args: str) -> str:
    """Run the command line in a fresh process; stop the benchmark if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "wav2genre_cache", *args], capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"wav2genre {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc.stderr


def finetune_args(model: str, run: Path, seed: int, a: argparse.Namespace, *extra: str) -> list:
    return [
        "finetune", str(CLIPS), "--out", str(run), "--model", model, "--seed", str(seed),
        "--unfreeze", str(a.unfreeze), "--epochs", str(a.epochs), "--patience", str(a.patience),
        "--batch-size", str(a.batch_size), "--lr", str(a.lr), "--head-lr", str(a.head_lr),
        "--device", a.device, *extra,
    ]  # fmt: skip


def one_seed(model: str, seed: int, work: Path, a: argparse.Namespace) -> dict:
    """Frozen heads and fine-tuning on the split of this seed; both rows of compare."""
    run = work / f"{model.replace(':', '_').replace('/', '_')}-seed{seed}"
    started = time.perf_counter()
    cli(
        "run", str(CLIPS), "--out", str(run), "--model", model, "--seed", str(seed),
        "--heads", a.heads, "--layers", "all", "--device", a.device,
    )  # fmt: skip
    frozen_seconds = time.perf_counter() - started
    started = time.perf_counter()
    cli(*finetune_args(model, run, seed, a))
    tuned_seconds = time.perf_counter() - started
    cli("compare", str(run))
    md = (run / "comparison.md").read_text()
    if "same split as the frozen heads" not in md:
        sys.exit(f"{run}: compare did not confirm the fine-tuned and frozen rows share a split")
    rows = json.loads((run / "comparison.json").read_text())
    frozen = next(r for r in rows if r["best"] == "*")
    tuned = next(r for r in rows if r["encoder"].startswith("fine-tuned"))
    ft = json.loads((run / "finetune.json").read_text())
    return {
        "seed": seed,
        "frozen": {
            "head": frozen["head"],
            "layer": frozen["layer"],
            "test_track_accuracy": frozen["track_accuracy"],
            "test_track_macro_f1": frozen["track_macro_f1"],
            "valid_track_accuracy": frozen["valid_track_accuracy"],
            "run_seconds": round(frozen_seconds, 1),
        },
        "fine_tuned": {
            "test_track_accuracy": tuned["track_accuracy"],
            "test_track_macro_f1": tuned["track_macro_f1"],
            "valid_track_accuracy": tuned["valid_track_accuracy"],
            "epochs_run": len(ft["history"]),
            "best_epoch": ft["results"][0]["fine_tuned"]["best_epoch"],
            "seconds_per_epoch": ft["seconds_per_epoch"],
            "segments_per_second": ft["segments_per_second"],
            "memory": ft["memory"],
            "run_seconds": round(tuned_seconds, 1),
            "history": ft["history"],
        },
    }


def spread(values: list[float]) -> dict:
    return {
        "mean": round(statistics.mean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "values": values,
    }


def memory_run(
    model: str, work: Path, unfreeze: str, checkpointing: bool, a: argparse.Namespace
) -> dict:
    """One epoch of fine-tuning: its peak memory, with or without gradient checkpointing."""
    run = work / f"memory-unfreeze{unfreeze}-{'ckpt' if checkpointing else 'plain'}"
    extra = ["--gradient-checkpointing"] if checkpointing else []
    args = finetune_args(model, run, 0, a, *extra)
    args[args.index("--epochs") + 1] = "1"
    args[args.index("--unfreeze") + 1] = unfreeze
    cli(*args)
    ft = json.loads((run / "finetune.json").read_text())
    return {
        "unfreeze": unfreeze,
        "gradient_checkpointing": checkpointing,
        "seconds_per_epoch": ft["seconds_per_epoch"],
        **ft["memory"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="pip:whisper-tiny.en,pip:whisper-base")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--heads", default="fcnn,logreg,svm")
    p.add_argument("--unfreeze", default="2")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--head-lr", type=float, default=3e-3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory-model", default="pip:whisper-base")
    p.add_argument(
        "--memory-unfreeze", default="2,all", help="--unfreeze of the memory runs ('': none)"
    )
    p.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/finetune_vs_frozen_cpu.json"
    )
    p.add_argument("--work", type=Path, default=None, help="Keep the run folders here.")
    a = p.parse_args()
    if not CLIPS.is_dir():
        sys.exit(f"{CLIPS}: the dev clips are not there (../shared)")
    work = a.work or Path(tempfile.mkdtemp(prefix="finetune-vs-frozen-"))
    work.mkdir(parents=True, exist_ok=True)
    models = {}
    for model in a.models.split(","):
        seeds = [one_seed(model, int(s), work, a) for s in a.seeds.split(",")]
        models[model] = {
            "frozen_test_track_accuracy": spread(
                [s["frozen"]["test_track_accuracy"] for s in seeds]
            ),
            "fine_tuned_test_track_accuracy": spread(
                [s["fine_tuned"]["test_track_accuracy"] for s in seeds]
            ),
            "frozen_test_track_macro_f1": spread(
                [s["frozen"]["test_track_macro_f1"] for s in seeds]
            ),
            "fine_tuned_test_track_macro_f1": spread(
                [s["fine_tuned"]["test_track_macro_f1"] for s in seeds]
            ),
            "seconds_per_epoch": spread([s["fine_tuned"]["seconds_per_epoch"] for s in seeds]),
            "peak_rss_mb": max(s["fine_tuned"]["memory"]["peak_rss_mb"] for s in seeds),
            "seeds": seeds,
        }
        print(f"{model}: done", file=sys.stderr, flush=True)
    memory = [
        memory_run(a.memory_model, work, u, c, a)
        for u in filter(None, a.memory_unfreeze.split(","))
        for c in (False, True)
    ]
    result = {
        "command": "python benchmarks/finetune_vs_frozen.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()},
        "settings": vars(a) | {"out": str(a.out), "work": str(work)},
        "split": "random stratified by track per seed: 40 train, 10 valid, 10 test",
        "models": models,
        "memory": {"model": a.memory_model, "runs": memory},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


def table(result: dict) -> str:
    """The Markdown the README quotes."""
    lines = [
        "| model | frozen best head (test track acc.) | fine-tuned (test track acc.) | frozen macro-F1 | fine-tuned macro-F1 | s / epoch | peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, m in result["models"].items():
        pm = {k: f"{v['mean']:.3f} ± {v['std']:.3f}" for k, v in m.items() if "test_track" in k}
        lines.append(
            f"| {model} | {pm['frozen_test_track_accuracy']} | {pm['fine_tuned_test_track_accuracy']} "
            f"| {pm['frozen_test_track_macro_f1']} | {pm['fine_tuned_test_track_macro_f1']} "
            f"| {m['seconds_per_epoch']['mean']:.1f} | {m['peak_rss_mb']:,.0f} MB |"
        )
    lines += [
        "",
        "| unfreeze | gradient checkpointing | s / epoch | peak RSS | RSS before training |",
        "|---|---|---|---|---|",
    ]
    for r in result["memory"]["runs"]:
        lines.append(
            f"| {r['unfreeze']} | {'on' if r['gradient_checkpointing'] else 'off'} "
            f"| {r['seconds_per_epoch']:.1f} "
            f"| {r['peak_rss_mb']:,.0f} MB | {r['rss_before_training_mb']:,.0f} MB |"
        )
    return "\n".join(lines)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
