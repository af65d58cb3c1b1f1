"""Decode any audio file to 16 kHz mono float32 and cut it into equal-length segments.

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
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import soundfile as sf
import soxr

from wav2genre_cache.errors import AudioError, AudioTooLong

SAMPLE_RATE = 16_000
MIN_TRACK_SECONDS = 1.0
# A tail at least this fraction of a segment gets its own segment, anchored to the track's end.
MIN_TAIL_FRACTION = 0.5
AUDIO_EXTENSIONS = (
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".au",
    ".snd",
    ".aiff",
    ".aif",
)
# One read block holds at most this many samples (all channels): 8 MB of float32.
_BLOCK_SAMPLES = 1 << 21
# libsndfile's frame count for a stream that does not say how long it is (SF_COUNT_MAX).
_UNKNOWN_FRAMES = 2**63 - 1


@dataclass(frozen=True)
class DecodedTrack:
    """A decoded track: 16 kHz mono samples plus what the cache records about the file."""

    samples: np.ndarray
    duration: float
    content_hash: str


def decode_bytes(
    data: bytes, name: str = "<bytes>", max_seconds: float | None = None
) -> np.ndarray:
    """Decode encoded audio bytes to 16 kHz mono float32; raise AudioError naming the problem.

    With max_seconds, audio longer than that raises AudioTooLong, from the header before any
    decoding where it says so, else as soon as the decoded audio passes the limit: a few KB of
    compressed silence can expand to GBs, so the limit must bound the work, not just the answer.
    """
    if len(data) == 0:
        raise AudioError(f"{name}: empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, max_seconds)


def load_track(path: str | os.PathLike, max_seconds: float | None = None) -> DecodedTrack:
    """Decode one file and hash its audio; raise AudioError naming the file and the problem
    (AudioTooLong, before the decode grows past it, for audio over max_seconds)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:  # unreadable and missing files are named as such
            size = len(fh.read(1))
    except OSError as exc:
        raise AudioError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    samples = decode_file(path, max_seconds=max_seconds)
    duration = len(samples) / SAMPLE_RATE
    if duration < MIN_TRACK_SECONDS:
        raise AudioError(
            f"{path}: too short ({duration:.2f} s; at least {MIN_TRACK_SECONDS:g} s is needed)"
        )
    return DecodedTrack(samples, duration, audio_hash(samples))


def waveform_from_array(samples: np.ndarray, sample_rate: int, name: str = "<array>") -> np.ndarray:
    """An in-memory signal as decoding makes a file: 16 kHz mono float32, checked.

    samples: [frames] or [frames, channels] (soundfile's order); [channels, frames] with up to
    8 channels (torch's and librosa's order) is read as such.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2 and x.shape[0] <= 8 < x.shape[1]:
        x = x.T
    if x.ndim not in (1, 2) or x.size == 0:
        raise AudioError(
            f"{name}: expected [frames] or [frames, channels] samples, got shape {x.shape}"
        )
    if not sample_rate or sample_rate <= 0:
        raise AudioError(f"{name}: give the samples' sample_rate (Hz)")
    mono = x.mean(axis=1) if x.ndim == 2 else x
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{name}: contains NaN or infinite samples")
    if sample_rate != SAMPLE_RATE:
        mono = soxr.resample(mono, sample_rate, SAMPLE_RATE).astype(np.float32)
    return np.ascontiguousarray(mono)


def audio_hash(samples: np.ndarray) -> str:
    """A hash of decoded audio: the same recording in two files (WAV and FLAC, or a replica)
    hashes alike. Samples are rounded to 16 bits first, so that the last bits of the float
    resampling do not make two copies of one recording differ."""
    digest = hashlib.blake2b(digest_size=16)
    for i in range(0, len(samples), _BLOCK_SAMPLES):  # in blocks: a long track's copies are 4x it
        block = samples[i : i + _BLOCK_SAMPLES]
        digest.update(np.clip(np.round(block * 32767.0), -32768, 32767).astype("<i2").tobytes())
    return digest.hexdigest()


def decode_file(
    path: Path, block_seconds: float = 10.0, max_seconds: float | None = None
) -> np.ndarray:
    """Stream-decode a file to 16 kHz mono float32 (see _decode; max_seconds as in decode_bytes)."""
    return _decode(path, str(path), max_seconds, block_seconds)


def _decode(
    source: str | os.PathLike | io.BytesIO,
    name: str,
    max_seconds: float | None,
    block_seconds: float = 10.0,
) -> np.ndarray:
    """Stream-decode to 16 kHz mono float32, refusing audio over max_seconds as early as possible.

    Blocks (_blocks) are mixed down and resampled as they are read, into one preallocated array,
    so a long file costs its 16 kHz waveform plus one block, not its whole native-rate decode.
    """
    expected: list[int] = []
    out, n = None, 0
    try:
        for chunk in _blocks(source, name, max_seconds, block_seconds, expected):
            if out is None:
                out = np.empty(expected[0] + 64, np.float32)
            n, out = _append(out, n, chunk)
    except AudioError:
        out = chunk = source = None  # noqa: F841 (the traceback keeps this frame: let go)
        raise
    if n == 0:
        raise AudioError(f"{name}: contains no audio samples")
    return out[:n]


def decode_blocks(
    path: Path, max_seconds: float | None = None, block_seconds: float = 10.0
) -> Iterator[np.ndarray]:
    """A file's 16 kHz mono float32 audio, block by block, never held whole (a long file's
    predictions stream); AudioError as decode_file raises it, once the blocks reach it."""
    return _blocks(path, str(path), max_seconds, block_seconds, [])


def _blocks(
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


def _append(out: np.ndarray, n: int, chunk: np.ndarray) -> tuple[int, np.ndarray]:
    if n + len(chunk) > len(out):  # a frame count that was an estimate (some MP3s)
        out = np.concatenate([out[:n], np.empty(max(len(chunk), len(out) // 4), np.float32)])
    out[n : n + len(chunk)] = chunk
    return n + len(chunk), out


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


def segment_starts(n_samples: int, segment: int, hop: int) -> list[int]:
    """Start samples of the equal-length segments of a track of n_samples.

    Segments start every `hop` samples while a whole segment fits. A remaining tail of at least
    half a segment gets one more segment anchored to the track's end (overlapping its
    predecessor), so no audio is padded. A track shorter than one segment yields one segment
    covering the whole track (start 0, length n_samples), which is embedded on its own.
    """
    if segment <= 0 or hop <= 0:
        raise ValueError("segment and hop must be positive")
    if n_samples < segment:
        return [0] if n_samples > 0 else []
    starts = list(range(0, n_samples - segment + 1, hop))
    covered = starts[-1] + segment
    tail = n_samples - covered
    last = n_samples - segment
    if tail >= MIN_TAIL_FRACTION * segment and last > starts[-1]:
        starts.append(last)
    return starts


def segment_track(
    samples: np.ndarray, segment_seconds: float, hop_seconds: float | None = None
) -> tuple[list[int], int]:
    """Return (start samples, segment length in samples) for a decoded 16 kHz track."""
    segment = int(round(segment_seconds * SAMPLE_RATE))
    hop = int(round((hop_seconds or segment_seconds) * SAMPLE_RATE))
    starts = segment_starts(len(samples), segment, hop)
    return starts, min(segment, len(samples))


def normalize_segments(batch: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per row, as Wav2Vec2FeatureExtractor(do_normalize=True) does."""
    batch = np.asarray(batch, dtype=np.float32)
    mean = batch.mean(axis=-1, keepdims=True)
    var = batch.var(axis=-1, keepdims=True)
    # The 1e-7 matches transformers and keeps silence finite (0 / sqrt(1e-7) = 0).
    return (batch - mean) / np.sqrt(var + 1e-7)


def _short(exc: Exception, exists: bool = True) -> str:
    """libsndfile's message without the noise ('Error opening <_io.BytesIO ...>: '), and in
    words that fit a file that exists (the decoders are only tried once it opened)."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^Error opening (<[^>]*>|'[^']*'): ", "", text).replace("Error : ", "")
    if exists and "does not exist or is not a regular file" in text:
        # libsndfile's words when no decoder recognises the contents of a file that exists.
        text = "its contents are in no audio format the decoders know"
    return text.strip()[:200]


def is_uri(path: str) -> bool:
    """Whether `path` names an object in a store (s3://, gs://, hdfs://, file://), not a file."""
    return "://" in str(path)


def fetch_to_temp(uri: str) -> Path:
    """Copy the object at `uri` to a local temporary file, through pyarrow's filesystems.

    Credentials come from where the store's own tools find them (environment, config files).
    """
    try:
        from pyarrow import fs
    except ImportError:
        raise AudioError(f"{uri}: reading URIs needs pyarrow (pip install pyarrow)") from None
    filesystem, inner = fs.FileSystem.from_uri(uri)
    with tempfile.NamedTemporaryFile(suffix=Path(inner).suffix, delete=False) as out:
        try:
            with filesystem.open_input_stream(inner) as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        except BaseException:
            Path(out.name).unlink(missing_ok=True)
            raise
    return Path(out.name)


def try_load_track(path: str) -> tuple[DecodedTrack | None, str]:
    """load_track for worker processes: (track, "") or (None, reason); never raises."""
    try:
        return load_track(path), ""
    except AudioError as exc:
        return None, str(exc)
    except Exception as exc:  # e.g. MemoryError on a huge file: report it, keep the run going
        return None, f"{path}: {type(exc).__name__}: {exc}"
