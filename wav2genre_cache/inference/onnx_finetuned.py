"""A fine-tuned bundle as ONNX: its own encoder, pooled as it was trained, and its own head.

The same export layout as any bundle (onnx_export), so `onnx_runtime` runs it unchanged:
encoder.onnx gives each segment's pooled state (its layer's, or the learned softmax mix of
every layer), head.onnx the head (BatchNorm and dense layers, in eval mode) and a softmax, both
through torch.onnx.
"""

from __future__ import annotations

import numpy as np
import torch

from wav2genre_cache.inference.onnx_heads import HEAD_ONNX, torch_to_onnx


class PooledFinetuned(torch.nn.Module):
    """A SegmentClassifier's encoder and pooling: [batch, dim] (waveform) or [batch, spans, dim]
    (Whisper, each span pooled by its weights), mixed over layers as the model mixes them."""

    def __init__(self, model: torch.nn.Module, whisper: bool):
        super().__init__()
        self.model, self.whisper = model, whisper
        self.layers = list(range(model.encoder.config.num_hidden_layers + 1))
        if model.layer_logits is None:
            self.layers = [model.layer]
        # What the export's log says: the saved encoder's layers, all of them run.
        self.kept = self.total = model.encoder.config.num_hidden_layers

    def forward(self, x: torch.Tensor, span_weights: torch.Tensor | None = None) -> torch.Tensor:
        model = self.model
        if model.input_name is None:
            out = model.encoder(x, output_hidden_states=True)
        else:
            out = model.encoder(**{model.input_name: x}, output_hidden_states=True)
        hidden = [out.hidden_states[i] for i in self.layers]
        if self.whisper:
            pooled = [torch.bmm(span_weights, h) for h in hidden]
        else:
            pooled = [h.mean(dim=1) for h in hidden]
        if model.layer_logits is None:
            return pooled[0]
        weights = torch.softmax(model.layer_logits.float(), 0)
        return sum(w * p for w, p in zip(weights, pooled, strict=True))


class _Scored(torch.nn.Module):
    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(x), dim=1)


def finetuned_head_onnx(model: torch.nn.Module, directory) -> dict:
    """Write the fine-tuned model's head with its softmax as head.onnx; its manifest entry."""
    from wav2genre_cache._io import atomic_write

    dim = model.encoder.config.hidden_size
    onx = torch_to_onnx(
        _Scored(model.head).eval(), (torch.zeros(2, dim),), ["embedding"], ["probabilities"]
    )
    atomic_write(directory / HEAD_ONNX, lambda tmp: tmp.write_bytes(onx))
    return {"file": HEAD_ONNX, "runtime": "onnx", "converter": "torch.onnx"}


class Classes:
    """What the manifest reads of a head: its classes, here every label in order."""

    def __init__(self, n: int):
        self.classes_ = np.arange(n)
