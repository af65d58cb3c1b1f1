"""Load an audio encoder and turn a track's segments into per-layer mean embeddings."""

from __future__ import annotations

import copy
import json
import os
import platform
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wav2genre_cache._io import atomic_write_text
from wav2genre_cache.audio.decode import SAMPLE_RATE
from wav2genre_cache.encoders.cpu_tuning import enabled_levers, tune_for_cpu
from wav2genre_cache.encoders.frontends import (
    Span,
    WaveformFrontEnd,
    frontend_for,
    normalize_on_device,  # noqa: F401  (its home was here; importers keep working)
    pool_spans,
)
from wav2genre_cache.encoders.sources import DEFAULT_MODEL, fetch_model, first_line
from wav2genre_cache.errors import BackboneError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Reduced precision must stay this close to float32 (largest per-layer max |a - b| / max |b|)
# on the probe signal, or a slower path that does is used instead.
PRECISION_TOLERANCE = 2e-2


@dataclass
class Backbone:
    """An audio encoder and its front end: segments in, [layers, dim] mean-pooled states out."""

    model: torch.nn.Module
    model_id: str
    revision: str
    device: torch.device
    dtype: torch.dtype
    frontend: Any = field(default_factory=WaveformFrontEnd)  # see frontends.py

    @property
    def n_layers(self) -> int:
        """Hidden states returned: the encoder input plus one per transformer layer."""
        return self.model.config.num_hidden_layers + 1

    @property
    def dim(self) -> int:
        """Width of each hidden state."""
        return self.model.config.hidden_size

    @property
    def kind(self) -> str:
        """The front end: "waveform" (raw audio) or "logmel" (the model's feature extractor)."""
        return self.frontend.kind

    @property
    def window(self) -> str:
        """How segments meet the model: "alone", or "packed" into shared Whisper windows."""
        return self.frontend.window

    @property
    def sample_rate(self) -> int:
        """The audio rate the model reads (always audio.SAMPLE_RATE: others are refused)."""
        return self.frontend.sample_rate

    def embed(self, segments: np.ndarray) -> np.ndarray:
        """Per-layer mean of each equal-length segment, each embedded alone: [batch, layers, dim]."""
        if not self.frontend.pads:
            spans = [[(0, 0, None)]] * len(segments)
            return np.stack([e[0] for e in self.embed_windows(segments, spans)])
        # A front end with fixed windows (Whisper): each segment in its own zero-padded window.
        length = segments.shape[1]
        batch = np.zeros((len(segments), self.frontend.input_samples(length)), np.float32)
        batch[:, :length] = segments
        spans = [next(iter(self.frontend.windows(row, [0], length)))[1] for row in segments]
        return np.stack([e[0] for e in self.embed_windows(batch, spans)])

    @torch.inference_mode()
    def embed_windows(self, batch: np.ndarray, spans: list[list[Span]]) -> list[np.ndarray]:
        """Pooled states [len(spans[i]), layers, dim] of the segments each input row holds.

        All rows have the same length (the front end's input_samples, or one short segment
        alone): Wav2Vec2-base was trained without attention masks, so padding would change the
        output. On the CPU each row is its own model call: oneDNN picks its bfloat16 kernels by
        shape, so a row's result would otherwise depend on how many rows share its call (1e-3
        apart here), and `predict` must give what `embed` gave whatever the batch size. One row
        per call cost 4% in bfloat16 on an Intel AMX CPU (60.2 against 62.5 audio-s/s,
        random-base), 1% in float32.
        """
        if self.device.type == "cpu" and len(batch) > 1:
            return [
                e
                for i in range(len(batch))
                for e in self.embed_windows(batch[i : i + 1], spans[i : i + 1])
            ]
        return pool_spans(self._forward(self.frontend.inputs(batch, self.device)), spans)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every hidden state of the model on input x (the embedding output, then each layer)."""
        # bfloat16 runs on bfloat16 weights (12% faster than autocast on the CPU, same accuracy);
        # float16 keeps float32 weights under autocast, whose fp32 islands avoid overflow.
        x = x.to(torch.bfloat16) if self.dtype == torch.bfloat16 else x
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype == torch.float16
            else nullcontext()
        )
        name = self.frontend.input_name
        with autocast:
            if name is None:
                out = self.model(x, output_hidden_states=True)
            else:
                out = self.model(**{name: x}, output_hidden_states=True)
        hidden = getattr(out, "hidden_states", None)
        if not hidden:
            raise BackboneError(f"{self.model_id}: the model returns no hidden states")
        return hidden


def resolve_device(device: str = "auto") -> torch.device:
    """auto picks CUDA when it is present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackboneError("--device cuda was asked for but no CUDA GPU is visible to torch")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device, frontend: Any = None) -> torch.dtype:
    """auto: bfloat16 on CUDA and on CPUs with native bfloat16, float32 on other CPUs.

    Log-mel encoders (Whisper; `frontend.kind == "logmel"`) get float32 under auto: bfloat16
    whisper-base embeddings of real music were up to 0.056 off float32 per layer (median
    0.006; benchmarks/bfloat16_on_music.py), beyond PRECISION_TOLERANCE, on every CPU alike:
    that is bfloat16's own rounding in the outlier dimensions of its layers, not a kernel
    that a check could route around. `--dtype bfloat16` still asks for it.
    """
    if dtype == "auto":
        if frontend is not None and frontend.kind == "logmel":
            return torch.float32
        native = device.type == "cuda" or cpu_has_native_bfloat16()
        return torch.bfloat16 if native else torch.float32
    if dtype not in _DTYPES:
        raise BackboneError(f"unknown dtype {dtype!r}; use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def cpu_has_native_bfloat16() -> bool:
    """True where the CPU computes bfloat16 natively (AVX512-BF16 or AMX): 2x faster here."""
    flags = _cpu_info()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _cpu_info() -> str:
    """/proc/cpuinfo, or "" where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def default_batch_size(device: torch.device) -> int:
    """Segments per model call: small on the CPU (larger batches were slower there), large on GPUs."""
    return 64 if device.type == "cuda" else 2


def load_backbone(
    model_id: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    log: Callable[[str], None] | None = None,
    window: str | None = None,
) -> Backbone:
    """Load a backbone by Hugging Face id, local directory, CTranslate2 Whisper, or built-in name.

    The model's feature extractor decides its front end (raw waveform or log-mel) and rate;
    `window` (alone | packed) applies to Whisper encoders, None meaning DEFAULT_WINDOW. A model
    that cannot embed audio is refused here, by a test signal run through the whole path, so
    that no command starts work it cannot finish. On the CPU a reduced precision is used only
    where it passes `check_precision` on this machine; otherwise the fastest path that does is
    taken and `log` says so in one line.
    """
    dev = resolve_device(device)
    resolve_dtype(dtype, dev)  # an unknown dtype is refused before any model loads
    model, revision, extractor = fetch_model(model_id)
    try:
        frontend = frontend_for(model, extractor, window)
    except ValueError as exc:
        raise BackboneError(f"{model_id}: {exc}") from None
    torch_dtype = resolve_dtype(dtype, dev, frontend)
    model.eval().to(dev)
    try:
        if dev.type == "cpu":
            backbone, note = _cpu_backbone(model, model_id, revision, torch_dtype, frontend)
        else:
            if torch_dtype == torch.bfloat16:
                model.to(torch.bfloat16)
            backbone, note = Backbone(model, model_id, revision, dev, torch_dtype, frontend), ""
        _check_runs(backbone)
    except BackboneError:
        raise
    except Exception as exc:  # whatever the model does with audio it cannot take
        raise BackboneError(
            f"{model_id}: cannot embed audio with this model ({type(exc).__name__}: "
            f"{first_line(exc)})"
        ) from None
    if note:
        (log or _print_stderr)(note)
    return backbone


def _check_runs(backbone: Backbone) -> None:
    """Embed one second of a test signal: the shapes a cache will hold, or BackboneError."""
    # Not probe_signal: the precision check counts its own probes.
    signal = (0.1 * np.random.default_rng(1).standard_normal(SAMPLE_RATE)).astype(np.float32)
    got = backbone.embed(signal[None]).shape
    want = (1, backbone.n_layers, backbone.dim)
    if got != want:
        raise BackboneError(
            f"{backbone.model_id}: not an encoder with one hidden state per layer (its output "
            f"pools to {got[1:]}, its config says {want[1:]})"
        )


# ---- reduced precision on the CPU, checked before use ----------------------------------------
#
# oneDNN's bfloat16 kernels are not right for every shape on every CPU: on Intel AMX a grouped
# convolution with 8 channels per group (random-tiny's position convolution) came out 0.95 off,
# plain F.conv1d included, while the same model was fine on AMD Zen 4. So each reduced-precision
# path is compared with float32 on a fixed probe signal at load, once per model and machine.

# The CPU paths for each requested dtype, fastest first; float32 always passes.
_CPU_PATHS = {
    torch.bfloat16: ("bfloat16 (tuned kernels)", "bfloat16 (transformers' kernels)", "float32"),
    torch.float16: ("float16 (autocast)", "float32"),
}


def _cpu_backbone(
    model: torch.nn.Module, model_id: str, revision: str, dtype: torch.dtype, frontend: Any
) -> tuple[Backbone, str]:
    """The fastest CPU path for `dtype` that stays within PRECISION_TOLERANCE of float32.

    The probe goes through the model's own front end (a Whisper window for Whisper), so the
    check holds for log-mel encoders as for raw-waveform ones.
    """
    cpu = torch.device("cpu")
    if dtype == torch.float32:
        tune_for_cpu(model)
        return Backbone(model, model_id, revision, cpu, dtype, frontend), ""
    paths = _CPU_PATHS[dtype]
    key = _precision_key(model_id, revision, dtype)
    known = _read_precision_checks().get(key)
    if known and known.get("path") in paths:
        chosen, errors = known["path"], known.get("errors", {})
        backbone = _cpu_path(model, chosen, model_id, revision, frontend)
    else:
        # A window-reading encoder (Whisper) computes a whole window whatever the segment: the
        # probe fills it, so the check sees what embedding a full window does, at no extra cost.
        seconds = frontend.window_samples / SAMPLE_RATE if frontend.pads else 2.0
        probe = probe_signal(seconds)[None]
        reference = _cpu_path(copy.deepcopy(model), "float32", model_id, revision, frontend)
        want = reference.embed(probe)[0]
        del reference
        errors = {}
        for chosen in paths:
            # The last path reuses the model itself: no copy is kept once one is chosen.
            candidate = model if chosen == paths[-1] else copy.deepcopy(model)
            backbone = _cpu_path(candidate, chosen, model_id, revision, frontend)
            if chosen == "float32":
                break
            errors[chosen] = relative_error(backbone.embed(probe)[0], want)
            if errors[chosen] <= PRECISION_TOLERANCE:
                break
        _write_precision_check(key, {"path": chosen, "errors": errors})
    if chosen == paths[0]:
        return backbone, ""
    first = paths[0]
    return backbone, (
        f"note: {first} is {errors.get(first, float('nan')):.2g} off float32 for {model_id} on "
        f"this CPU (limit {PRECISION_TOLERANCE:g}); using {chosen} instead"
    )


def _cpu_path(
    model: torch.nn.Module, path: str, model_id: str, revision: str, frontend: Any
) -> Backbone:
    """The model set up for one of the _CPU_PATHS."""
    cpu = torch.device("cpu")
    if path.startswith("bfloat16"):
        model.to(torch.bfloat16)
        if path == "bfloat16 (tuned kernels)":
            tune_for_cpu(model)
        return Backbone(model, model_id, revision, cpu, torch.bfloat16, frontend)
    model.to(torch.float32)
    if path == "float32":
        tune_for_cpu(model)
    return Backbone(model, model_id, revision, cpu, _DTYPES[path.split()[0]], frontend)


def probe_signal(seconds: float = 2.0) -> np.ndarray:
    """A fixed, music-like test signal: a chord with vibrato, a pulse and a little noise."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    x = sum(np.sin(2 * np.pi * f * t * (1 + 0.002 * np.sin(5 * t))) for f in (220, 277, 330, 440))
    x = x * (0.6 + 0.4 * (np.sin(2 * np.pi * 2 * t) > 0))
    x = x + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    return (0.2 * x).astype(np.float32)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """Largest per-layer max |got - want| / max |want| of [layers, dim] embeddings."""
    return float(
        max(np.abs(got[i] - want[i]).max() / np.abs(want[i]).max() for i in range(len(want)))
    )


def _precision_key(model_id: str, revision: str, dtype: torch.dtype) -> str:
    """Model, revision, dtype, torch, the CPU and its levers: what the check's outcome depends on."""
    info = _cpu_info()
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line]
    cpu = names[0] if names else platform.processor() or platform.machine()
    flags = [f for f in ("avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16") if f in info]
    probe = 2  # the probe's version: 2 fills a Whisper window (1 was 2 s for every model)
    levers = sorted(enabled_levers())
    return json.dumps(
        [model_id, revision, str(dtype), torch.__version__, cpu, flags, probe, levers]
    )


def _precision_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wav2genre" / "precision_checks.json"


def _read_precision_checks() -> dict:
    try:
        return json.loads(_precision_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_precision_check(key: str, value: dict) -> None:
    """Remember a check's outcome; a cache that cannot be written only costs a re-check."""
    path = _precision_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        checks = {**_read_precision_checks(), key: value}
        # unique: processes of one run may each check the same model at once
        atomic_write_text(path, json.dumps(checks, indent=1), sync=False, unique=True)
    except OSError:
        pass


def _print_stderr(message: str) -> None:
    print(message, file=sys.stderr)
