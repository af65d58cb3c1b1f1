"""The fine-tuned model: cutting the encoder changes no hidden state it keeps, and its pooling
is embed's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tone, whisper_config
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from wav2genre_cache.encoders.backbone import load_backbone
from wav2genre_cache.encoders.finetuned import (
    WEIGHTED,
    SegmentClassifier,
    keep_layers,
    window_batches,
)
from wav2genre_cache.encoders.frontends import frontend_for
from wav2genre_cache.encoders.sources import fetch_model


def _hidden(model, x, name=None):
    with torch.inference_mode():
        out = (
            model(x, output_hidden_states=True)
            if name is None
            else model(**{name: x}, output_hidden_states=True)
        )
    return out.hidden_states


def test_a_cut_wav2vec2_keeps_the_hidden_states_below_the_cut():
    full, _, _ = fetch_model("random-tiny")
    cut, _, _ = fetch_model("random-tiny")
    assert keep_layers(cut, 1)
    x = torch.from_numpy(tone(1.0))[None]
    a, b = _hidden(full.eval(), x), _hidden(cut.eval(), x)
    assert len(b) == 2 and cut.config.num_hidden_layers == 1
    torch.testing.assert_close(a[1], b[1])


def test_a_cut_whisper_encoder_drops_its_final_norm_with_the_layers():
    torch.manual_seed(0)
    full = WhisperEncoder(whisper_config()).eval()
    cut = WhisperEncoder(whisper_config()).eval()
    cut.load_state_dict(full.state_dict())
    assert keep_layers(cut, 1)
    x = torch.randn(1, 80, 3000)
    a, b = _hidden(full, x, "input_features"), _hidden(cut, x, "input_features")
    torch.testing.assert_close(a[1], b[-1])  # hidden state 1 of the whole, not its layer norm
    assert not keep_layers(cut, 1)  # nothing above it to cut


def test_its_pooling_is_embeds_on_packed_whisper_windows(whisper_dir):
    backbone = load_backbone(whisper_dir, device="cpu", dtype="float32", window="packed")
    encoder, _, extractor = fetch_model(whisper_dir)
    frontend = frontend_for(encoder, extractor, "packed")
    model = SegmentClassifier(encoder.eval(), frontend.input_name, 3, layer=2).eval()
    samples = tone(25.0, freq=330.0)
    starts, length = [0, 80_000, 160_000, 240_000], 80_000  # four 5 s segments
    windows = list(frontend.windows(samples, starts, length))
    batch, spans = next(window_batches(windows, frontend.window_samples, True, 8))
    with torch.inference_mode():
        ours = model.states(frontend.inputs(batch, torch.device("cpu")), spans)[:, 0].numpy()
    embedded = np.concatenate(backbone.embed_windows(batch, spans))[:, 2]
    np.testing.assert_allclose(ours, embedded, rtol=1e-4, atol=1e-5)


def test_layer_weights_start_equal_and_sum_to_one():
    encoder, _, _ = fetch_model("random-tiny")
    model = SegmentClassifier(encoder, None, 4, WEIGHTED)
    assert model.layer_weights() == pytest.approx([1 / 3] * 3)
