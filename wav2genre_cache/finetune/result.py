"""The end of a fine-tuning run: the best epoch's test scores, its bundle, curve and finetune.json."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wav2genre_cache._io import atomic_write_json
from wav2genre_cache.data.tracks import SPLITS
from wav2genre_cache.encoders.finetuned import WEIGHTED, SegmentClassifier
from wav2genre_cache.encoders.frontends import WaveformFrontEnd
from wav2genre_cache.evaluation.calibration import Calibrator, fit_calibrator
from wav2genre_cache.evaluation.metrics import classification_metrics
from wav2genre_cache.evaluation.plots import draw_curve
from wav2genre_cache.evaluation.result_row import CalibratedTracks, ResultRow, selection_score
from wav2genre_cache.feature_sets import ENCODER
from wav2genre_cache.finetune.card import card_of
from wav2genre_cache.finetune.checkpoint import load_weights
from wav2genre_cache.finetune.data import evaluate_tracks
from wav2genre_cache.finetune.options import FinetuneOptions, resolve_precision
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
        """The peaks so far, in MiB: the process's resident memory (and the GPU's allocation)."""
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
    model: SegmentClassifier,
    frontend: WaveformFrontEnd,
    extractor: object,
    data: dict,
    labels: list[str],
    opts: FinetuneOptions,
    device: torch.device,
    state: dict,
    state_dir: Path,
    peak: PeakMemory,
    info: dict,
    log: Callable[[str], None],
) -> dict:
    """The best epoch's weights: test metrics, the bundle, the curve, and finetune.json (last)."""
    run_dir = Path(opts.out)
    best = state["best"]
    load_weights(model, state_dir / best["file"])
    scored = _score(model, frontend, data, labels, opts, device, log)
    row = _result_row(scored, model, opts, state, info)
    meta = _bundle_meta(row, scored.calibrator, model, frontend, labels, opts, info)
    card = card_of(data, labels, opts, row)
    write_finetuned_bundle(run_dir / BUNDLE, model, extractor, meta, card)
    history = state["history"]
    curve = draw_curve(history, run_dir / "finetune_curve.png", opts.model)
    result = {
        "backbone": opts.model,
        "backbone_revision": info["revision"],
        "untrained_backbone": opts.model.startswith("random-"),
        "labels": labels,
        "split_digest": data["split_digest"],
        "counts": {s: len(data[s]) for s in SPLITS},
        "device": str(device),
        "precision": str(resolve_precision(opts.precision, device)).replace("torch.", ""),
        **_speed(history),
        "memory": peak.read(),
        "history": history,
        "curve": curve.name,
        "results": [row.as_json()],
    }
    atomic_write_json(run_dir / RESULT_FILE, result)
    t = row.test["track"]
    log(
        f"Fine-tuned {opts.model} (best epoch {best['epoch']} of {len(history)}): "
        f"{scored.test_split} track accuracy {t['accuracy']:.3f}, macro-F1 {t['macro_f1']:.3f}; "
        f"bundle {run_dir / BUNDLE}"
    )
    return result


@dataclass(frozen=True)
class _Scored:
    """The best epoch's model scored: on validation, calibrated there, and on test."""

    valid: dict | None  # track accuracy and macro-F1 on validation, where there is one
    calibrator: Calibrator  # fitted on validation (the identity without it)
    test: dict  # evaluate_tracks' metrics on test, the track metrics calibrated (with curves)
    tracks: CalibratedTracks  # the test tracks' probabilities
    test_split: str  # the split scored as test: another where there are no test tracks
    predict_seconds: float

    @property
    def selected_on(self) -> str:
        """Where the epoch was chosen: "valid", or "last epoch" without validation tracks."""
        return "valid" if self.valid is not None else "last epoch"


def _score(
    model: SegmentClassifier,
    frontend: WaveformFrontEnd,
    data: dict,
    labels: list[str],
    opts: FinetuneOptions,
    device: torch.device,
    log: Callable[[str], None],
) -> _Scored:
    """Score the model on validation (and calibrate it there), then on test."""
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
    y = np.array([e.label for e in test_set])
    tracks = CalibratedTracks.of(_track_proba(probas), y, False, calibrator)
    test["track"] = classification_metrics(
        y, tracks.calibrated, labels, curves=True, intervals=True
    )
    test_split = "test" if data["test"] else ("valid" if data["valid"] else "train")
    if test_split != "test":
        log(f"warning: no test tracks; the scores are on {test_split} (optimistic)")
    return _Scored(valid, calibrator, test, tracks, test_split, predict_seconds)


def _result_row(
    scored: _Scored, model: SegmentClassifier, opts: FinetuneOptions, state: dict, info: dict
) -> ResultRow:
    """The run's row of finetune.json, as compare reads it beside the frozen heads' rows."""
    history = state["history"]
    test = scored.test
    weights = model.layer_weights()
    return ResultRow(
        head="finetuned",
        feature_set=ENCODER,
        layer=info["layer"],
        augmented=bool(opts.augment) or None,
        selected_on=scored.selected_on,
        params=_params(opts),
        trials=None,
        selection_score=selection_score(scored.valid, False) if scored.valid else 0.0,
        valid=scored.valid,
        test={"segment": test["segment"], "track": _without_curves(test["track"])},
        test_loss=test["loss"],
        test_split=scored.test_split,
        fit_seconds=round(sum(h["seconds"] for h in history), 2),
        predict_seconds=round(scored.predict_seconds, 2),
        layer_weights=None if weights is None else [round(w, 5) for w in weights],
        best_of_head=True,
        bundle=BUNDLE,
        test_detail=scored.tracks.detail(test["track"]),
        calibration=scored.tracks.calibration(scored.calibrator),
        fine_tuned={
            "unfreeze": info["unfreeze"],
            "transformer_layers": info["n_layers"],
            "running_layers": info["n_layers"] if info["layer"] == WEIGHTED else info["layer"],
            "epochs_run": len(history),
            "best_epoch": state["best"]["epoch"],
            "stopped": state.get("stopped"),
        },
    )


def _params(opts: FinetuneOptions) -> dict:
    """The options that shaped the model (not where its data came from)."""
    return {
        k: v
        for k, v in opts.settings().items()
        if k not in ("data", "model", "dataset", "split_dir")
    }


def _bundle_meta(
    row: ResultRow,
    calibrator: Calibrator,
    model: SegmentClassifier,
    frontend: WaveformFrontEnd,
    labels: list[str],
    opts: FinetuneOptions,
    info: dict,
) -> dict:
    """What the fine-tuned bundle's bundle.json holds besides its format and checksums."""
    return {
        "labels": labels,
        "layer": row.layer,
        "params": row.params,
        "sample_rate": frontend.sample_rate,
        "segment_seconds": opts.segment_seconds,
        "hop_seconds": opts.hop_seconds,
        "backbone": opts.model,
        "backbone_revision": info["revision"],
        "frontend": frontend.kind,
        "window": frontend.window,
        "metrics": row.bundle_metrics(),
        "calibration": calibrator.as_json(),
        "model": {
            "encoder_class": type(model.encoder).__name__,
            "layer": row.layer,
            "layers_cut": bool(info["cut"]),
            "unfreeze": info["unfreeze"],
        },
    }


def _speed(history: list[dict]) -> dict:
    """The epochs' mean duration and throughput (None before any epoch ran)."""
    per_epoch = [h["seconds"] for h in history]
    return {
        "seconds_per_epoch": round(float(np.mean(per_epoch)), 2) if per_epoch else None,
        "segments_per_second": round(float(np.mean([h["segments_per_second"] for h in history])), 2)
        if history
        else None,
    }


def _track_proba(probas: list[np.ndarray]) -> np.ndarray:
    """Each track's probabilities: the mean of its segments'."""
    return np.stack([p.mean(axis=0) for p in probas])


def _without_curves(track: dict) -> dict:
    """Track metrics without what only the figures need (ROC curves, the probabilities)."""
    return {k: v for k, v in track.items() if k not in ("roc", "y_true", "proba")}
