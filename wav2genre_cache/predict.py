"""Label songs with a trained bundle: per-segment probabilities, a timeline, and the track's top-k."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .audio import (
    AUDIO_EXTENSIONS,
    SAMPLE_RATE,
    AudioError,
    AudioTooLong,
    load_track,
    segment_track,
)
from .backbone import load_backbone
from .embed import embed_tracks
from .heads import HeadError
from .train import load_bundle


class Predictor:
    """A bundle and its backbone, loaded once; turns audio into genre predictions."""

    def __init__(self, bundle_dir: str | Path, device: str = "auto", batch_size: int = 8):
        self.bundle_dir = Path(bundle_dir)
        self.meta, self.head = load_bundle(self.bundle_dir)
        if self.meta["feature_set"] != "wav2vec2":
            raise HeadError(
                f"{bundle_dir}: predicting from feature set {self.meta['feature_set']!r} is not supported yet"
            )
        if self.meta["backbone"] == "synthetic":
            raise HeadError(
                f"{bundle_dir}: trained on a synthetic cache; there is no backbone to embed audio with"
            )
        # The segment settings and backbone come from the bundle, never from the user.
        dtype = (
            self.meta["dtype"] if device != "cpu" or self.meta["dtype"] == "float32" else "float32"
        )
        self.backbone = load_backbone(self.meta["backbone"], device=device, dtype=dtype)
        if (
            self.meta["backbone_revision"]
            and self.backbone.revision != self.meta["backbone_revision"]
        ):
            raise HeadError(
                f"{bundle_dir}: trained on {self.meta['backbone']} revision {self.meta['backbone_revision']}, "
                f"but the loaded model is revision {self.backbone.revision}; embeddings would not match"
            )
        self.labels: list[str] = self.meta["labels"]
        self.batch_size = batch_size

    def describe(self) -> dict:
        """What GET /api/model shows: labels, backbone, layer, head and test metrics."""
        m = self.meta
        return {
            "labels": self.labels,
            "backbone": m["backbone"],
            "backbone_revision": m["backbone_revision"],
            "untrained_backbone": m["backbone"].startswith("random-"),
            "layer": m["layer"],
            "head": m["head"],
            "feature_set": m["feature_set"],
            "segment_seconds": m["segment_seconds"],
            "hop_seconds": m["hop_seconds"],
            "metrics": m["metrics"],
        }

    def predict_waveforms(self, waveforms: list[np.ndarray], top_k: int = 3) -> list[dict]:
        """Predictions for decoded 16 kHz tracks; their segments are batched together."""
        seg, hop = self.meta["segment_seconds"], self.meta["hop_seconds"]
        feats = embed_tracks(self.backbone, waveforms, seg, hop, self.batch_size)
        results = []
        for samples, f in zip(waveforms, feats, strict=True):
            layer = self.meta["layer"]  # -1: a head that weighs every layer
            proba = self._proba(f.reshape(len(f), -1) if layer == -1 else f[:, layer, :])
            starts, length = segment_track(samples, seg, hop)
            results.append(self._result(samples, starts, length, proba, top_k))
        return results

    def _proba(self, X: np.ndarray) -> np.ndarray:
        if getattr(self.head, "needs_groups", False):  # attention over the track's segments
            cols = self.head.predict_proba(X, groups=np.zeros(len(X), int))
        else:
            cols = self.head.predict_proba(X)
        proba = np.zeros((len(X), len(self.labels)))
        proba[:, np.asarray(self.head.classes_).astype(int)] = cols
        return proba

    def _result(self, samples, starts, length, proba, top_k) -> dict:
        track = proba.mean(axis=0)
        order = np.argsort(-track)[:top_k]
        return {
            "duration": round(len(samples) / SAMPLE_RATE, 3),
            "label": self.labels[order[0]],
            "top": [
                {"label": self.labels[i], "probability": round(float(track[i]), 4)} for i in order
            ],
            "timeline": [
                {
                    "start": round(s / SAMPLE_RATE, 3),
                    "end": round((s + length) / SAMPLE_RATE, 3),
                    "label": self.labels[int(np.argmax(p))],
                    "probabilities": {
                        lab: round(float(v), 4) for lab, v in zip(self.labels, p, strict=True)
                    },
                }
                for s, p in zip(starts, proba, strict=True)
            ],
        }

    def predict_paths(self, paths: list[Path], top_k: int = 3, group: int = 16) -> list[dict]:
        """Predict files in groups whose segments are batched together; a bad file gets an error entry."""
        out: list[dict] = []
        for i in range(0, len(paths), group):
            ok, decoded = [], []
            for p in paths[i : i + group]:
                try:
                    decoded.append(load_track(p).samples)
                    ok.append(p)
                except AudioError as exc:
                    out.append({"file": str(p), "error": str(exc)})
            for p, r in zip(
                ok, self.predict_waveforms(decoded, top_k) if decoded else [], strict=True
            ):
                out.append({"file": str(p), **r})
        order = {str(p): k for k, p in enumerate(paths)}
        return sorted(out, key=lambda r: order[r["file"]])


def check_duration(samples: np.ndarray, name: str, max_seconds: float | None) -> None:
    """Refuse audio longer than max_seconds (uploads are bounded in duration, not just size)."""
    seconds = len(samples) / SAMPLE_RATE
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLong(
            f"{name}: {seconds / 60:.1f} minutes of audio; the limit is {max_seconds / 60:g} minutes"
        )
    if seconds < 1.0:
        raise AudioError(f"{name}: too short ({seconds:.2f} s; at least 1 s is needed)")


def expand_inputs(items: list[Path]) -> list[Path]:
    """Files as given, and the audio files inside any folder, sorted."""
    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            paths += sorted(
                p for p in item.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
            )
        else:
            paths.append(item)
    return paths
