"""onnxruntime against torch on this CPU: throughput, int8 quantization, size, cold start, memory.

Untrained models (--models): a logreg bundle over layer 6 of random-base (layer 1 of
random-tiny) is exported with `export_onnx`; both paths label the same 30 s track (3 segments
of 10 s), best of --repeats, float32.

Real weights (--real, default pip:whisper-base at --layer 2) on the 60 GTZAN dev clips: two
folds by clip index within each genre; a logreg bundle fitted on one half, exported (float32)
and quantized (int8 dynamic, `quantize_encoder`); torch, the float32 export and the int8 export
label the other half in one run: audio-seconds per second, track accuracy, label agreement;
encoder.onnx's size; cold start (process start to the printed label, `wav2genre predict`,
median of --cold-runs) and its peak RSS. The torch path runs every layer (embed computes them
all); the export only those up to the bundle's layer.
Writes benchmarks/results/onnx_runtime.json.

    .venv/bin/python benchmarks/onnx_runtime.py [--models random-base] [--real pip:whisper-base]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wav2genre_cache._io import atomic_write_json
from wav2genre_cache.encoders.backbone import load_backbone, probe_signal
from wav2genre_cache.heads.registry import make_head
from wav2genre_cache.inference.onnx_export import export_onnx, quantize_encoder
from wav2genre_cache.inference.onnx_runtime import OnnxPredictor
from wav2genre_cache.inference.predict import Predictor
from wav2genre_cache.store.bundles import write_bundle

LAYERS = {"random-tiny": 1, "random-base": 6}


def best_seconds(predict, wave: np.ndarray, repeats: int) -> float:
    """The fastest of `repeats` calls, after one warm-up."""
    predict([wave])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict([wave])
        times.append(time.perf_counter() - start)
    return min(times)


def bench(model: str, root: Path, repeats: int) -> dict:
    """Audio-seconds per second of both runtimes for one model."""
    backbone = load_backbone(model, device="cpu", dtype="float32")
    # Distinct pitches and noise: identical segments would leave the scaler dividing by ~0.
    t, rng = np.arange(160_000) / 16_000, np.random.default_rng(0)
    segments = np.stack(
        [0.3 * np.sin(2 * np.pi * 110 * (k + 1) * t) + 0.05 * rng.standard_normal(t.size)
         for k in range(6)]
    ).astype(np.float32)  # fmt: skip
    layer = LAYERS[model]
    head = make_head("logreg").fit(backbone.embed(segments)[:, layer, :], np.arange(6) % 2)
    attrs = {"sample_rate": 16_000, "segment_seconds": 10.0, "hop_seconds": 10.0,
             "backbone": model, "backbone_revision": "seed0", "frontend": "waveform",
             "window": "alone", "dtype": "float32"}  # fmt: skip
    bundle = write_bundle(root / model, head, "logreg", params={}, layer=layer,
                          labels=["a", "b"], feature_set="encoder", cache_attrs=attrs,
                          metrics={})  # fmt: skip
    export = export_onnx(bundle, root / f"{model}-onnx", log=str)
    wave = probe_signal(30.0)
    torch_s = best_seconds(Predictor(bundle, device="cpu").predict_waveforms, wave, repeats)
    onnx_s = best_seconds(OnnxPredictor(export).predict_waveforms, wave, repeats)
    return {
        "layer": layer,
        "torch_audio_s_per_s": round(30.0 / torch_s, 1),
        "onnx_audio_s_per_s": round(30.0 / onnx_s, 1),
        "onnx_over_torch": round(torch_s / onnx_s, 2),
    }


# ---- real weights on the dev clips: float32 and int8 against torch ---------------------------

DEV = Path("/work/shared/data/gtzan_dev")
FORMATS = ("torch", "onnx_float32", "onnx_int8")
RUNTIME_ONLY = """
import sys
for name in ("torch", "transformers", "sklearn", "xgboost"):
    sys.modules[name] = None  # any import of them now fails
from wav2genre_cache.inference.onnx_runtime import OnnxPredictor
print(OnnxPredictor(sys.argv[1]).predict_paths([sys.argv[2]])[0]["label"])
"""


def dev_clips(data: Path) -> list[tuple[Path, str, int]]:
    """(file, genre, fold) of every clip: within each genre, the first half fold 0, the rest 1."""
    clips = []
    for genre in sorted(p.name for p in data.iterdir() if p.is_dir()):
        files = sorted((data / genre).glob("*.*"))
        clips += [(f, genre, int(2 * i >= len(files))) for i, f in enumerate(files)]
    return clips


def fold_bundle(root, backbone, model, layer, feats, clips, fold, genres) -> Path:
    """A logreg bundle on `layer`, fitted on the segments of the clips outside `fold`."""
    train = [i for i, c in enumerate(clips) if c[2] != fold]
    X = np.concatenate([feats[i][:, layer, :] for i in train])
    y = np.concatenate([[genres.index(clips[i][1])] * len(feats[i]) for i in train])
    head = make_head("logreg", C=0.1).fit(X, y)
    attrs = {"sample_rate": 16_000, "segment_seconds": 10.0, "hop_seconds": 10.0,
             "backbone": model, "backbone_revision": backbone.revision, "frontend": "logmel",
             "window": "packed", "dtype": "float32"}  # fmt: skip
    return write_bundle(root / f"bundle{fold}", head, "logreg", params={"C": 0.1}, layer=layer,
                        labels=genres, feature_set="encoder", cache_attrs=attrs,
                        metrics={})  # fmt: skip


def label_clips(predictor, waves: list[np.ndarray]) -> tuple[list[dict], float]:
    """Each clip's prediction and the seconds they took, after one warm-up call."""
    predictor.predict_waveforms(waves[:1])
    start = time.perf_counter()
    results = [predictor.predict_waveforms([w], top_k=len(predictor.labels))[0] for w in waves]
    return results, time.perf_counter() - start


def cold_start(cmd: list[str], runs: int) -> dict:
    """Median seconds from process start to the printed label, and the largest peak RSS (MiB)."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "subprocess.run(sys.argv[1:], check=True, capture_output=True); "
               "print(time.perf_counter() - t, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")  # fmt: skip
    seconds, rss = [], []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", wrapper, *cmd], check=True,
                             capture_output=True, text=True).stdout.split()  # fmt: skip
        seconds.append(float(out[0]))
        rss.append(int(out[1]) / 1024)
    return {"median_s": round(statistics.median(seconds), 2),
            "all_s": [round(s, 2) for s in seconds], "peak_rss_mib": round(max(rss))}  # fmt: skip


def bench_real(model: str, layer: int, data: Path, root: Path, cold_runs: int) -> dict:
    """Two folds of the dev clips: logreg on each half, every runtime labels the other half."""
    from wav2genre_cache.audio.decode import load_track, segment_track
    from wav2genre_cache.encoders.embed_tracks import embed_tracks, track_windows

    clips = dev_clips(data)
    genres = sorted({c[1] for c in clips})
    backbone = load_backbone(model, device="cpu", dtype="float32")
    waves = [load_track(c[0]).samples for c in clips]
    feats = [
        embed_tracks(backbone, [track_windows(backbone, w, *segment_track(w, 10.0, 10.0))],
                     10.0, 10.0, 8)[0]
        for w in waves
    ]  # fmt: skip
    labels = {f: [None] * len(clips) for f in FORMATS}
    seconds = dict.fromkeys(FORMATS, 0.0)
    top_p = {f: [None] * len(clips) for f in FORMATS}
    for fold in (0, 1):
        bundle = fold_bundle(root, backbone, model, layer, feats, clips, fold, genres)
        export = export_onnx(bundle, root / f"float32-{fold}", log=str)
        int8 = root / f"int8-{fold}"
        shutil.copytree(export, int8)
        quantize_encoder(int8)
        test = [i for i, c in enumerate(clips) if c[2] == fold]
        predictors = {"torch": Predictor(bundle, device="cpu"),
                      "onnx_float32": OnnxPredictor(export), "onnx_int8": OnnxPredictor(int8)}  # fmt: skip
        for name, predictor in predictors.items():
            results, took = label_clips(predictor, [waves[i] for i in test])
            seconds[name] += took
            for i, r in zip(test, results, strict=True):
                labels[name][i] = r["label"]
                top_p[name][i] = {t["label"]: t["probability"] for t in r["top"]}
    audio_s = sum(len(w) for w in waves) / 16_000
    truth = [c[1] for c in clips]

    def accuracy(name):
        return round(float(np.mean([a == b for a, b in zip(labels[name], truth, strict=True)])), 4)

    def agreement(a, b):
        return round(float(np.mean([x == y for x, y in zip(labels[a], labels[b], strict=True)])), 4)

    def top_difference(a, b):  # the largest change in the probability of a's top label
        return round(max(abs(pa[la] - top_p[b][i].get(la, 0.0))
                         for i, (la, pa) in enumerate(zip(labels[a], top_p[a], strict=True))), 6)  # fmt: skip

    clip = str(clips[0][0])
    predict = [
        str(Path(sys.executable).parent / "wav2genre"),
        "predict",
        clip,
        "--json",
        "--bundle",
    ]
    cold = {"torch": cold_start([*predict, str(root / "bundle0")], cold_runs),
            "onnx_float32": cold_start([*predict, str(root / "float32-0"), "--runtime", "onnx"],
                                       cold_runs),
            "onnx_int8": cold_start([*predict, str(root / "int8-0"), "--runtime", "onnx"],
                                    cold_runs)}  # fmt: skip
    # A deployment's own script: onnx_runtime alone, torch and scikit-learn never imported.
    alone = [sys.executable, "-c", RUNTIME_ONLY, str(root / "float32-0"), clip]
    cold["onnx_float32_runtime_only"] = cold_start(alone, cold_runs)
    speed = {f: round(audio_s / seconds[f], 2) for f in FORMATS}
    size = {f: round((root / f"{f}-0" / "encoder.onnx").stat().st_size / 2**20, 1)
            for f in ("float32", "int8")}  # fmt: skip
    return {
        "model": model, "layer": layer, "clips": len(clips), "audio_seconds": round(audio_s, 1),
        "protocol": "2 folds by clip index within each genre: logreg (C=0.1) on one half's "
                    "segments, every runtime labels the other half's tracks",
        "audio_s_per_s": speed,
        "onnx_float32_over_torch": round(speed["onnx_float32"] / speed["torch"], 2),
        "onnx_int8_over_torch": round(speed["onnx_int8"] / speed["torch"], 2),
        "onnx_int8_over_float32": round(speed["onnx_int8"] / speed["onnx_float32"], 2),
        "track_accuracy": {f: accuracy(f) for f in FORMATS},
        "label_agreement": {"float32_vs_torch": agreement("onnx_float32", "torch"),
                            "int8_vs_float32": agreement("onnx_int8", "onnx_float32")},
        "largest_top_probability_change": {
            "float32_vs_torch": top_difference("torch", "onnx_float32"),
            "int8_vs_float32": top_difference("onnx_float32", "onnx_int8")},
        "encoder_onnx_mib": size,
        "cold_start_to_first_label": cold,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="random-tiny,random-base")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--real", default="pip:whisper-base", help="'' to skip")
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DEV)
    parser.add_argument("--cold-runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {m: bench(m, Path(tmp), args.repeats) for m in args.models.split(",") if m}
        if args.real:
            real = bench_real(args.real, args.layer, args.data, Path(tmp), args.cold_runs)
            results[args.real] = real
    report = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": "defaults (torch's and onnxruntime's own)",
        "dtype": "float32",
        "results": results,
    }
    print(json.dumps(report, indent=1))
    out = Path(__file__).parent / "results" / "onnx_runtime.json"
    atomic_write_json(out, report)


if __name__ == "__main__":
    main()
