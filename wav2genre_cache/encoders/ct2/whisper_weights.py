"""A CTranslate2 Whisper model's encoder in transformers' terms: the WhisperConfig its variables
describe, its weights under WhisperEncoder's names, and the encoder built from them.
"""

from __future__ import annotations

import re
from typing import BinaryIO

import numpy as np
import torch

from wav2genre_cache.encoders.ct2.format import Ct2Index, read_array
from wav2genre_cache.encoders.ct2.format import backbone_error as _error


def _count_layers(index: Ct2Index, prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    found = {int(m.group(1)) for n in index.variables if (m := pattern.match(n))}
    if found != set(range(len(found))):
        raise _error(f"{index.label}: {prefix} layers {sorted(found)} are not numbered 0..n-1")
    return len(found)


def _scalar(stream: BinaryIO, index: Ct2Index, name: str, default: int) -> int:
    return int(read_array(stream, index, name).reshape(-1)[0]) if index.resolve(name) else default


def whisper_config(stream: BinaryIO, index: Ct2Index):
    """The transformers WhisperConfig that the variables' shapes and scalars describe."""
    from transformers import WhisperConfig

    if "whisper" not in index.spec.lower():
        raise _error(f"{index.label}: a CTranslate2 {index.spec}, not a Whisper model")

    def shape(name: str) -> tuple[int, ...]:
        var = index.resolve(name)
        if var is None:
            raise _error(f"{index.label}: the variable {name!r} is missing (not a Whisper model?)")
        return var.shape

    d_model, mels, _ = shape("encoder/conv1/weight")
    layers = _count_layers(index, "encoder")
    dec_layers = _count_layers(index, "decoder")
    vocab = index.resolve("decoder/embeddings/weight")
    dec_pos = index.resolve("decoder/position_encodings/encodings")
    ffn = shape("encoder/layer_0/ffn/linear_0/weight")[0] if layers else 4 * d_model
    heads = _scalar(stream, index, "encoder/num_heads", 0)
    if heads <= 0 or d_model % heads:
        raise _error(f"{index.label}: encoder/num_heads = {heads} does not divide {d_model}")
    return WhisperConfig(
        vocab_size=vocab.shape[0] if vocab else 51865,
        num_mel_bins=mels,
        d_model=d_model,
        encoder_layers=layers,
        encoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        decoder_layers=dec_layers,
        decoder_attention_heads=_scalar(stream, index, "decoder/num_heads", heads),
        decoder_ffn_dim=ffn,
        max_source_positions=shape("encoder/position_encodings/encodings")[0],
        max_target_positions=dec_pos.shape[0] if dec_pos else 448,
    )


def encoder_state_dict(stream: BinaryIO, index: Ct2Index, config) -> dict[str, torch.Tensor]:
    """The encoder's weights under transformers' WhisperEncoder names, float32."""
    d = config.d_model
    state: dict[str, np.ndarray] = {}

    def put(hf: str, ct2: str) -> None:
        state[hf] = read_array(stream, index, ct2)

    put("conv1.weight", "encoder/conv1/weight")
    put("conv1.bias", "encoder/conv1/bias")
    put("conv2.weight", "encoder/conv2/weight")
    put("conv2.bias", "encoder/conv2/bias")
    put("embed_positions.weight", "encoder/position_encodings/encodings")
    for i in range(config.encoder_layers):
        ct, hf = f"encoder/layer_{i}", f"layers.{i}"
        # Query, key and value are stacked along the output rows. Whisper's key has no bias; a
        # key bias would add the same q.b to every score of a query, which softmax cancels.
        qkv_w = read_array(stream, index, f"{ct}/self_attention/linear_0/weight")
        qkv_b = read_array(stream, index, f"{ct}/self_attention/linear_0/bias")
        if qkv_w.shape != (3 * d, d) or qkv_b.shape != (3 * d,):
            raise _error(f"{index.label}: {ct} self-attention is not a fused q/k/v of width {d}")
        # Copies, so that no two saved tensors share memory.
        state[f"{hf}.self_attn.q_proj.weight"] = qkv_w[:d].copy()
        state[f"{hf}.self_attn.q_proj.bias"] = qkv_b[:d].copy()
        state[f"{hf}.self_attn.k_proj.weight"] = qkv_w[d : 2 * d].copy()
        state[f"{hf}.self_attn.v_proj.weight"] = qkv_w[2 * d :].copy()
        state[f"{hf}.self_attn.v_proj.bias"] = qkv_b[2 * d :].copy()
        put(f"{hf}.self_attn.out_proj.weight", f"{ct}/self_attention/linear_1/weight")
        put(f"{hf}.self_attn.out_proj.bias", f"{ct}/self_attention/linear_1/bias")
        put(f"{hf}.self_attn_layer_norm.weight", f"{ct}/self_attention/layer_norm/gamma")
        put(f"{hf}.self_attn_layer_norm.bias", f"{ct}/self_attention/layer_norm/beta")
        put(f"{hf}.fc1.weight", f"{ct}/ffn/linear_0/weight")
        put(f"{hf}.fc1.bias", f"{ct}/ffn/linear_0/bias")
        put(f"{hf}.fc2.weight", f"{ct}/ffn/linear_1/weight")
        put(f"{hf}.fc2.bias", f"{ct}/ffn/linear_1/bias")
        put(f"{hf}.final_layer_norm.weight", f"{ct}/ffn/layer_norm/gamma")
        put(f"{hf}.final_layer_norm.bias", f"{ct}/ffn/layer_norm/beta")
    put("layer_norm.weight", "encoder/layer_norm/gamma")
    put("layer_norm.bias", "encoder/layer_norm/beta")
    return {
        k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()
    }


def build_encoder(config, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    # Built on the meta device and given the loaded tensors: a random initialisation first would
    # take most of a cached load's time.
    with torch.device("meta"):
        model = WhisperEncoder(config)
    try:
        # strict: every weight of the encoder must come from the file, and nothing else.
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise _error(f"the converted weights do not fit a Whisper encoder ({exc})") from None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        # A transformers version with a non-persistent buffer: build it the ordinary way.
        model = WhisperEncoder(config)
        model.load_state_dict(state, strict=True)
    return model.float().eval()
