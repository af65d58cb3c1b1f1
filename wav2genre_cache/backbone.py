"""Load an audio encoder and turn a track's segments into per-layer mean embeddings."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import socket
import sys
import urllib.parse
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audio import SAMPLE_RATE
from .cpu_tuning import tune_for_cpu
from .errors import Wav2GenreError
from .frontends import (
    Span,
    WaveformFrontEnd,
    default_extractor,
    frontend_for,
    normalize_on_device,  # noqa: F401  (its home was here; importers keep working)
    pool_spans,
)

DEFAULT_MODEL = "facebook/wav2vec2-base-960h"
BUILTIN_MODELS = ("random-base", "random-tiny")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Download sizes of the models we know; any other model's size goes unsaid.
_DOWNLOAD_SIZES = {DEFAULT_MODEL: "about 360 MB"}
# Reduced precision must stay this close to float32 (largest per-layer max |a - b| / max |b|)
# on the probe signal, or a slower path that does is used instead.
PRECISION_TOLERANCE = 2e-2


class BackboneError(Wav2GenreError):
    """The backbone cannot be loaded; the message says what to do."""


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
    if model_id in BUILTIN_MODELS:
        model, revision = builtin_model(model_id), "seed0"
        extractor = default_extractor(model.config)  # Wav2Vec2's: the raw waveform
    elif _is_ct2_whisper(model_id):
        model, revision, extractor = _load_ct2_whisper(model_id)
    else:
        model, revision, extractor = _load_pretrained(model_id)
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
            f"{_first_line(exc)})"
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


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


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
    """Model, revision, dtype, torch and the CPU: what the check's outcome depends on."""
    info = _cpu_info()
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line]
    cpu = names[0] if names else platform.processor() or platform.machine()
    flags = [f for f in ("avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16") if f in info]
    probe = 2  # the probe's version: 2 fills a Whisper window (1 was 2 s for every model)
    return json.dumps([model_id, revision, str(dtype), torch.__version__, cpu, flags, probe])


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
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(checks, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


def _print_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _load_pretrained(model_id: str) -> tuple[torch.nn.Module, str, Any | None]:
    """(encoder, revision, feature extractor or None) of a hub id or save_pretrained folder."""
    from transformers import AutoFeatureExtractor, AutoModel

    local = Path(model_id).expanduser()
    if _looks_like_path(model_id) or local.exists():
        if not local.exists():
            raise BackboneError(f"--model {model_id}: no such directory")
        if not local.is_dir():
            raise BackboneError(
                f"--model {model_id}: a file, not a model directory (pass the folder that "
                "save_pretrained wrote, with config.json and the weights)"
            )
        try:
            model = AutoModel.from_pretrained(str(local), local_files_only=True)
        except Exception as exc:
            raise BackboneError(f"{local}: not a loadable model directory ({exc})") from None
        revision = _dir_hash(local)
        extractor = None
        if (local / "preprocessor_config.json").is_file():
            try:
                extractor = AutoFeatureExtractor.from_pretrained(str(local), local_files_only=True)
            except Exception as exc:
                raise BackboneError(
                    f"{local}: its preprocessor_config.json cannot be read ({_first_line(exc)})"
                ) from None
    else:
        # Offline, the hub client retries for half a minute before giving up: find out first,
        # and then use only what the local cache holds.
        offline = _hub_offline()
        try:
            # A CTC checkpoint (wav2vec2-base-960h) loads as the bare encoder through AutoModel.
            model = AutoModel.from_pretrained(model_id, local_files_only=offline)
        except Exception as exc:
            raise BackboneError(_offline_message(model_id, exc, offline)) from None
        revision = getattr(model.config, "_commit_hash", None) or ""
        try:
            extractor = AutoFeatureExtractor.from_pretrained(model_id, local_files_only=offline)
        except Exception:
            extractor = None  # a repository without one: the type's default, below
    if not hasattr(model.config, "num_hidden_layers"):
        raise BackboneError(f"{model_id}: not an audio encoder with hidden states")
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        # Whisper (WhisperModel or ...ForConditionalGeneration): only the encoder embeds audio.
        model = model.get_encoder()
    # Checkpoints stored in float16 (distil-whisper's, many on the hub) load in it under recent
    # transformers; every path here starts from float32 and reduces precision only where checked.
    model.to(torch.float32)
    return model, revision, extractor or default_extractor(model.config)


def _is_ct2_whisper(model_id: str) -> bool:
    """A pip:NAME model or a CTranslate2 (faster-whisper) folder: ct2_whisper converts those."""
    if model_id.startswith("pip:"):
        return True
    local = Path(model_id).expanduser()
    if not local.is_dir():
        return False
    try:
        from .ct2_whisper import is_ct2_whisper_dir
    except ImportError:
        return (local / "model.bin").is_file()  # CTranslate2's weights file: say what is missing
    return bool(is_ct2_whisper_dir(local))


def _load_ct2_whisper(model_id: str) -> tuple[torch.nn.Module, str, Any | None]:
    """(WhisperEncoder, revision, feature extractor or None) through ct2_whisper's converter."""
    try:
        from . import ct2_whisper
    except ImportError as exc:
        raise BackboneError(
            f"--model {model_id}: CTranslate2 Whisper models need wav2genre_cache.ct2_whisper, "
            f"which this installation lacks ({exc})"
        ) from None
    if model_id.startswith("pip:") and model_id not in ct2_whisper.PIP_MODELS:
        raise BackboneError(
            f"--model {model_id}: unknown; the pip-shipped models are "
            + ", ".join(sorted(ct2_whisper.PIP_MODELS))
        )
    try:
        source = model_id if model_id.startswith("pip:") else str(Path(model_id).expanduser())
        encoder, revision = ct2_whisper.load_ct2_whisper_encoder(source)
    except BackboneError:
        raise
    except Exception as exc:
        raise BackboneError(
            f"{model_id}: cannot load this CTranslate2 Whisper model ({type(exc).__name__}: "
            f"{_first_line(exc)})"
        ) from None
    extractor = None
    config_file = Path(model_id).expanduser() / "preprocessor_config.json"
    if not model_id.startswith("pip:") and config_file.is_file():
        from transformers import WhisperFeatureExtractor

        extractor = WhisperFeatureExtractor.from_pretrained(str(config_file.parent))
    return encoder, revision, extractor


def _looks_like_path(model_id: str) -> bool:
    """A hub id is `name` or `org/name`; anything else is meant as a folder."""
    return (
        model_id.startswith(("/", ".", "~"))
        or model_id.count("/") > 1
        or os.sep != "/"
        and os.sep in model_id
    )


def _hub_offline(timeout: float = 3.0) -> bool:
    """True when HF_HUB_OFFLINE is set or the hub's host cannot be reached within `timeout`."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ) not in ("", "0"):
        return True
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False  # through a proxy a direct connection proves nothing: let the client try
    url = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return False
    except OSError:
        return True


def _offline_message(model_id: str, exc: Exception, offline: bool) -> str:
    size = _DOWNLOAD_SIZES.get(model_id)
    detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return (
        f"Could not load the model {model_id!r}: it is not in the local Hugging Face cache and "
        + ("the hub cannot be reached" if offline else "could not be downloaded")
        + ". Fix it in one of two ways: run the same command once on a machine with internet "
        f"access (the weights{', ' + size + ',' if size else ''} are then kept in "
        "~/.cache/huggingface and later runs work offline; HF_HUB_OFFLINE=1 then skips even the "
        "quick hub check), or download the model elsewhere, save it with `save_pretrained(DIR)` "
        "and pass `--model DIR`. For a quick test without any download use `--model random-tiny`. "
        f"(Underlying error: {detail})"
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
