"""Label songs with a trained bundle: per-segment probabilities, a timeline, and the track's top-k."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from wav2genre_cache.audio.decode import (
    MIN_TRACK_SECONDS,
    SAMPLE_RATE,
    load_track,
    segment_track,
)
from wav2genre_cache.audio.decode_stream import decode_blocks
from wav2genre_cache.audio.stream_segments import (
    CHUNK_SECONDS,
    LONG_SECONDS,
    StreamedSegments,
    is_long,
    per_chunk,
)
from wav2genre_cache.encoders.backbone import cpu_has_native_bfloat16, load_backbone, resolve_device
from wav2genre_cache.encoders.embed_tracks import embed_tracks, track_windows
from wav2genre_cache.encoders.finetuned import segment_probabilities
from wav2genre_cache.errors import AudioError, AudioTooLong, BundleError
from wav2genre_cache.evaluation.calibration import Calibrator
from wav2genre_cache.feature_sets import ENCODER, feature_set_name
from wav2genre_cache.heads.registry import Inputs, head_spec
from wav2genre_cache.inference.entries import model_description, prediction_entry
from wav2genre_cache.inference.inputs import SkippedInput
from wav2genre_cache.store.bundles import FINETUNED, load_bundle


class Predictor:
    """A bundle and its backbone, loaded once; turns audio into genre predictions."""

    def __init__(self, bundle_dir: str | Path, device: str = "auto", batch_size: int = 8):
        self.bundle_dir = Path(bundle_dir)
        self.meta, self.head = load_bundle(self.bundle_dir)
        self.labels: list[str] = self.meta["labels"]
        self.batch_size = batch_size
        # Scores as calibrated on validation (identity for bundles from before calibration);
        # a tagger names every tag whose score passes the tag's threshold.
        self.calibrator = Calibrator.from_json(self.meta.get("calibration"))
        self.multi_label = bool(self.meta.get("multi_label", False))
        thresholds = self.meta.get("thresholds") or [0.5] * len(self.labels)
        if len(thresholds) != len(self.labels):
            raise BundleError(
                f"{self.bundle_dir / 'bundle.json'}: {len(thresholds)} thresholds for "
                f"{len(self.labels)} labels"
            )
        self.thresholds = np.asarray(thresholds, dtype=float)
        if self.meta.get("kind") == FINETUNED:
            # The bundle holds the whole model: encoder, pooling and head, in float32.
            self.finetuned, self.frontend = self.head
            self.device = resolve_device(device)
            self.finetuned.to(self.device)
            return
        self.finetuned = None
        self.spec = head_spec(self.meta["head"])
        if feature_set_name(self.meta["feature_set"]) != ENCODER:
            raise BundleError(
                f"{bundle_dir}: predicting from feature set {self.meta['feature_set']!r} is not supported yet"
            )
        if self.meta["backbone"] == "synthetic":
            raise BundleError(
                f"{bundle_dir}: trained on a synthetic cache; there is no backbone to embed audio with"
            )
        # The segment settings, backbone and dtype come from the bundle, never from the user: on
        # the same machine predict then computes exactly what embed computed.
        dtype = self.meta["dtype"]
        if (
            dtype == "bfloat16"
            and resolve_device(device).type == "cpu"
            and not cpu_has_native_bfloat16()
        ):
            dtype = "float32"  # emulated bfloat16 is several times slower, and no closer
        # The window mode too: Whisper's packed windows give other embeddings than alone.
        window = self.meta.get("window")  # absent from bundles of waveform models: alone
        self.backbone = load_backbone(
            self.meta["backbone"], device=device, dtype=dtype, window=window
        )
        frontend = self.meta.get("frontend", "waveform")
        if self.backbone.kind != frontend:
            raise BundleError(
                f"{bundle_dir}: trained on {frontend} features of {self.meta['backbone']}, "
                f"but the model loaded now reads {self.backbone.kind}; embeddings would not match"
            )
        self._check_head_fits_backbone()
        if (
            self.meta["backbone_revision"]
            and self.backbone.revision != self.meta["backbone_revision"]
        ):
            raise BundleError(
                f"{bundle_dir}: trained on {self.meta['backbone']} revision {self.meta['backbone_revision']}, "
                f"but the loaded model is revision {self.backbone.revision}; embeddings would not match"
            )

    def _check_head_fits_backbone(self) -> None:
        """The bundle's layer is one the backbone has, and the head reads that layer's width."""
        meta_file, layer = self.bundle_dir / "bundle.json", self.meta["layer"]
        every = self.spec.inputs is Inputs.ALL_LAYERS
        n_layers, dim = self.backbone.n_layers, self.backbone.dim
        if not every and not 0 <= layer < n_layers:
            raise BundleError(
                f"{meta_file}: layer {layer}, but {self.meta['backbone']} has layers 0..{n_layers - 1}"
            )
        width = n_layers * dim if every else dim
        reads = getattr(self.head, "n_features_in_", width)
        if reads != width:
            raise BundleError(
                f"{meta_file}: the head reads {reads} features, but {self.meta['backbone']} "
                f"gives {width}: the bundle was trained on another model's features"
            )

    def describe(self) -> dict:
        """What GET /api/model shows: labels, backbone, layer, head and test metrics."""
        m = self.meta
        return model_description(m, self.labels, self.thresholds if self.multi_label else None) | {
            "fine_tuned": m.get("kind") == FINETUNED,
            "feature_set": m["feature_set"],
            "frontend": m.get("frontend", "waveform"),
            "window": m.get("window", "alone"),
            "metrics": m["metrics"],
            "calibration": self.calibrator.method,
        }

    def predict_waveforms(self, waveforms: list[np.ndarray], top_k: int = 3) -> list[dict]:
        """Predictions for decoded 16 kHz tracks; their segments are batched together."""
        seg, hop = self.meta["segment_seconds"], self.meta["hop_seconds"]
        segments = [segment_track(samples, seg, hop) for samples in waveforms]
        if self.finetuned is not None:
            probas = segment_probabilities(
                self.finetuned, self.frontend, waveforms, seg, hop, self.batch_size, self.device
            )
            return [
                self._result(samples, starts, length, proba, top_k)
                for samples, (starts, length), proba in zip(
                    waveforms, segments, probas, strict=True
                )
            ]
        tracks = [
            track_windows(self.backbone, w, *s) for w, s in zip(waveforms, segments, strict=True)
        ]
        feats = embed_tracks(self.backbone, tracks, seg, hop, self.batch_size)
        results = []
        for samples, (starts, length), f in zip(waveforms, segments, feats, strict=True):
            every = self.spec.inputs is Inputs.ALL_LAYERS  # its bundle's layer is -1
            proba = self._proba(f.reshape(len(f), -1) if every else f[:, self.meta["layer"], :])
            results.append(self._result(samples, starts, length, proba, top_k))
        return results

    def _proba(self, X: np.ndarray) -> np.ndarray:
        # All rows are segments of one track (a head that predicts tracks attends over them).
        cols = self.spec.predict_proba(self.head, X, groups=np.zeros(len(X), int))
        proba = np.zeros((len(X), len(self.labels)))
        proba[:, np.asarray(self.head.classes_).astype(int)] = cols
        return proba

    def _result(self, samples, starts, length, proba, top_k) -> dict:
        thresholds = self.thresholds if self.multi_label else None
        return prediction_entry(
            self.labels,
            len(samples),
            (starts, length),
            proba,
            top_k,
            self.calibrator.apply,
            thresholds,
        )

    def predict_paths(
        self,
        paths: Sequence[Path | SkippedInput],
        top_k: int = 3,
        group: int = 16,
        max_seconds: float | None = None,
    ) -> list[dict]:
        """Predict files in groups whose segments are batched together, in input order.

        A file that does not decode, is longer than max_seconds, or is a SkippedInput from
        expand_inputs, gets an error entry.
        """
        out: list[tuple[int, dict]] = []  # (input position, entry)
        files: list[tuple[int, Path]] = []
        for k, p in enumerate(paths):
            if isinstance(p, SkippedInput):
                out.append((k, {"file": str(p.path), "error": f"{p.path}: {p.reason}"}))
            else:
                files.append((k, p))
        for i in range(0, len(files), group):
            ok, decoded = [], []
            for k, p in files[i : i + group]:
                try:
                    if self._streams(p):
                        out.append(
                            (k, {"file": str(p), **self.predict_stream(p, top_k, max_seconds)})
                        )
                        continue
                    decoded.append(load_track(p, max_seconds).samples)
                    ok.append((k, p))
                except AudioError as exc:
                    out.append((k, {"file": str(p), "error": str(exc)}))
            for (k, p), r in zip(
                ok, self.predict_waveforms(decoded, top_k) if decoded else [], strict=True
            ):
                out.append((k, {"file": str(p), **r}))
        # By position, not by name: the same file given twice keeps both of its places.
        return [entry for _, entry in sorted(out, key=lambda pair: pair[0])]

    def _streams(self, path: Path) -> bool:
        """Whether a file is long enough to be predicted as it decodes (a fine-tuned bundle's
        model segments whole tracks: it is not)."""
        return self.finetuned is None and is_long(path, LONG_SECONDS)

    def predict_stream(
        self, path: Path, top_k: int = 3, max_seconds: float | None = None, chunk_seconds=None
    ) -> dict:
        """One file's prediction, decoded and embedded a chunk of segments at a time; the same
        segments and scores as predict_waveforms on the whole of it (embedding bundles only)."""
        seg_s, hop_s = self.meta["segment_seconds"], self.meta["hop_seconds"]
        segment = int(round(seg_s * SAMPLE_RATE))
        hop = int(round((hop_s or seg_s) * SAMPLE_RATE))
        # Whisper's packed windows group segments from the track's first: chunks of whole groups.
        layout = getattr(self.backbone.frontend, "layout", None)
        k = layout.per_window(segment) if layout is not None else 1
        n = per_chunk(chunk_seconds or CHUNK_SECONDS, hop, k)
        stream = StreamedSegments(decode_blocks(path, max_seconds), segment, hop, n)
        every = self.spec.inputs is Inputs.ALL_LAYERS
        starts, parts, length = [], [], segment
        for chunk in stream:
            windows = track_windows(self.backbone, chunk.audio, chunk.starts, chunk.length)
            (f,) = embed_tracks(self.backbone, [windows], seg_s, hop_s, self.batch_size)
            X = np.ascontiguousarray(f.reshape(len(f), -1) if every else f[:, self.meta["layer"]])
            # A head that answers per track needs all of its rows (one layer's: small).
            parts.append(X if self.spec.predicts_tracks else self._proba(X))
            starts += [chunk.offset + s for s in chunk.starts]
            length = chunk.length
        if stream.n_samples < MIN_TRACK_SECONDS * SAMPLE_RATE:
            raise AudioError(f"{path}: too short ({stream.n_samples / SAMPLE_RATE:.2f} s)")
        rows = np.concatenate(parts)
        proba = self._proba(rows) if self.spec.predicts_tracks else rows
        thresholds = self.thresholds if self.multi_label else None
        return prediction_entry(
            self.labels, stream.n_samples, (starts, length), proba, top_k,
            self.calibrator.apply, thresholds,
        )  # fmt: skip

    def iter_predictions(
        self,
        paths: Iterable[Path | SkippedInput],
        top_k: int = 3,
        group: int = 16,
        max_seconds: float | None = None,
    ) -> Iterator[dict]:
        """predict_paths' entries, in input order, each group's as soon as its group is done
        (the same groups, so the same answers, as predict_paths over all of them)."""
        chunk: list[Path | SkippedInput] = []
        files = 0  # in chunk: a group is `group` files, whatever inputs were skipped among them
        for p in paths:
            chunk.append(p)
            files += not isinstance(p, SkippedInput)
            if files == group:
                yield from self.predict_paths(chunk, top_k, group, max_seconds)
                chunk, files = [], 0
        if chunk:
            yield from self.predict_paths(chunk, top_k, group, max_seconds)


def check_duration(samples: np.ndarray, name: str, max_seconds: float | None) -> None:
    """Refuse audio longer than max_seconds (uploads are bounded in duration, not just size)."""
    seconds = len(samples) / SAMPLE_RATE
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLong(
            f"{name}: {seconds / 60:.1f} minutes of audio; the limit is {max_seconds / 60:g} minutes"
        )
    if seconds < 1.0:
        raise AudioError(f"{name}: too short ({seconds:.2f} s; at least 1 s is needed)")
