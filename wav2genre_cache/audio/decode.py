"""Decode any audio file to 16 kHz mono float32 and cut it into equal-length segments.

The blocks it decodes, and the hash of decoded audio, come from decode_stream.py.

This module must not import torch: it runs in the decode worker processes.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from wav2genre_cache.audio.decode_stream import SAMPLE_RATE, AudioHash, read_blocks
from wav2genre_cache.errors import AudioError

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
    return DecodedTrack(samples, track_duration(path, len(samples)), audio_hash(samples))


def track_duration(path: str | os.PathLike, n_samples: int) -> float:
    """A decoded track's duration in seconds; AudioError where it is too short to embed."""
    duration = n_samples / SAMPLE_RATE
    if duration < MIN_TRACK_SECONDS:
        raise AudioError(
            f"{path}: too short ({duration:.2f} s; at least {MIN_TRACK_SECONDS:g} s is needed)"
        )
    return duration


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
    digest = AudioHash()
    digest.update(samples)
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

    Blocks (read_blocks) are mixed down and resampled as they are read, into one preallocated array,
    so a long file costs its 16 kHz waveform plus one block, not its whole native-rate decode.
    """
    expected: list[int] = []
    out, n = None, 0
    try:
        for chunk in read_blocks(source, name, max_seconds, block_seconds, expected):
            if out is None:
                out = np.empty(expected[0] + 64, np.float32)
            n, out = _append(out, n, chunk)
    except AudioError:
        out = chunk = source = None  # noqa: F841 (the traceback keeps this frame: let go)
        raise
    if n == 0:
        raise AudioError(f"{name}: contains no audio samples")
    return out[:n]


def _append(out: np.ndarray, n: int, chunk: np.ndarray) -> tuple[int, np.ndarray]:
    if n + len(chunk) > len(out):  # a frame count that was an estimate (some MP3s)
        out = np.concatenate([out[:n], np.empty(max(len(chunk), len(out) // 4), np.float32)])
    out[n : n + len(chunk)] = chunk
    return n + len(chunk), out


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


def segment_samples(segment_seconds: float, hop_seconds: float | None = None) -> tuple[int, int]:
    """A segment's length and the hop between segment starts, in 16 kHz samples."""
    segment = int(round(segment_seconds * SAMPLE_RATE))
    return segment, int(round((hop_seconds or segment_seconds) * SAMPLE_RATE))


def segment_track(
    samples: np.ndarray, segment_seconds: float, hop_seconds: float | None = None
) -> tuple[list[int], int]:
    """Return (start samples, segment length in samples) for a decoded 16 kHz track."""
    segment, hop = segment_samples(segment_seconds, hop_seconds)
    starts = segment_starts(len(samples), segment, hop)
    return starts, min(segment, len(samples))


def normalize_segments(batch: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per row, as Wav2Vec2FeatureExtractor(do_normalize=True) does."""
    batch = np.asarray(batch, dtype=np.float32)
    mean = batch.mean(axis=-1, keepdims=True)
    var = batch.var(axis=-1, keepdims=True)
    # The 1e-7 matches transformers and keeps silence finite (0 / sqrt(1e-7) = 0).
    return (batch - mean) / np.sqrt(var + 1e-7)


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
