"""Load a Wav2Vec2-style encoder and turn equal-length segments into per-layer mean embeddings."""

from __future__ import annotations

import hashlib
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import normalize_segments
from .cpu_tuning import tune_for_cpu

DEFAULT_MODEL = "facebook/wav2vec2-base-960h"
BUILTIN_MODELS = ("random-base", "random-tiny")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class BackboneError(Exception):
    """The backbone cannot be loaded; the message says what to do."""


@dataclass
class Backbone:
    """An audio encoder that maps [batch, samples] to [batch, layers, dim] mean-pooled states."""

    model: torch.nn.Module
    model_id: str
    revision: str
    device: torch.device
    dtype: torch.dtype

    @property
    def n_layers(self) -> int:
        """Hidden states returned: the encoder input plus one per transformer layer."""
        return self.model.config.num_hidden_layers + 1

    @property
    def dim(self) -> int:
        """Width of each hidden state."""
        return self.model.config.hidden_size

    @torch.inference_mode()
    def embed(self, segments: np.ndarray) -> np.ndarray:
        """Per-layer mean over frames of every hidden state, float32 [batch, layers, dim].

        All rows must have the same length: Wav2Vec2-base was trained without attention
        masks, so padding would change the output.
        """
        if self.device.type == "cuda":
            # Raw audio up, normalised there: the main thread's numpy pass was a third of its
            # per-batch work, and a GPU feeds on that thread.
            x = torch.from_numpy(np.ascontiguousarray(segments, dtype=np.float32))
            x = normalize_on_device(x.pin_memory().to(self.device, non_blocking=True))
        else:
            x = torch.from_numpy(normalize_segments(segments))
        # bfloat16 runs on bfloat16 weights (12% faster than autocast on the CPU, same accuracy);
        # float16 keeps float32 weights under autocast, whose fp32 islands avoid overflow.
        x = x.to(torch.bfloat16) if self.dtype == torch.bfloat16 else x
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype == torch.float16
            else nullcontext()
        )
        with autocast:
            out = self.model(x, output_hidden_states=True)
        pooled = torch.stack([h.mean(dim=1, dtype=torch.float32) for h in out.hidden_states], dim=1)
        return pooled.cpu().numpy()


def normalize_on_device(x: torch.Tensor) -> torch.Tensor:
    """normalize_segments in torch, on the tensor's device (float32 [batch, samples])."""
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
    return (x - mean) / torch.sqrt(var + 1e-7)


def resolve_device(device: str = "auto") -> torch.device:
    """auto picks CUDA when it is present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackboneError("--device cuda was asked for but no CUDA GPU is visible to torch")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on CUDA and on CPUs with native bfloat16, float32 on other CPUs."""
    if dtype == "auto":
        native = device.type == "cuda" or cpu_has_native_bfloat16()
        return torch.bfloat16 if native else torch.float32
    if dtype not in _DTYPES:
        raise BackboneError(f"unknown dtype {dtype!r}; use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def cpu_has_native_bfloat16() -> bool:
    """True where the CPU computes bfloat16 natively (AVX512-BF16 or AMX): 2x faster here."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_batch_size(device: torch.device) -> int:
    """Segments per model call: small on the CPU (larger batches were slower there), large on GPUs."""
    return 64 if device.type == "cuda" else 2


def builtin_model(name: str, seed: int = 0) -> torch.nn.Module:
    """The untrained built-ins: random-base (the base architecture) and random-tiny."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    if name == "random-base":
        config = Wav2Vec2Config()
    elif name == "random-tiny":
        # Same 20 ms frame rate as the base model, a fraction of its width and depth.
        config = Wav2Vec2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(32,) * 7,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        )
    else:
        raise BackboneError(f"unknown built-in model {name!r}; use {', '.join(BUILTIN_MODELS)}")
    # Seeded and isolated from the global RNG: every run builds the same weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Vec2Model(config)
    return model


def load_backbone(
    model_id: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto"
) -> Backbone:
    """Load a backbone by Hugging Face id, local save_pretrained directory, or built-in name."""
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if model_id in BUILTIN_MODELS:
        model, revision = builtin_model(model_id), "seed0"
    else:
        model, revision = _load_pretrained(model_id)
    model.eval().to(dev)
    if torch_dtype == torch.bfloat16:
        model.to(torch.bfloat16)
    if dev.type == "cpu":
        tune_for_cpu(model)
    return Backbone(model, model_id, revision, dev, torch_dtype)


def _load_pretrained(model_id: str) -> tuple[torch.nn.Module, str]:
    from transformers import AutoModel

    local = Path(model_id).expanduser()
    try:
        # A CTC checkpoint (wav2vec2-base-960h) loads as the bare encoder through AutoModel.
        model = AutoModel.from_pretrained(str(local) if local.is_dir() else model_id)
    except Exception as exc:
        if local.is_dir():
            raise BackboneError(f"{local}: not a loadable model directory ({exc})") from None
        raise BackboneError(_offline_message(model_id, exc)) from None
    if not hasattr(model.config, "num_hidden_layers"):
        raise BackboneError(f"{model_id}: not an audio encoder with hidden states")
    revision = getattr(model.config, "_commit_hash", None) or _dir_hash(local)
    return model, revision


def _offline_message(model_id: str, exc: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return (
        f"Could not load the model {model_id!r}: it is not in the local Hugging Face cache and "
        f"could not be downloaded{' (HF_HUB_OFFLINE is set)' if offline else ''}. Fix it in one "
        "of two ways: run the same command once on a machine with internet access (the weights, "
        "about 360 MB, are then kept in ~/.cache/huggingface and later runs work offline), or "
        "download the model elsewhere, save it with `save_pretrained(DIR)` and pass "
        "`--model DIR`. For a quick test without any download use `--model random-tiny`. "
        f"(Underlying error: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__})"
    )


def _dir_hash(path: Path) -> str:
    """A short content hash of a local model directory's config and weights."""
    if not path.is_dir():
        return ""
    h = hashlib.blake2b(digest_size=8)
    for f in sorted(path.iterdir()):
        if f.suffix in (".json", ".safetensors", ".bin") and f.is_file():
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                    h.update(block)
    return h.hexdigest()
