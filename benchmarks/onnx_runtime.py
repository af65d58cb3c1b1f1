"""onnxruntime against torch on this CPU: seconds of audio labelled per second, float32.

A logreg bundle over layer 6 of random-base (layer 1 of random-tiny) is exported with
`export_onnx`; both paths label the same 30 s track (3 segments of 10 s), best of --repeats.
The torch path runs every layer (embed computes them all); the export only those up to the
bundle's layer. Writes benchmarks/results/onnx_runtime.json.

    .venv/bin/python benchmarks/onnx_runtime.py [--models random-tiny,random-base]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from wav2genre_cache._io import atomic_write_json
from wav2genre_cache.encoders.backbone import load_backbone, probe_signal
from wav2genre_cache.heads.registry import make_head
from wav2genre_cache.inference.onnx_export import export_onnx
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="random-tiny,random-base")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {m: bench(m, Path(tmp), args.repeats) for m in args.models.split(",")}
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
