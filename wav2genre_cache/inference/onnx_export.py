"""Export a bundle to ONNX: the encoder up to its layer with mean pooling, the head, a manifest.

The export folder holds encoder.onnx (the layers above the bundle's layer dropped: only what
the head reads is computed), the head (head.onnx, or head.npz for numpy), the front end's data
(Whisper's mel filters) and manifest.json: labels, layer, segment settings, front end,
calibration, thresholds, how the head runs, the sha256 of every file, and how far the export's
probabilities were from the torch path's on a probe signal. Nothing in it is pickled. A
spectrogram head (cnn, lstm, cnn-lstm) reads log-mel rows, not an encoder: its export has no
encoder.onnx, only its head and its log-mel's filters (onnx_spectrogram).
`onnx_runtime.OnnxPredictor` runs it with onnxruntime and numpy alone.
"""

from __future__ import annotations

import copy
import io
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from wav2genre_cache._io import atomic_write, atomic_write_json, sha256_file
from wav2genre_cache._version import __version__
from wav2genre_cache.errors import ExportError
from wav2genre_cache.feature_sets import ENCODER, LOGMEL, feature_set_name
from wav2genre_cache.heads.registry import Inputs, head_spec
from wav2genre_cache.inference.onnx_finetuned import Classes, PooledFinetuned, finetuned_head_onnx
from wav2genre_cache.inference.onnx_heads import EXPORTS, export_head, torch_to_onnx
from wav2genre_cache.inference.onnx_runtime import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    MANIFEST,
    OnnxPredictor,
    read_manifest,
)
from wav2genre_cache.inference.onnx_spectrogram import (
    LOGMEL_FILTERS,
    SpectrogramReference,
    spectrogram_frontend,
)
from wav2genre_cache.store.bundles import FINETUNED, load_bundle

ENCODER_ONNX = "encoder.onnx"
MEL_FILTERS = "mel_filters.npy"
# The largest difference in any probability (raw and calibrated, per segment) the export may
# have from the torch path on the probe signal; float32 both, so it is rounding (1e-6 measured).
EXPORT_TOLERANCE = 1e-4


def export_onnx(
    bundle_dir: str | Path,
    out: str | Path,
    log: Callable[[str], None] = print,
    quantize: str | None = None,
) -> Path:
    """Export a bundle (checksums verified) to `out`, check it against torch, return `out`.

    quantize="int8": the float32 export, once checked, has its encoder's weights quantized
    (quantize_encoder); its probe difference is recorded, not held to EXPORT_TOLERANCE.
    """
    if quantize not in (None, "int8"):
        raise ExportError(f"unknown quantization {quantize!r}; the export quantizes to int8")
    bundle_dir, out = Path(bundle_dir), Path(out)
    meta, head = load_bundle(bundle_dir)
    spec = _check_exportable(bundle_dir, meta)
    spectrogram = spec is not None and spec.inputs is Inputs.SPECTROGRAM
    if spec is None:  # fine-tuned: its own encoder and head (onnx_finetuned)
        model, frontend = head
        whisper = frontend.kind == "logmel"
        encoder = PooledFinetuned(model.eval(), whisper)
        features = model.encoder.config.hidden_size
    elif spectrogram:  # no encoder: log-mel rows in numpy (onnx_spectrogram)
        if quantize:
            raise ExportError(f"{bundle_dir}: the {meta['head']} head has no encoder to quantize")
        encoder, whisper = None, False
        frontend, filters, features = spectrogram_frontend(meta)
    else:
        encoder, frontend, whisper, hidden_size = _pooled_encoder(bundle_dir, meta, spec)
        features = len(encoder.layers) * hidden_size
    _clear(out)
    if encoder is not None:
        log(f"Exporting the encoder ({encoder.kept} of {encoder.total} layers) to {out}")
        _write_bytes(out / ENCODER_ONNX, _encoder_onnx(encoder, frontend, whisper, meta))
    if spec is None:
        head_entry, head = finetuned_head_onnx(model, out), Classes(len(meta["labels"]))
    else:
        head_entry = export_head(meta["head"], head, features, out)
    layers = [] if encoder is None else encoder.layers
    manifest = _manifest(meta, head, head_entry, layers, features, frontend, whisper)
    if whisper:
        filters = np.asarray(frontend.layout.mel_filters, np.float32)
        _write_bytes(out / MEL_FILTERS, _npy_bytes(filters))
    elif spectrogram:
        _write_bytes(out / LOGMEL_FILTERS, _npy_bytes(np.asarray(filters, np.float32)))
    manifest["files"] = {
        f.name: sha256_file(f) for f in sorted(out.iterdir()) if f.name != MANIFEST
    }
    atomic_write_json(out / MANIFEST, manifest)
    difference = _check_against_torch(bundle_dir, out, meta)
    log(f"Largest probability difference from the torch path on a probe signal: {difference:.2g}")
    if difference > EXPORT_TOLERANCE:
        raise ExportError(
            f"{out}: the export's probabilities differ from the torch path's by {difference:.2g} "
            f"(more than {EXPORT_TOLERANCE:g}); it is not usable"
        )
    atomic_write_json(out / MANIFEST, manifest | {"checked_difference": difference})
    if quantize == "int8":
        quantize_encoder(out)
        difference = _check_against_torch(bundle_dir, out, meta)
        log(f"int8: largest probability difference from the torch path: {difference:.2g}")
        manifest = read_manifest(out)
        manifest["quantization"]["probe_difference"] = difference
        atomic_write_json(out / MANIFEST, manifest)
    return out


def _clear(out: Path) -> None:
    """An empty folder at out (an earlier export there is replaced; anything else refused)."""
    if out.exists():
        if not (out / MANIFEST).is_file() and any(out.iterdir()):
            raise ExportError(f"{out}: exists and is not an earlier export; choose another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _pooled_encoder(bundle_dir: Path, meta: dict, spec):
    """(PooledLayers, front end, whether Whisper, hidden size) of the bundle's backbone."""
    from wav2genre_cache.encoders.frontends import WhisperFrontEnd, frontend_for
    from wav2genre_cache.encoders.sources import fetch_model

    model, revision, extractor = fetch_model(meta["backbone"])
    if meta.get("backbone_revision") and revision != meta["backbone_revision"]:
        raise ExportError(
            f"{bundle_dir}: trained on {meta['backbone']} revision {meta['backbone_revision']}, "
            f"but the model loaded now is revision {revision}"
        )
    frontend = frontend_for(model, extractor, meta.get("window"))
    whisper = isinstance(frontend, WhisperFrontEnd)
    if frontend.kind != meta.get("frontend", "waveform") or (
        frontend.kind != "waveform" and not whisper
    ):
        raise ExportError(
            f"{bundle_dir}: front end {frontend.kind} of {meta['backbone']} has no ONNX export; "
            "raw-waveform encoders (Wav2Vec2, HuBERT, WavLM) and Whisper have"
        )
    n_layers = model.config.num_hidden_layers + 1
    layers = list(range(n_layers)) if spec.inputs is Inputs.ALL_LAYERS else [meta["layer"]]
    encoder = PooledLayers(_truncated(model.eval(), max(layers)), layers, whisper)
    return encoder, frontend, whisper, model.config.hidden_size


# Dynamic quantization of the matrix products only: the convolutions (Whisper's two, the
# waveform encoders' feature extractor) stay float32; onnxruntime's ConvInteger is slow.
QUANTIZED_OPS = ("MatMul", "Gemm")


def quantize_encoder(export_dir: str | Path) -> None:
    """Replace a float32 export's encoder by its int8 dynamic quantization; manifest updated."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    if manifest["encoder"] is None:
        raise ExportError(f"{export_dir}: a {manifest['head']} export has no encoder to quantize")
    if manifest["encoder"]["dtype"] != "float32":
        raise ExportError(f"{export_dir}: the encoder is already {manifest['encoder']['dtype']}")
    encoder = export_dir / manifest["encoder"]["file"]
    staged = encoder.with_name(f".{encoder.name}.int8")
    logging.disable(logging.WARNING)  # its advice to pre-process says nothing to a user
    try:
        quantize_dynamic(
            encoder, staged, weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS)
        )
    finally:
        logging.disable(logging.NOTSET)
    staged.replace(encoder)
    manifest["encoder"]["dtype"] = "int8"
    manifest["quantization"] = {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "weights": "int8 (activations quantized per call, uint8)",
        "ops": list(QUANTIZED_OPS),
    }
    manifest["files"][encoder.name] = sha256_file(encoder)
    atomic_write_json(export_dir / MANIFEST, manifest)


def _check_exportable(bundle_dir: Path, meta: dict):
    """The head's registry entry (None for a fine-tuned bundle: its own encoder and head), or
    ExportError for a bundle the export cannot take."""
    if meta.get("kind") == FINETUNED:
        return None
    supported = (
        f"exported are bundles of these heads: {'; '.join(f'{k}: {v}' for k, v in EXPORTS.items())}"
        " (and fine-tuned bundles)"
    )
    spec = head_spec(meta["head"])
    if feature_set_name(meta["feature_set"]) == LOGMEL and spec.inputs is Inputs.SPECTROGRAM:
        return spec
    if feature_set_name(meta["feature_set"]) != ENCODER or meta["backbone"] == "synthetic":
        raise ExportError(
            f"{bundle_dir}: the {meta['head']} head reads the {meta['feature_set']} feature set; "
            f"only heads over an encoder's embeddings or log-mel images export ({supported})"
        )
    if spec.inputs not in (Inputs.VECTOR, Inputs.ALL_LAYERS, Inputs.SEGMENTS):
        raise ExportError(
            f"{bundle_dir}: the {meta['head']} head reads {spec.inputs.value} and has no ONNX "
            f"export; {supported}"
        )
    return spec


def _truncated(model, top: int):
    """A copy of the encoder computing hidden states 0..top only: the layers above are dropped.

    Whisper and the stable-layer-norm encoders (Wav2Vec2-large, HuBERT-large, WavLM) norm the
    last hidden state only: with layers dropped their last kept state is a middle one, so that
    norm goes too. (export_onnx compares the result with the whole model's path.)
    """
    model = copy.deepcopy(model)
    holder = model.encoder if hasattr(model, "encoder") else model  # WhisperEncoder holds its own
    # transformers records hidden states around its layers: with none kept it returns none, so
    # a layer-0 bundle keeps one layer (whose output it does not read).
    top = max(top, 1)
    if top < len(holder.layers):
        holder.layers = holder.layers[:top]
        norm_last = getattr(model.config, "model_type", "") == "whisper" or getattr(
            model.config, "do_stable_layer_norm", False
        )
        if norm_last:
            holder.layer_norm = torch.nn.Identity()
    return model


class PooledLayers(torch.nn.Module):
    """The chosen hidden states of a truncated encoder, mean-pooled: over all frames (waveform
    encoders), or over each span's frames by span weights (Whisper windows)."""

    def __init__(self, model: torch.nn.Module, layers: list[int], whisper: bool):
        super().__init__()
        self.model, self.layers, self.whisper = model, layers, whisper
        holder = model.encoder if hasattr(model, "encoder") else model
        self.kept = len(holder.layers)
        self.total = model.config.num_hidden_layers  # the whole model's: the config is kept

    def forward(self, x: torch.Tensor, span_weights: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.model(x, output_hidden_states=True).hidden_states
        if self.whisper:  # [batch, spans, frames] @ [batch, frames, dim], per layer
            return torch.cat([torch.bmm(span_weights, hidden[i]) for i in self.layers], dim=-1)
        return torch.cat([hidden[i].mean(dim=1) for i in self.layers], dim=-1)


def _encoder_onnx(encoder, frontend, whisper: bool, meta: dict) -> bytes:
    """The pooled encoder as ONNX bytes: audio [batch, samples], or log-mel and span weights."""
    if not whisper:
        samples = int(round(meta["segment_seconds"] * frontend.sample_rate))
        axes = {"audio": {0: "batch", 1: "samples"}, "embedding": {0: "batch"}}
        example = (torch.zeros(2, samples).normal_(generator=torch.Generator().manual_seed(0)),)
        return torch_to_onnx(encoder, example, ["audio"], ["embedding"], axes)
    layout = frontend.layout
    mel = torch.zeros(1, layout.mel_filters.shape[1], layout.window_samples // layout.hop_length)
    weights = torch.full((1, 1, layout.frames), 1.0 / layout.frames)
    axes = {
        "log_mel": {0: "batch"},
        "span_weights": {0: "batch", 1: "spans"},
        "embedding": {0: "batch", 1: "spans"},
    }
    return torch_to_onnx(encoder, (mel, weights), ["log_mel", "span_weights"], ["embedding"], axes)


def _manifest(meta, head, head_entry, layers, features, frontend, whisper) -> dict:
    """manifest.json's fields, but for the files' checksums."""
    if isinstance(frontend, dict):  # the spectrogram heads' (onnx_spectrogram)
        front = frontend
    elif whisper:
        lay = frontend.layout
        front = {
            "kind": "logmel",
            "window": lay.window,
            "window_samples": lay.window_samples,
            "frames": lay.frames,
            "n_fft": lay.n_fft,
            "hop_length": lay.hop_length,
            "mel_filters": MEL_FILTERS,
        }
    else:
        front = {"kind": "waveform", "normalize": "per segment: zero mean, unit variance"}
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "package_version": __version__,
        "labels": meta["labels"],
        "head": meta["head"],
        "head_classes": np.asarray(head.classes_).astype(int).tolist(),
        "head_runtime": head_entry,
        "layer": meta["layer"],
        "layers_pooled": layers,
        "multi_label": bool(meta.get("multi_label", False)),
        "sample_rate": meta["sample_rate"],
        "segment_seconds": meta["segment_seconds"],
        "hop_seconds": meta["hop_seconds"],
        "backbone": meta["backbone"],
        "backbone_revision": meta["backbone_revision"],
        "frontend": front,
        "encoder": {"file": ENCODER_ONNX, "dtype": "float32", "features": features}
        if layers
        else None,
        "features": features,
        "bundle_dtype": meta["dtype"],
        "calibration": meta.get("calibration"),
        "thresholds": meta.get("thresholds"),
        "tolerance": EXPORT_TOLERANCE,
    }


def _check_against_torch(bundle_dir: Path, out: Path, meta: dict) -> float:
    """The largest probability difference, export against torch, on a probe of 2.6 segments."""
    from wav2genre_cache.encoders.backbone import probe_signal
    from wav2genre_cache.inference.predict import Predictor

    probe = probe_signal(2.6 * meta["segment_seconds"])
    onnx = OnnxPredictor(out)
    if feature_set_name(meta["feature_set"]) == LOGMEL:
        torch_path = SpectrogramReference(bundle_dir)
    else:
        torch_path = Predictor(bundle_dir, device="cpu")
    worst = 0.0
    for wave in (probe, probe[: int(0.6 * len(probe) / 2.6)]):  # and a track under one segment
        want = torch_segment_probabilities(torch_path, wave)
        got = onnx.head_probabilities(onnx.embed(wave)[2])
        worst = max(worst, float(np.abs(got - want).max()))
        calibrated = np.abs(onnx.calibrate(got) - torch_path.calibrator.apply(want)).max()
        worst = max(worst, float(calibrated))
    return worst


def torch_segment_probabilities(predictor, samples: np.ndarray) -> np.ndarray:
    """Raw per-segment probabilities [segments, labels] of a track by the torch Predictor (or a
    spectrogram bundle's SpectrogramReference)."""
    if isinstance(predictor, SpectrogramReference):
        return predictor.segment_probabilities(samples)
    from wav2genre_cache.audio.decode import segment_track
    from wav2genre_cache.encoders.embed_tracks import embed_tracks, track_windows
    from wav2genre_cache.encoders.finetuned import segment_probabilities

    seg, hop = predictor.meta["segment_seconds"], predictor.meta["hop_seconds"]
    if predictor.finetuned is not None:
        (proba,) = segment_probabilities(
            predictor.finetuned, predictor.frontend, [samples], seg, hop, 8, predictor.device
        )
        return proba.astype(np.float64)
    windows = track_windows(predictor.backbone, samples, *segment_track(samples, seg, hop))
    (feats,) = embed_tracks(predictor.backbone, [windows], seg, hop, predictor.batch_size)
    if predictor.spec.inputs is Inputs.ALL_LAYERS:
        return predictor._proba(feats.reshape(len(feats), -1))
    return predictor._proba(feats[:, predictor.meta["layer"], :])


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
