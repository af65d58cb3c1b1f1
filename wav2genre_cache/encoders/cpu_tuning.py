"""Make a loaded Wav2Vec2-style encoder run faster on the CPU, with the same results.

Each lever was measured with the others in place by `benchmarks/cpu_levers.py` (one bfloat16 call
of random-base on two 10 s segments; how much slower the call is with every lever but that one)
on both CPU kinds the project runs on, 2 cores each: AMD EPYC Zen 4 with AVX512-BF16
(`benchmarks/results/cpu_levers.json`) and Intel Xeon with AMX
(`benchmarks/results/cpu_levers_intel_amx.json`, fastest of 3 rounds). Calls move by about 5%
run to run.

    lever                    AMD Zen 4  Intel AMX  what it leans on
    channels-last-encoder       +5%       +84%     public ops, the conv stack's attribute names
                                                   (a private fused conv+GELU with packing)
    packed-and-fused           +16%       +10%     private oneDNN ops (_reorder_linear_weight,
                                                   _linear_pointwise, _convolution_pointwise)
    position-conv               +4%        +4%     a private op, transformers internals
                                                   (num_pad_remove, a class matched by name)
    eager-attention             +8%        -5%     set_attn_implementation (public)
    heap (keep_freed_memory)    +7%       +16%     glibc mallopt; only `embed` and `run`

On by default (DEFAULT_LEVERS) are the two that paid on both: the channels-last feature encoder
and the packed linear layers with fused GELUs (with the heap setting of `embed` and `run`:
2.19x transformers' model on Intel AMX, against 1.99x with every lever). Position conv (4% on
both, within the noise) and eager attention (slower on Intel AMX than transformers' SDPA) are
opt-in: WAV2GENRE_CPU_LEVERS=all, or a comma-separated list of lever names ("none" turns every
one off). The private oneDNN operators are tried on a tiny input first (onednn_available); where
they are missing or fail, the packed and fused kernels are skipped and the rest stays.

Every module swapped in computes what the module it replaces computes; tests compare them with
transformers' own to 1e-5 in float32, and load_backbone's precision check compares the tuned
bfloat16 model with float32 before using it (the enabled levers are part of its key).
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch
import torch.nn.functional as F

from wav2genre_cache._io import comma_list
from wav2genre_cache.errors import OptionError

# Models whose modules the swaps below were checked against (tests/encoders/test_cpu_tuning.py). Others,
# WavLM for one (its attention reads q_proj.weight directly), keep transformers' modules.
TUNED_MODELS = ("Wav2Vec2Model", "HubertModel")

LEVERS = ("channels-last-encoder", "packed-and-fused", "position-conv", "eager-attention")
# Kept by default: each paid on both CPU kinds (figures in the module docstring).
DEFAULT_LEVERS = frozenset({"channels-last-encoder", "packed-and-fused"})
LEVERS_ENV = "WAV2GENRE_CPU_LEVERS"


def enabled_levers() -> frozenset[str]:
    """The levers tune_for_cpu applies: DEFAULT_LEVERS, or what WAV2GENRE_CPU_LEVERS names
    ("all", "none", or a comma-separated list of LEVERS)."""
    value = os.environ.get(LEVERS_ENV, "").strip().lower()
    if not value:
        return DEFAULT_LEVERS
    if value in ("all", "none"):
        return frozenset(LEVERS if value == "all" else ())
    names = frozenset(comma_list(value))
    if unknown := sorted(names - set(LEVERS)):
        raise OptionError(
            f"{LEVERS_ENV}={value}: unknown lever(s) {', '.join(unknown)}; use all, none, or "
            f"some of {', '.join(LEVERS)}"
        )
    return names


def tune_for_cpu(model: torch.nn.Module, levers: frozenset[str] | None = None) -> None:
    """Apply the CPU levers (enabled_levers() unless given) to a model in its final dtype."""
    levers = enabled_levers() if levers is None else frozenset(levers)
    if type(model).__name__ not in TUNED_MODELS:
        return
    if "eager-attention" in levers and hasattr(model, "set_attn_implementation"):
        # Opt-in. A plain matmul-softmax-matmul instead of transformers' SDPA: +8% on AMD Zen 4
        # (bfloat16; 7 against 11 ms per layer), but 5% slower on Intel AMX, whose SDPA kernel
        # wins. On Whisper's 1,500-frame windows SDPA is faster on both (not a TUNED_MODEL).
        try:
            model.set_attn_implementation("eager")
        except (ValueError, ImportError):
            pass
    # The rest pays in bfloat16 only: channels-last convolutions measured 30% slower in float32.
    if next(model.parameters()).dtype != torch.bfloat16:
        return
    fuse = "packed-and-fused" in levers and onednn_available()
    encoder = getattr(model, "feature_extractor", None)
    if (
        "channels-last-encoder" in levers
        and encoder is not None
        and ChannelsLastFeatureEncoder.supports(encoder)
    ):
        # Kept: +84% on Intel AMX (where oneDNN's channels-first bfloat16 convolutions are
        # slow), +5% on AMD Zen 4 (4.7%, at the line); public ops, a fused conv+GELU only with
        # `fuse`.
        model.feature_extractor = ChannelsLastFeatureEncoder(encoder, fuse=fuse)
    pos = getattr(getattr(model, "encoder", None), "pos_conv_embed", None)
    if "position-conv" in levers and pos is not None and ChannelsLastPositionalConv.supports(pos):
        # Opt-in: +4% on AMD Zen 4 and on Intel AMX (within run-to-run noise), for transformers
        # internals (num_pad_remove, the class matched by name) and a private op when fused.
        model.encoder.pos_conv_embed = ChannelsLastPositionalConv(pos, fuse=fuse)
    if fuse and hasattr(model, "encoder"):
        # Kept: +16% on AMD Zen 4 (the largest lever there), +10% on Intel AMX: worth its
        # private oneDNN ops, which onednn_available() tries before they are used.
        pack_linear_layers(model.encoder)


def onednn_available() -> bool:
    """True where torch's oneDNN ops for packed weights and fused activations work."""
    try:
        w = torch.ones(4, 4, dtype=torch.bfloat16)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 2)
        out = torch.ops.mkldnn._linear_pointwise(
            torch.ones(2, 4, dtype=w.dtype), packed, None, "gelu", [], "none"
        )
        return bool(out.shape == (2, 4))
    except (AttributeError, RuntimeError):
        return False


def _is_exact_gelu(activation: object) -> bool:
    """transformers' "gelu" activation: torch's erf GELU, which oneDNN fuses exactly."""
    return getattr(activation, "act", None) is F.gelu or activation is F.gelu


class PackedLinear(torch.nn.Module):
    """nn.Linear on a weight reordered once for oneDNN, optionally with GELU fused in.

    PyTorch reorders a linear layer's weight into oneDNN's blocked layout on every call; doing
    it once made the transformer's matrix multiplies 10% faster in bfloat16 here (400 -> 440
    GFLOP/s), and fusing the feed-forward GELU saves a pass over its 3,072-wide output.
    """

    def __init__(self, linear: torch.nn.Linear, activation: str = "none", rows_hint: int = 1000):
        super().__init__()
        self.activation = activation
        # Plain attributes, not parameters: an inference-only, opaque oneDNN tensor.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows_hint)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            x, self.packed, self.bias, self.activation, [], "none"
        )


def pack_linear_layers(module: torch.nn.Module) -> None:
    """Swap every nn.Linear under module for a PackedLinear; fuse feed-forward GELUs."""
    for child in list(module.modules()):
        dense = getattr(child, "intermediate_dense", None)
        act = getattr(child, "intermediate_act_fn", None)
        if isinstance(dense, torch.nn.Linear) and _is_exact_gelu(act):
            child.intermediate_dense = PackedLinear(dense, activation="gelu")
            child.intermediate_act_fn = torch.nn.Identity()
        for name, sub in list(child.named_children()):
            if isinstance(sub, torch.nn.Linear):
                setattr(child, name, PackedLinear(sub))


class ChannelsLastFeatureEncoder(torch.nn.Module):
    """Wav2Vec2's convolutional feature encoder, computed channels-last.

    Same weights and arithmetic as the original. The first layer (one input channel) becomes a
    matrix multiply over strided windows of the waveform, the others channels-last convolutions:
    in bfloat16, oneDNN runs those 30% faster than the channels-first ones transformers uses.
    With `fuse`, a GELU that follows a convolution runs inside it. Output: [batch, channels,
    frames], as the original's.
    """

    def __init__(self, encoder: torch.nn.Module, fuse: bool = False):
        super().__init__()
        self.conv_layers = encoder.conv_layers
        self.fuse = fuse
        # Reordered once: channels-last [out, in, 1, kernel] (the first layer is a matmul).
        self.weights = [
            layer.conv.weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last)
            for layer in self.conv_layers[1:]
        ]

    @staticmethod
    def supports(encoder: torch.nn.Module) -> bool:
        """True for the plain conv stacks of Wav2Vec2, HuBERT, WavLM and their relatives."""
        layers = getattr(encoder, "conv_layers", None)
        if not layers or not all(
            isinstance(getattr(la, "conv", None), torch.nn.Conv1d) for la in layers
        ):
            return False
        plain = all(
            la.conv.padding == (0,) and la.conv.dilation == (1,) and la.conv.groups == 1
            for la in layers
        )
        norms = all(
            isinstance(
                getattr(la, "layer_norm", None),
                (torch.nn.GroupNorm, torch.nn.LayerNorm, type(None)),
            )
            for la in layers
        )
        return plain and norms and layers[0].conv.in_channels == 1

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        first = self.conv_layers[0].conv
        (k,), (s,) = first.kernel_size, first.stride
        x = waveform.contiguous()
        frames = (x.shape[1] - k) // s + 1
        windows = x.as_strided((x.shape[0], frames, k), (x.stride(0), s, 1))
        h = windows @ first.weight[:, 0, :].t()  # [batch, frames, channels]
        if first.bias is not None:
            h = h + first.bias
        # [batch, channels, 1, frames] in channels-last memory: the layout of h, no copy.
        h = self._norm_activation(self.conv_layers[0], h.transpose(1, 2).unsqueeze(2))
        for layer, weight in zip(self.conv_layers[1:], self.weights, strict=True):
            conv = layer.conv
            stride = [1, conv.stride[0]]
            if (
                self.fuse
                and getattr(layer, "layer_norm", None) is None
                and _is_exact_gelu(layer.activation)
            ):
                h = torch.ops.mkldnn._convolution_pointwise(
                    h, weight, conv.bias, [0, 0], stride, [1, 1], 1, "gelu", [], "none"
                )
                continue
            h = F.conv2d(h, weight, conv.bias, stride=stride)
            h = self._norm_activation(layer, h)
        return h.squeeze(2)

    @staticmethod
    def _norm_activation(layer: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
        norm = getattr(layer, "layer_norm", None)
        if isinstance(norm, torch.nn.GroupNorm) and h.dtype == torch.float32:
            # The channels-last kernel sums in another order: 1e-5 off in float32, so float32
            # (the exact path) takes the channels-first one, for a copy.
            h = norm(h.contiguous()).contiguous(memory_format=torch.channels_last)
        elif isinstance(norm, torch.nn.GroupNorm):
            h = norm(h)  # keeps 4-d channels-last input channels-last
        elif isinstance(norm, torch.nn.LayerNorm):
            h = norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return layer.activation(h)


class ChannelsLastPositionalConv(torch.nn.Module):
    """Wav2Vec2's convolutional position embedding (a grouped convolution with a 128-frame
    kernel), computed channels-last: 29 ms against 46 ms per call in bfloat16 here."""

    def __init__(self, pos: torch.nn.Module, fuse: bool = False):
        super().__init__()
        conv = pos.conv
        # The weight-normed weight, computed once (transformers recomputes it on every call).
        self.weight = (
            conv.weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last)
        )
        self.bias = None if conv.bias is None else conv.bias.detach()
        self.pad, self.groups = conv.padding[0], conv.groups
        self.remove = getattr(pos.padding, "num_pad_remove", 0)
        self.activation = pos.activation
        self.fuse = fuse and _is_exact_gelu(pos.activation)

    @staticmethod
    def supports(pos: torch.nn.Module) -> bool:
        """True for the transpose-conv-trim-activation module of Wav2Vec2 and HuBERT."""
        conv = getattr(pos, "conv", None)
        return (
            type(pos).__name__.endswith("PositionalConvEmbedding")
            and isinstance(conv, torch.nn.Conv1d)
            and conv.stride == (1,)
            and conv.dilation == (1,)
            and hasattr(pos, "padding")
            and hasattr(pos, "activation")
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.contiguous().transpose(1, 2).unsqueeze(2)  # channels-last, no copy
        if self.fuse:
            out = torch.ops.mkldnn._convolution_pointwise(
                x,
                self.weight,
                self.bias,
                [0, self.pad],
                [1, 1],
                [1, 1],
                self.groups,
                "gelu",
                [],
                "none",
            )
        else:
            out = self.activation(
                F.conv2d(x, self.weight, self.bias, padding=(0, self.pad), groups=self.groups)
            )
        if self.remove:
            out = out[..., : -self.remove]
        return out.squeeze(2).transpose(1, 2)


def keep_freed_memory() -> None:
    """Stop glibc from returning large freed blocks to the system after every model call.

    Each hidden state of a 10 s segment is tens of MB: glibc serves those with mmap and unmaps
    them on free, so every call page-faults its activations in afresh: without this a bfloat16
    call is 7% slower on AMD Zen 4 and 16% on Intel AMX, with the other levers in. Keeping them
    in the heap is what jemalloc/tcmalloc do, as PyTorch's CPU tuning guide advises; this is the
    same with glibc alone. Process-wide, Linux/glibc only: so only a command that owns its
    process asks for it (`embed` and `run`; `--release-freed-memory` opts out), never a library
    call such as load_backbone.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        m_trim_threshold, m_mmap_max = -1, -4
        mallopt(m_mmap_max, 0)
        mallopt(m_trim_threshold, 1 << 30)
