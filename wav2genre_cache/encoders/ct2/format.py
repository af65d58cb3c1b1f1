"""Reading CTranslate2's `model.bin` (binary format version 6), the weights of faster-whisper.

The layout: a header (version, spec name, spec revision), then each variable (name, shape, dtype
code, byte count, raw little-endian bytes), then an alias table (a name -> the variable stored
under another name). `read_index` walks it and records where each variable's bytes lie without
reading them; `read_array` then reads only the variables a converter asks for. `open_model_bin`
reads a model.bin split into several files (as PyPI packages ship it) as one file. Knows nothing
of Whisper: `ct2_whisper` maps the variables onto a transformers encoder.

Every problem with a file is a `BackboneError` (errors.py) that names the file.
"""

from __future__ import annotations

import bisect
import io
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from wav2genre_cache.errors import BackboneError

# The CTranslate2 binary layout this reader knows (CTranslate2 3.x and 4.x write version 6).
BINARY_VERSION = 6
_DTYPES: dict[int, tuple[str, int]] = {
    0: ("float32", 4),
    1: ("int8", 1),
    2: ("int16", 2),
    3: ("int32", 4),
    4: ("float16", 2),
    5: ("bfloat16", 2),
}


def backbone_error(message: str) -> Exception:
    """The project's user-fixable error for models, with this message."""
    return BackboneError(message)


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
        raise backbone_error(
            f"cannot read {exc.filename or paths[0]}: {exc.strerror or exc}"
        ) from None


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
        return backbone_error(f"{self.label}: not a valid CTranslate2 model.bin ({why})")

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
        raise backbone_error(
            f"{index.label}: the variable {name!r} is missing (not a Whisper model?)"
        )
    if var.dtype in ("int8", "int16") and len(var.shape) > 0:
        # Quantised weights come with per-row scales; this converter keeps to exact copies.
        raise backbone_error(
            f"{index.label}: {name} is quantised to {var.dtype}; use a float16 or float32 "
            "CTranslate2 model (convert with `--quantization float16`), e.g. the pip:whisper-* "
            "models"
        )
    stream.seek(var.offset)
    raw = stream.read(var.nbytes)
    if len(raw) != var.nbytes:
        raise backbone_error(
            f"{index.label}: not a valid CTranslate2 model.bin (truncated in {name})"
        )
    if var.dtype == "bfloat16":
        # numpy has no bfloat16: it is the upper half of a float32.
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(var.shape)
    out = np.frombuffer(raw, dtype=np.dtype(var.dtype).newbyteorder("<")).reshape(var.shape)
    return out.astype(np.float32 if out.dtype.kind == "f" else out.dtype.newbyteorder("="))


def spec_name(path: Path) -> str | None:
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
