"""Stream decoding: an audio file to 16 kHz mono float32 blocks, never held whole, and the
hash of decoded audio taken block by block.

The whole-file decoders (decode.py) collect these blocks; a long track's `predict` and `embed`
use them as they come. libsndfile's complaints on C-level stderr are re-emitted naming the file.
This module must not import torch: it runs in the decode worker processes.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
import soundfile as sf
import soxr

from wav2genre_cache.errors import AudioError, AudioTooLong

SAMPLE_RATE = 16_000
# One read block holds at most this many samples (all channels): 8 MB of float32.
_BLOCK_SAMPLES = 1 << 21
# libsndfile's frame count for a stream that does not say how long it is (SF_COUNT_MAX).
_UNKNOWN_FRAMES = 2**63 - 1


class AudioHash:
    """decode.audio_hash of a track taken block by block: update with its blocks in order, in
    any sizes, and hexdigest equals the hash of the whole (each sample is rounded on its own)."""

    def __init__(self) -> None:
        self._digest = hashlib.blake2b(digest_size=16)

    def update(self, samples: np.ndarray) -> None:
        """Add the next samples of the track."""
        for i in range(0, len(samples), _BLOCK_SAMPLES):  # a block's int16 copy is small
            block = samples[i : i + _BLOCK_SAMPLES]
            pcm = np.clip(np.round(block * 32767.0), -32768, 32767).astype("<i2")
            self._digest.update(pcm.tobytes())

    def hexdigest(self) -> str:
        """The hash of the samples added so far."""
        return self._digest.hexdigest()


def decode_blocks(
    path: Path, max_seconds: float | None = None, block_seconds: float = 10.0
) -> Iterator[np.ndarray]:
    """A file's 16 kHz mono float32 audio, block by block, never held whole (a long file's
    predictions stream); AudioError as decode_file raises it, once the blocks reach it."""
    return read_blocks(path, str(path), max_seconds, block_seconds, [])


def read_blocks(
    source: str | os.PathLike | io.BytesIO,
    name: str,
    max_seconds: float | None,
    block_seconds: float,
    expected: list[int],
) -> Iterator[np.ndarray]:
    """16 kHz mono float32 blocks of source; before the first, `expected` gets the samples the
    header announces (the limit's worth where it says nothing), to preallocate."""
    limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    n = 0
    try:
        with _c_stderr_named(name):
            f = sf.SoundFile(source)
        with f:
            rate, channels = f.samplerate, f.channels
            # libsndfile reports SF_COUNT_MAX for a stream of unknown length (e.g. piped FLAC).
            known = 0 <= f.frames < _UNKNOWN_FRAMES
            if known and max_seconds is not None and f.frames / rate > max_seconds:
                raise AudioTooLong(_too_long(name, f.frames / rate, max_seconds))
            stream = (
                None
                if rate == SAMPLE_RATE
                else soxr.ResampleStream(rate, SAMPLE_RATE, 1, "float32")
            )
            # A block is bounded in samples, not seconds: 8 channels at 384 kHz must not make it
            # 30x larger than a stereo 44.1 kHz one.
            block = max(1, min(int(rate * block_seconds), _BLOCK_SAMPLES // channels))
            size = int(np.ceil(f.frames * SAMPLE_RATE / rate)) if known else SAMPLE_RATE * 60
            if limit is not None:
                # Never reserve more than the limit lets through; an unknown length reserves all
                # of it at once, as growing by copies would briefly hold it twice (np.empty costs
                # only the pages that get written).
                size = min(size, limit) if known else limit
            expected.append(size)
            buf = np.empty((block, channels), np.float32)
            while True:
                with _c_stderr_named(name):
                    # Reads until the decoder runs dry, not until the header's count: an MP3's
                    # count is an estimate; libsndfile itself stops at that count anyway.
                    got = f.read(dtype="float32", always_2d=True, out=buf)
                if len(got) == 0:
                    break
                mono = got.mean(axis=1) if channels > 1 else got[:, 0]
                if not np.all(np.isfinite(mono)):
                    raise AudioError(f"{name}: contains NaN or infinite samples")
                chunk = stream.resample_chunk(mono) if stream else mono
                if limit is not None and n + len(chunk) > limit:  # the header lied or did not say
                    raise AudioTooLong(_too_long(name, None, max_seconds))  # (before out grows)
                n += len(chunk)
                yield chunk
            if stream is not None:
                chunk = stream.resample_chunk(np.zeros(0, np.float32), last=True)
                n += len(chunk)
                yield chunk
            if limit is not None and n > limit:
                raise AudioTooLong(_too_long(name, n / SAMPLE_RATE, max_seconds))
    except AudioError:
        # The traceback keeps this frame: let go of the buffers before the error travels, or a
        # refused upload holds up to its whole allowance until a garbage collection runs.
        buf = got = mono = chunk = stream = source = None  # noqa: F841
        raise
    except Exception as exc:  # libsndfile raises several types; all mean "not decodable"
        exists = isinstance(source, io.BytesIO) or Path(source).is_file()
        raise AudioError(f"{name}: not a decodable audio file ({_short(exc, exists)})") from None


def _too_long(name: str, seconds: float | None, max_seconds: float) -> str:
    amount = f"{seconds / 60:.1f}" if seconds is not None else f"more than {max_seconds / 60:g}"
    return f"{name}: {amount} minutes of audio; the limit is {max_seconds / 60:g} minutes"


# libmpg123 (inside libsndfile) prints its complaints about a corrupt MP3 straight to C-level
# stderr, with no file name. While libsndfile runs, fd 2 points at a private file instead, and
# what lands there is re-emitted afterwards: decoder lines prefixed with the file's name, anything
# else (another thread's log line written meanwhile) unchanged. fd 2 is process-wide, so one lock
# serialises the guarded calls (single libsndfile opens/reads, not the mixing or resampling).
_DECODER_LINE = re.compile(r"^(\[[^\]]*\.c[:\]]|Note: |Warning: |Big trouble)")
_MAX_DECODER_LINES = 20  # per guarded call: a badly damaged file can print thousands
_stderr_lock = threading.Lock()
_stderr_capture: IO[bytes] | None = None


def _reset_after_fork() -> None:
    # A lock held by another thread at fork time would never be released in the child, and a
    # capture file shared with the parent would share its offset too.
    global _stderr_lock, _stderr_capture
    _stderr_lock = threading.Lock()
    _stderr_capture = None


os.register_at_fork(after_in_child=_reset_after_fork)


@contextmanager
def _c_stderr_named(name: str) -> Iterator[None]:
    """Capture C-level stderr (fd 2) around a libsndfile call; re-emit it naming the file."""
    global _stderr_capture
    with _stderr_lock:
        if _stderr_capture is None:
            _stderr_capture = tempfile.TemporaryFile()  # a file, not a pipe: it never fills up
        capture = _stderr_capture.fileno()
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all: nothing to protect
            saved = None
        if saved is None:
            yield
            return
        try:
            _flush_python_stderr()  # Python's own pending output goes out before the switch
            os.dup2(capture, 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
        finally:
            os.close(saved)
            # Also when the call raised (a file that does not open): else its lines would come
            # out with the next file's name.
            _emit_captured(capture, name)


def _emit_captured(capture: int, name: str) -> None:
    size = os.fstat(capture).st_size
    if size:
        text = os.pread(capture, size, 0).decode("utf-8", "replace")
        os.ftruncate(capture, 0)
        os.lseek(capture, 0, os.SEEK_SET)
        _write_all(2, _name_decoder_lines(text, name).encode())


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:  # a closed or broken stderr must not fail the decode
        pass


def _flush_python_stderr() -> None:
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except (OSError, ValueError):  # closed or broken: nothing to flush
        pass


def _name_decoder_lines(text: str, name: str) -> str:
    """Prefix the decoder's lines in captured stderr with name; keep other lines as they were."""
    lines, named, dropped = [], 0, 0
    for line in text.splitlines():
        if not _DECODER_LINE.match(line):
            lines.append(line)
        elif named < _MAX_DECODER_LINES:
            lines.append(f"{name}: decoder: {line}")
            named += 1
        else:
            dropped += 1
    if dropped:
        lines.append(f"{name}: decoder: ... {dropped} more such lines")
    return "".join(f"{line}\n" for line in lines)


def _short(exc: Exception, exists: bool = True) -> str:
    """libsndfile's message without the noise ('Error opening <_io.BytesIO ...>: '), and in
    words that fit a file that exists (the decoders are only tried once it opened)."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^Error opening (<[^>]*>|'[^']*'): ", "", text).replace("Error : ", "")
    if exists and "does not exist or is not a regular file" in text:
        # libsndfile's words when no decoder recognises the contents of a file that exists.
        text = "its contents are in no audio format the decoders know"
    return text.strip()[:200]
