"""The spectrogram heads' export (cnn, lstm, cnn-lstm): their front end, and the torch path.

They read the `logmel` feature set, not an encoder: an export holds no encoder.onnx, only the
head (torch.onnx, onnx_heads) and librosa's mel filter bank as an array, from which
audio.logmel computes in numpy the same log-mel rows stage one stored. Predictor predicts from
encoder bundles only, so the torch path the export is checked against is SpectrogramReference:
the same rows through the bundle's own head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wav2genre_cache.audio.decode import segment_track
from wav2genre_cache.audio.logmel import (
    LOGMEL_HOP,
    N_FFT,
    N_MELS,
    TOP_DB,
    log_mel_image,
    logmel_frames,
    mel_filters,
)
from wav2genre_cache.evaluation.calibration import Calibrator
from wav2genre_cache.heads.registry import head_spec
from wav2genre_cache.store.bundles import load_bundle

LOGMEL_FILTERS = "logmel_filters.npy"


def spectrogram_frontend(meta: dict) -> tuple[dict, np.ndarray, int]:
    """(the manifest's front end, the mel filter bank to save, features per row) of a bundle."""
    frames = logmel_frames(meta["segment_seconds"])
    front = {
        "kind": "spectrogram",
        "n_mels": N_MELS,
        "n_fft": N_FFT,
        "hop_length": LOGMEL_HOP,
        "top_db": TOP_DB,
        "frames": frames,
        "mel_filters": LOGMEL_FILTERS,
    }
    return front, mel_filters(int(meta["sample_rate"])), N_MELS * frames


class SpectrogramReference:
    """A spectrogram bundle's torch path: stage one's log-mel rows through its head."""

    def __init__(self, bundle_dir: str | Path):
        self.meta, self.head = load_bundle(Path(bundle_dir))
        self.spec = head_spec(self.meta["head"])
        self.calibrator = Calibrator.from_json(self.meta.get("calibration"))

    def segment_probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Raw probabilities [segments, labels] of a decoded track."""
        starts, length = segment_track(
            samples, self.meta["segment_seconds"], self.meta["hop_seconds"]
        )
        frames, filters = (
            logmel_frames(self.meta["segment_seconds"]),
            mel_filters(int(self.meta["sample_rate"])),
        )
        rows = np.stack([log_mel_image(samples[s : s + length], frames, filters) for s in starts])
        cols = self.spec.predict_proba(self.head, rows, groups=np.zeros(len(rows), int))
        proba = np.zeros((len(rows), len(self.meta["labels"])))
        proba[:, np.asarray(self.head.classes_).astype(int)] = cols
        return proba
