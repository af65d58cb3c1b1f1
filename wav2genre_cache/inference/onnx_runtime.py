"""Label songs from an ONNX export (`wav2genre export --onnx`) with onnxruntime and numpy alone.

What a deployment without PyTorch runs: it imports neither torch, transformers nor
scikit-learn (a test runs it with them blocked), only numpy, soundfile, soxr and onnxruntime
(and, for a Whisper export, scipy for its log-mel). The front end is the package's own numpy
code (audio.decode's decode, segments and normalisation; audio.whisper_windows' windows and
log-mel; audio.logmel's log-mel rows for a spectrogram head, which has no encoder), so the encoder reads what the torch path's encoder reads. Every file of the export is
checked against the manifest's sha256 before any is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wav2genre_cache._io import read_json_object, sha256_file
from wav2genre_cache.audio.decode import (
    load_track,
    normalize_segments,
    segment_track,
)
from wav2genre_cache.audio.logmel import LOGMEL_HOP, N_FFT, N_MELS, TOP_DB, log_mel_image
from wav2genre_cache.errors import AudioError, BundleError, ExportError
from wav2genre_cache.evaluation.calibration_map import apply_map
from wav2genre_cache.inference.entries import model_description, prediction_entry
from wav2genre_cache.inference.inputs import SkippedInput
from wav2genre_cache.inference.numpy_heads import numpy_probabilities

MANIFEST = "manifest.json"
EXPORT_FORMAT = "wav2genre-onnx"
EXPORT_VERSION = 1


def read_manifest(directory: str | Path) -> dict:
    """An export's manifest, every file it lists checked against its sha256 (BundleError if not)."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise BundleError(f"{directory}: not an ONNX export (no {MANIFEST}); run wav2genre export")
    manifest = read_json_object(
        path, BundleError, "a wav2genre ONNX export manifest", EXPORT_FORMAT
    )
    if manifest.get("format_version", 0) > EXPORT_VERSION:
        raise BundleError(
            f"{path}: export format version {manifest['format_version']}; this version reads "
            f"up to {EXPORT_VERSION}: upgrade wav2genre-cache"
        )
    for name, expected in manifest.get("files", {}).items():
        file = directory / name
        if Path(name).name != name or not file.is_file():
            raise BundleError(f"{file}: missing from the export")
        if sha256_file(file) != expected:
            raise BundleError(
                f"{file}: the file was altered after export (checksum mismatch); refusing to load it"
            )
    return manifest


class OnnxPredictor:
    """An export's encoder and head in onnxruntime: audio in, the same results as Predictor."""

    def __init__(self, export_dir: str | Path, batch_size: int = 8, threads: int = 0):
        import onnxruntime as ort

        self.bundle_dir = Path(export_dir)
        self.meta = read_manifest(self.bundle_dir)
        self.labels: list[str] = self.meta["labels"]
        self.batch_size = batch_size
        self.multi_label = bool(self.meta["multi_label"])
        self.thresholds = np.asarray(self.meta["thresholds"] or [0.5] * len(self.labels), float)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per core

        def session(name: str):
            path = str(self.bundle_dir / name)
            return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

        encoder = self.meta["encoder"]  # none for a spectrogram head: log-mel rows in numpy
        self.encoder = session(encoder["file"]) if encoder else None
        head = self.meta["head_runtime"]
        if head["runtime"] == "onnx":
            self.head, self.head_arrays = session(head["file"]), None
        else:
            with np.load(self.bundle_dir / head["file"], allow_pickle=False) as arrays:
                self.head, self.head_arrays = None, {k: arrays[k] for k in arrays.files}
        self.head_classes = np.asarray(self.meta["head_classes"], int)
        frontend = self.meta["frontend"]
        self.layout = (
            _whisper_layout(self.bundle_dir, frontend) if frontend["kind"] == "logmel" else None
        )
        self.spectrogram = (
            _spectrogram_filters(self.bundle_dir, frontend)
            if frontend["kind"] == "spectrogram"
            else None
        )

    def describe(self) -> dict:
        """What serve's GET /api/model shows, from the manifest (which carries no test metrics)."""
        m = self.meta
        return model_description(m, self.labels, self.thresholds if self.multi_label else None) | {
            "runtime": "onnx",
            "frontend": m["frontend"]["kind"],
            "metrics": {},
            "calibration": (m["calibration"] or {}).get("method", "none"),
        }

    # ---- embeddings and raw scores -------------------------------------------------------

    def embed(self, samples: np.ndarray) -> tuple[list[int], int, np.ndarray]:
        """(segment starts, segment length, pooled features [segments, features]) of a track."""
        starts, length = segment_track(
            samples, self.meta["segment_seconds"], self.meta["hop_seconds"]
        )
        if self.layout is not None:
            return starts, length, self._embed_windows(samples, starts, length)
        if self.spectrogram is not None:  # the log-mel rows stage one stores (audio.logmel)
            frames = int(self.meta["frontend"]["frames"])
            rows = [
                log_mel_image(samples[s : s + length], frames, self.spectrogram) for s in starts
            ]
            return starts, length, np.stack(rows)
        segments = np.stack([samples[s : s + length] for s in starts])
        size = self.batch_size
        rows = [
            self.encoder.run(["embedding"], {"audio": normalize_segments(segments[i : i + size])})[
                0
            ]
            for i in range(0, len(segments), size)
        ]
        return starts, length, np.concatenate(rows)

    def _embed_windows(self, samples: np.ndarray, starts: list[int], length: int) -> np.ndarray:
        """Whisper: log-mel windows in batches; each segment pooled over its own frames."""
        out = np.zeros((len(starts), self.meta["encoder"]["features"]), np.float32)
        windows = list(self.layout.windows(samples, starts, length))
        for i in range(0, len(windows), self.batch_size):
            batch = windows[i : i + self.batch_size]
            mels = np.stack([self.layout.log_mel(audio) for audio, _ in batch])
            weights = np.zeros((len(batch), max(len(s) for _, s in batch), self.layout.frames))
            for b, (_, spans) in enumerate(batch):
                for j, (_, first, end) in enumerate(spans):
                    end = self.layout.frames if end is None else end
                    weights[b, j, first:end] = 1.0 / (end - first)
            feeds = {"log_mel": mels, "span_weights": weights.astype(np.float32)}
            pooled = self.encoder.run(["embedding"], feeds)[0]
            for b, (_, spans) in enumerate(batch):
                for j, (segment, _, _) in enumerate(spans):
                    out[segment] = pooled[b, j]
        return out

    def head_probabilities(self, features: np.ndarray) -> np.ndarray:
        """Raw (uncalibrated) scores [rows, labels] of pooled features, as the head gives them
        (rows of one track: a head that answers per track gives each row the track's)."""
        x = np.asarray(features, np.float32)
        if self.head is not None:
            cols = self.head.run(["probabilities"], {"embedding": x})[0].astype(np.float64)
        else:
            kind = self.meta["head_runtime"]["kind"]
            cols = numpy_probabilities(kind, self.head_arrays, x, self.multi_label)
        proba = np.zeros((len(x), len(self.labels)))
        proba[:, self.head_classes] = cols
        return proba

    def calibrate(self, proba: np.ndarray) -> np.ndarray:
        """The bundle's calibration (evaluation.calibration.Calibrator.apply) in numpy."""
        return apply_calibration(self.meta["calibration"], proba)

    # ---- results, as Predictor gives them ------------------------------------------------

    def predict_waveforms(self, waveforms: list[np.ndarray], top_k: int = 3) -> list[dict]:
        """Predictions for decoded 16 kHz tracks (Predictor.predict_waveforms' entries)."""
        results = []
        for samples in waveforms:
            starts, length, features = self.embed(samples)
            results.append(
                self._result(samples, starts, length, self.head_probabilities(features), top_k)
            )
        return results

    def predict_paths(
        self, paths: list, top_k: int = 3, group: int = 16, max_seconds: float | None = None
    ) -> list[dict]:
        """Predict files in input order; one that cannot be used gets an error entry."""
        entries = []
        for p in paths:
            if isinstance(p, SkippedInput):
                entries.append({"file": str(p.path), "error": f"{p.path}: {p.reason}"})
                continue
            try:
                samples = load_track(p, max_seconds).samples
            except AudioError as exc:
                entries.append({"file": str(p), "error": str(exc)})
                continue
            entries.append({"file": str(p), **self.predict_waveforms([samples], top_k)[0]})
        return entries

    def _result(self, samples, starts, length, proba, top_k) -> dict:
        thresholds = self.thresholds if self.multi_label else None
        return prediction_entry(
            self.labels, len(samples), (starts, length), proba, top_k, self.calibrate, thresholds
        )


def _whisper_layout(directory: Path, frontend: dict):
    """The export's Whisper windows and log-mel: audio.whisper_windows (numpy and scipy)."""
    from wav2genre_cache.audio.whisper_windows import WhisperWindows

    filters = np.load(directory / frontend["mel_filters"], allow_pickle=False)
    return WhisperWindows(
        frontend["window"],
        int(frontend["window_samples"]),
        int(frontend["frames"]),
        int(frontend["n_fft"]),
        int(frontend["hop_length"]),
        filters.astype(np.float32),
    )


def _spectrogram_filters(directory: Path, frontend: dict) -> np.ndarray:
    """The export's mel filter bank, for audio.logmel's front end (whose settings it checks)."""
    expected = {"n_mels": N_MELS, "n_fft": N_FFT, "hop_length": LOGMEL_HOP, "top_db": TOP_DB}
    if any(frontend.get(k) != v for k, v in expected.items()):
        raise BundleError(
            f"{directory / MANIFEST}: a log-mel front end of other settings than this version's "
            f"({expected}); export the bundle again with this version"
        )
    return np.load(directory / frontend["mel_filters"], allow_pickle=False).astype(np.float32)


def apply_calibration(calibration: dict | None, proba: np.ndarray) -> np.ndarray:
    """Calibrated scores [n, K] (float64) from raw ones, by the bundle's calibration JSON."""
    p = np.array(proba, dtype=np.float64)
    c = calibration or {}
    method = c.get("method", "none")
    if method not in ("none", "temperature", "isotonic"):
        raise ExportError(f"unknown calibration method {method!r} in the export's manifest")
    return apply_map(
        p, method, bool(c.get("multi_label")), float(c.get("temperature", 1.0)), c.get("isotonic")
    )
