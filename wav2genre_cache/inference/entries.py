"""A labelled song as predict, the web page and the output files show it, from its segments'
scores: one numpy-only home for the PyTorch and the ONNX predictors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from wav2genre_cache.audio.decode import SAMPLE_RATE


def model_description(meta: dict, labels: list[str], thresholds: np.ndarray | None) -> dict:
    """What GET /api/model shows of any predictor: labels, backbone, layer, head, segments and
    a tagger's thresholds (each predictor adds what it knows besides)."""
    return {
        "labels": labels,
        "backbone": meta["backbone"],
        "backbone_revision": meta["backbone_revision"],
        "untrained_backbone": meta["backbone"].startswith("random-"),
        "layer": meta["layer"],
        "head": meta["head"],
        "segment_seconds": meta["segment_seconds"],
        "hop_seconds": meta["hop_seconds"],
        "multi_label": thresholds is not None,
        "thresholds": None
        if thresholds is None
        else dict(zip(labels, thresholds.tolist(), strict=True)),
    }


def prediction_entry(
    labels: list[str],
    n_samples: int,
    segments: tuple[list[int], int],
    proba: np.ndarray,
    top_k: int,
    calibrate: Callable[[np.ndarray], np.ndarray],
    thresholds: np.ndarray | None = None,
) -> dict:
    """A track's entry: duration, label, top-k, the per-segment timeline, and a tagger's tags.

    segments: each segment's first sample and their length; proba: the segments' raw scores.
    thresholds: a tagger's, per tag (None for a single-label model).
    """
    starts, length = segments
    # The track's score is the mean of its segments' raw scores, then calibrated: as the
    # calibration map was fitted in training.
    track = calibrate(proba.mean(axis=0, keepdims=True))[0]
    proba = calibrate(proba)
    order = np.argsort(-track)[:top_k]
    tagger = thresholds is not None
    result = {
        "duration": round(n_samples / SAMPLE_RATE, 3),
        "label": labels[order[0]],
        # A Hugging Face pipeline's shape. "top" (with "probability") is deprecated for it and
        # kept readable through version 0.2, as the README says.
        "labels": [{"label": labels[i], "score": round(float(track[i]), 4)} for i in order],
        "top": [{"label": labels[i], "probability": round(float(track[i]), 4)} for i in order],
        "timeline": [
            {
                "start": round(s / SAMPLE_RATE, 3),
                "end": round((s + length) / SAMPLE_RATE, 3),
                "label": labels[int(np.argmax(p))],
                "probabilities": {
                    lab: round(float(v), 4) for lab, v in zip(labels, p, strict=True)
                },
                **({"tags": tags_over_thresholds(labels, p, thresholds)} if tagger else {}),
            }
            for s, p in zip(starts, proba, strict=True)
        ],
    }
    if tagger:
        result["tags"] = tags_over_thresholds(labels, track, thresholds)
    return result


def tags_over_thresholds(
    labels: list[str], scores: np.ndarray, thresholds: np.ndarray
) -> list[dict]:
    """The tags whose score reaches their threshold, highest score first."""
    above = np.flatnonzero(scores >= thresholds)
    return [
        {
            "label": labels[i],
            "score": round(float(scores[i]), 4),
            "probability": round(float(scores[i]), 4),  # deprecated for "score"
            "threshold": round(float(thresholds[i]), 4),
        }
        for i in above[np.argsort(-scores[above], kind="stable")]
    ]
