"""The end of a fine-tuning run: the best epoch's test scores, its bundle, curve and finetune.json."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import torch

from wav2genre_cache._io import atomic_write_json
from wav2genre_cache.data.tracks import SPLITS
from wav2genre_cache.evaluation.calibration import (
    Calibrator,
    expected_calibration_error,
    fit_calibrator,
    reliability,
)
from wav2genre_cache.evaluation.metrics import classification_metrics
from wav2genre_cache.evaluation.plots import draw_curve
from wav2genre_cache.feature_sets import ENCODER
from wav2genre_cache.finetune.checkpoint import read_weights
from wav2genre_cache.finetune.data import evaluate_tracks
from wav2genre_cache.finetune.options import resolve_precision
from wav2genre_cache.store.bundles import write_finetuned_bundle

RESULT_FILE = "finetune.json"  # RUN_DIR/finetune.json: written last; its presence means done
BUNDLE = "bundles/finetuned"


class PeakMemory:
    """The process's peak resident memory, and the GPU's peak allocation where there is one.

    Made after the probe, just before the training loop: `rss_before_training_mb` holds the
    model, the decoded audio and the probe's states, and the GPU's peak counts the loop alone.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.at_start = _current_rss_mb()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def read(self) -> dict:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        out = {"peak_rss_mb": round(rss, 1), "rss_before_training_mb": self.at_start}
        if self.device.type == "cuda":
            out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return out


def _current_rss_mb() -> float | None:
    """This process's resident memory now (Linux), or None."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * resource.getpagesize() / 2**20, 1)


def finish(
    model, frontend, extractor, data, labels, opts, device, state, state_dir, peak, info, log
) -> dict:
    """The best epoch's weights: test metrics, the bundle, the curve, and finetune.json (last)."""
    run_dir = Path(opts.out)
    best = state["best"]
    model.load_state_dict(read_weights(state_dir / best["file"]), strict=False)
    selected_on = "valid" if data["valid"] else "last epoch"
    valid = None
    calibrator = Calibrator("none", multi_label=False)
    if data["valid"]:
        v, valid_probas = evaluate_tracks(model, frontend, data["valid"], labels, opts, device)
        valid = {"accuracy": v["track"]["accuracy"], "macro_f1": v["track"]["macro_f1"]}
        # Calibrated on validation as the frozen heads are (temperature: the label stays).
        calibrator = fit_calibrator(
            _track_proba(valid_probas), np.array([e.label for e in data["valid"]]), False
        )
    started = time.perf_counter()
    test_set = data["test"] or data["valid"] or data["train"]
    test, probas = evaluate_tracks(model, frontend, test_set, labels, opts, device, curves=True)
    predict_seconds = time.perf_counter() - started
    raw = _track_proba(probas)
    test_y = np.array([e.label for e in test_set])
    calibrated = calibrator.apply(raw)
    test["track"] = classification_metrics(test_y, calibrated, labels, curves=True)
    calibration = {
        "method": calibrator.method,
        **({"temperature": calibrator.temperature} if calibrator.method == "temperature" else {}),
        "ece_before": expected_calibration_error(raw, test_y, False),
        "ece_after": expected_calibration_error(calibrated, test_y, False),
        "fitted_on": "valid" if calibrator.method != "none" else None,
    }
    test_split = "test" if data["test"] else ("valid" if data["valid"] else "train")
    if test_split != "test":
        log(f"warning: no test tracks; the scores are on {test_split} (optimistic)")
    detail = {  # what compare's figures draw for the best model: ROC curves, track probabilities
        **test["track"],
        "y_true": [e.label for e in test_set],
        "proba": np.round(calibrated, 5).tolist(),
        "reliability": {
            "before": reliability(raw, test_y, False),
            "after": reliability(calibrated, test_y, False),
        },
    }
    history = state["history"]
    train_seconds = sum(h["seconds"] for h in history)
    params = {
        k: v
        for k, v in opts.settings().items()
        if k not in ("data", "model", "dataset", "split_dir")
    }
    row = {
        "head": "finetuned",
        "feature_set": ENCODER,
        "layer": info["layer"],
        "augmented": bool(opts.augment) or None,
        "selected_on": selected_on,
        "params": params,
        "trials": None,
        "selection_score": valid["accuracy"] + 1e-3 * valid["macro_f1"] if valid else 0.0,
        "valid": valid,
        "test": {"segment": test["segment"], "track": _without_curves(test["track"])},
        "test_loss": test["loss"],
        "test_split": test_split,
        "fit_seconds": round(train_seconds, 2),
        "predict_seconds": round(predict_seconds, 2),
        "best_of_head": True,
        "bundle": BUNDLE,
        "test_detail": detail,
        "calibration": calibration,
        "fine_tuned": {
            "unfreeze": info["unfreeze"],
            "transformer_layers": info["n_layers"],
            "running_layers": info["n_layers"] if info["layer"] == -1 else info["layer"],
            "epochs_run": len(history),
            "best_epoch": best["epoch"],
            "stopped": state.get("stopped"),
        },
    }
    weights = model.layer_weights()
    if weights is not None:
        row["layer_weights"] = [round(w, 5) for w in weights]
    bundle_meta = {
        "labels": labels,
        "layer": info["layer"],
        "params": params,
        "sample_rate": frontend.sample_rate,
        "segment_seconds": opts.segment_seconds,
        "hop_seconds": opts.hop_seconds,
        "backbone": opts.model,
        "backbone_revision": info["revision"],
        "frontend": frontend.kind,
        "window": frontend.window,
        "metrics": {
            "test_track_accuracy": test["track"]["accuracy"],
            "test_track_macro_f1": test["track"]["macro_f1"],
            "test_track_macro_auc": test["track"]["macro_auc"],
            "test_segment_accuracy": test["segment"]["accuracy"],
            "test_ece_before": calibration["ece_before"],
            "test_ece_after": calibration["ece_after"],
            "valid": valid,
        },
        "calibration": calibrator.as_json(),
        "model": {
            "encoder_class": type(model.encoder).__name__,
            "layer": info["layer"],
            "layers_cut": bool(info["cut"]),
            "unfreeze": info["unfreeze"],
        },
    }
    write_finetuned_bundle(run_dir / BUNDLE, model, extractor, bundle_meta)
    curve = draw_curve(history, run_dir / "finetune_curve.png", opts.model)
    per_epoch = [h["seconds"] for h in history]
    result = {
        "backbone": opts.model,
        "backbone_revision": info["revision"],
        "untrained_backbone": opts.model.startswith("random-"),
        "labels": labels,
        "split_digest": data["split_digest"],
        "counts": {s: len(data[s]) for s in SPLITS},
        "device": str(device),
        "precision": str(resolve_precision(opts.precision, device)).replace("torch.", ""),
        "seconds_per_epoch": round(float(np.mean(per_epoch)), 2) if per_epoch else None,
        "segments_per_second": round(float(np.mean([h["segments_per_second"] for h in history])), 2)
        if history
        else None,
        "memory": peak.read(),
        "history": history,
        "curve": curve.name,
        "results": [row],
    }
    atomic_write_json(run_dir / RESULT_FILE, result)
    t = test["track"]
    log(
        f"Fine-tuned {opts.model} (best epoch {best['epoch']} of {len(history)}): {test_split} track "
        f"accuracy {t['accuracy']:.3f}, macro-F1 {t['macro_f1']:.3f}; bundle {run_dir / BUNDLE}"
    )
    return result


def _track_proba(probas: list[np.ndarray]) -> np.ndarray:
    """Each track's probabilities: the mean of its segments'."""
    return np.stack([p.mean(axis=0) for p in probas])


def _without_curves(track: dict) -> dict:
    return {k: v for k, v in track.items() if k not in ("roc", "y_true", "proba")}
