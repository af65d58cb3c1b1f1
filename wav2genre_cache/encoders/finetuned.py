"""A fine-tuned encoder with its head: the model `finetune` trains and a fine-tuned bundle holds.

The inference half of fine-tuning, so that predict and serve can load such a bundle without
importing any training code. The model is the encoder, mean pooling of one layer's frames (or
of a learned softmax-weighted sum of every layer, as SUPERB does) over each segment's own
frames, and the paper's head (dense layers with BatchNorm, ReLU and Dropout). Segments meet
the encoder exactly as in `embed`: the front end makes the windows (frontends.py), so a
Whisper segment is pooled over the frames of its packed or lone window.

A bundle stores the encoder's transformers config, its feature-extractor config and every
weight in safetensors; it is rebuilt from an allow-list of encoder classes, never unpickled.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wav2genre_cache.audio.decode import SAMPLE_RATE, segment_track
from wav2genre_cache.audio.whisper_windows import Span
from wav2genre_cache.encoders.frontends import frontend_for, span_weights
from wav2genre_cache.mlp import mlp

WEIGHTED = -1  # the layer of a model that pools a learned weighted sum of every layer
HEAD_HIDDEN = (256, 128)  # the frozen FCNN's default widths (heads.networks.FCNNClassifier)
HEAD_DROPOUT = 0.3
# The encoder classes a fine-tuned bundle may name: built from their config, weights loaded from
# safetensors. Anything else in bundle.json is refused, never imported by name.
ENCODER_CLASSES = {
    "Wav2Vec2Model": "transformers.models.wav2vec2.modeling_wav2vec2",
    "HubertModel": "transformers.models.hubert.modeling_hubert",
    "WavLMModel": "transformers.models.wavlm.modeling_wavlm",
    "Data2VecAudioModel": "transformers.models.data2vec.modeling_data2vec_audio",
    "WhisperEncoder": "transformers.models.whisper.modeling_whisper",
}
EXTRACTOR_CLASSES = ("Wav2Vec2FeatureExtractor", "WhisperFeatureExtractor")
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EXTRACTOR_FILE = "preprocessor_config.json"


def transformer_layers(encoder: torch.nn.Module) -> torch.nn.ModuleList:
    """The encoder's stack of transformer layers (Whisper's `layers`, Wav2Vec2's `encoder.layers`)."""
    if isinstance(getattr(encoder, "layers", None), torch.nn.ModuleList):
        return encoder.layers
    inner = getattr(encoder, "encoder", None)
    if isinstance(getattr(inner, "layers", None), torch.nn.ModuleList):
        return inner.layers
    raise ValueError(f"{type(encoder).__name__}: no stack of transformer layers found to fine-tune")


def feature_encoder(encoder: torch.nn.Module) -> list[torch.nn.Module]:
    """The convolutional front of the encoder, frozen by default as Hugging Face does for Wav2Vec2."""
    if hasattr(encoder, "conv1") and hasattr(encoder, "conv2"):  # Whisper
        return [encoder.conv1, encoder.conv2]
    found = getattr(encoder, "feature_extractor", None)
    return [found] if isinstance(found, torch.nn.Module) else []


def keep_layers(encoder: torch.nn.Module, n: int) -> bool:
    """Drop the transformer layers above the n-th: a model pooling layer n never runs them.

    Hidden state n of the cut encoder is then hidden state n of the whole one: a final layer
    norm (Whisper's, stable-layer-norm Wav2Vec2's), which only the last hidden state passes
    through, is removed with the layers it followed.
    """
    layers = transformer_layers(encoder)
    if n >= len(layers):
        return False
    del layers[n:]
    drop_final_norm(encoder)
    encoder.config.num_hidden_layers = n  # Whisper's config maps it to encoder_layers
    return True


def drop_final_norm(encoder: torch.nn.Module) -> None:
    """Remove the layer norm that only the last hidden state passes through, where there is one."""
    for owner in (encoder, getattr(encoder, "encoder", None)):
        if owner is not None and hasattr(owner, "layer_norm") and _norm_is_last(owner):
            owner.layer_norm = torch.nn.Identity()


def _norm_is_last(owner: torch.nn.Module) -> bool:
    """Whether this module's layer_norm follows its layers (Whisper, stable-layer-norm Wav2Vec2)."""
    if type(owner).__name__ == "WhisperEncoder":
        return True
    return type(owner).__name__.endswith("EncoderStableLayerNorm")


def build_head(dim: int, n_classes: int) -> torch.nn.Sequential:
    """The paper's head: BatchNorm on the pooled state, then dense layers with BatchNorm, ReLU, Dropout."""
    return torch.nn.Sequential(
        torch.nn.BatchNorm1d(dim), *mlp(dim, n_classes, HEAD_HIDDEN, HEAD_DROPOUT)
    )


class SegmentClassifier(torch.nn.Module):
    """Encoder, span pooling of one layer (or a learned mix of all) and head: windows in, logits out."""

    def __init__(
        self, encoder: torch.nn.Module, input_name: str | None, n_classes: int, layer: int
    ):
        super().__init__()
        # LayerDrop off: a layer skipped in training leaves no hidden state to pool or weigh.
        if getattr(encoder.config, "layerdrop", 0.0):
            encoder.config.layerdrop = 0.0
        if getattr(encoder, "layerdrop", 0.0):
            encoder.layerdrop = 0.0  # Whisper reads its own copy of encoder_layerdrop
        self.encoder = encoder
        self.input_name = input_name
        self.layer = layer
        n_states = encoder.config.num_hidden_layers + 1
        # Zeros: every layer weighs the same at the start.
        self.layer_logits = torch.nn.Parameter(torch.zeros(n_states)) if layer == WEIGHTED else None
        self.head = build_head(encoder.config.hidden_size, n_classes)

    def layer_weights(self) -> list[float] | None:
        """The softmax weight of each layer, for a model that mixes them."""
        if self.layer_logits is None:
            return None
        return torch.softmax(self.layer_logits.detach().float(), 0).tolist()

    def states(self, x: torch.Tensor, spans: list[list[Span]]) -> torch.Tensor:
        """Mean state of every segment the rows hold, in row then span order, of each layer
        the model reads: [segments, 1 or every layer, dim]."""
        out = (
            self.encoder(x, output_hidden_states=True)
            if self.input_name is None
            else self.encoder(**{self.input_name: x}, output_hidden_states=True)
        )
        hidden = (
            out.hidden_states if self.layer_logits is not None else [out.hidden_states[self.layer]]
        )
        weights = span_weights(spans, hidden[0].shape[1]).to(hidden[0].device, hidden[0].dtype)
        keep = [b * weights.shape[1] + j for b, row in enumerate(spans) for j in range(len(row))]
        # [rows, most segments in a row, dim] per layer, then the segments that exist.
        pooled = [torch.bmm(weights, h).reshape(-1, h.shape[-1])[keep] for h in hidden]
        return torch.stack(pooled, dim=1)

    def mix(self, states: torch.Tensor) -> torch.Tensor:
        """[segments, dim]: the one layer, or the softmax-weighted sum of every layer."""
        if self.layer_logits is None:
            return states[:, 0]
        w = torch.softmax(self.layer_logits.float(), 0).to(states.dtype)
        return torch.einsum("sld,l->sd", states, w)

    def forward(self, x: torch.Tensor, spans: list[list[Span]]) -> torch.Tensor:
        """Logits of every segment the rows hold: [segments, classes]."""
        return self.head(self.mix(self.states(x, spans)).float())


def track_windows(frontend: Any, samples: np.ndarray, segment_seconds: float, hop: float | None):
    """(number of segments, [(window, spans)], segment starts, segment length) of one decoded
    track, cut and windowed as embed does it."""
    starts, length = segment_track(samples, segment_seconds, hop)
    return len(starts), list(frontend.windows(samples, starts, length)), starts, length


def window_batches(
    windows: Sequence[tuple[np.ndarray, list[Span]]], width: int, pads: bool, batch_size: int
):
    """Batches of equal-length windows ([rows, width] float32, their spans), in order.

    Whisper windows are zero-padded to their fixed width; a raw-waveform window shorter than a
    full segment (a short track) is a batch of its own, never padded (as embedding_tracks does).
    """
    rows: list[np.ndarray] = []
    spans: list[list[Span]] = []
    for x, sp in windows:
        if not pads and len(x) != width:
            if rows:
                yield np.stack(rows), spans
                rows, spans = [], []
            yield x[None].astype(np.float32), [sp]
            continue
        if pads and len(x) < width:
            x = np.pad(x, (0, width - len(x)))
        rows.append(np.asarray(x, np.float32))
        spans.append(sp)
        if len(rows) == batch_size:
            yield np.stack(rows), spans
            rows, spans = [], []
    if rows:
        yield np.stack(rows), spans


@torch.inference_mode()
def segment_probabilities(
    model: SegmentClassifier,
    frontend: Any,
    tracks: Sequence[np.ndarray],
    segment_seconds: float,
    hop_seconds: float | None,
    batch_size: int,
    device: torch.device,
) -> list[np.ndarray]:
    """Class probabilities [segments, classes] of each decoded track: what finetune evaluates
    and predict reports, from the same code."""
    model.eval()
    width = frontend.input_samples(int(round(segment_seconds * SAMPLE_RATE)))
    out = []
    for samples in tracks:
        n, windows, _, _ = track_windows(frontend, samples, segment_seconds, hop_seconds)
        proba = np.zeros((n, model.head[-1].out_features), np.float32)
        for batch, spans in window_batches(windows, width, frontend.pads, batch_size):
            logits = model(frontend.inputs(batch, device), spans)
            p = torch.softmax(logits.float(), dim=1).cpu().numpy()
            order = [si for row in spans for si, _, _ in row]
            proba[order] = p
        out.append(proba)
    return out


# ---- the bundle's files --------------------------------------------------------------------------


def save_model(model: SegmentClassifier, extractor: Any | None, directory: Path) -> list[str]:
    """Write the encoder's config, its feature extractor's config and every weight; the file names."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / MODEL_FILE))
    encoder_config = model.encoder.config.to_dict()
    (directory / CONFIG_FILE).write_text(json.dumps(encoder_config, indent=1, default=str))
    files = [MODEL_FILE, CONFIG_FILE]
    if extractor is not None:
        (directory / EXTRACTOR_FILE).write_text(extractor.to_json_string())
        files.append(EXTRACTOR_FILE)
    return files


def _load_extractor(directory: Path) -> Any:
    """The feature extractor from its JSON config, by an allow-listed class (no file search)."""
    import transformers

    config = json.loads((directory / EXTRACTOR_FILE).read_text())
    name = config.get("feature_extractor_type") if isinstance(config, dict) else None
    if name not in EXTRACTOR_CLASSES:
        raise ValueError(
            f"names feature extractor {name!r}; a fine-tuned bundle may hold one of "
            f"{', '.join(EXTRACTOR_CLASSES)}"
        )
    return getattr(transformers, name).from_dict(config)


def load_model(directory: Path, meta: dict) -> tuple[SegmentClassifier, Any]:
    """A fine-tuned bundle's model and front end, from files the caller has checksummed.

    ValueError (a message for the user) when bundle.json names what this version cannot build.
    """
    from safetensors.torch import load_file

    model_meta = meta.get("model") or {}
    cls_name = model_meta.get("encoder_class")
    if cls_name not in ENCODER_CLASSES:
        raise ValueError(
            f"names encoder class {cls_name!r}; a fine-tuned bundle may hold one of "
            f"{', '.join(ENCODER_CLASSES)}"
        )
    module = importlib.import_module(ENCODER_CLASSES[cls_name])
    encoder_cls = getattr(module, cls_name)
    config = encoder_cls.config_class.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    with torch.random.fork_rng(devices=[]):  # every weight is overwritten below
        encoder = encoder_cls(config)
    extractor = _load_extractor(directory) if (directory / EXTRACTOR_FILE).is_file() else None
    if model_meta.get("layers_cut"):
        drop_final_norm(encoder)
    frontend = frontend_for(encoder, extractor, meta.get("window"))
    model = SegmentClassifier(
        encoder, frontend.input_name, len(meta["labels"]), int(model_meta["layer"])
    )
    model.load_state_dict(load_file(str(directory / MODEL_FILE)), strict=True)
    return model.eval(), frontend
