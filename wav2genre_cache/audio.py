"""Decode any audio file to 16 kHz mono float32 and cut it into equal-length segments.

This module must not import torch: it runs in the decode worker processes.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

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


class AudioError(Exception):
    """A file that cannot be turned into usable audio; the message names the problem."""


@dataclass(frozen=True)
class DecodedTrack:
    """A decoded track: 16 kHz mono samples plus what the cache records about the file."""

    samples: np.ndarray
    duration: float
    content_hash: str


def decode_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded audio bytes to 16 kHz mono float32; raise AudioError naming the problem."""
    if len(data) == 0:
        raise AudioError(f"{name}: empty file (0 bytes)")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types; all mean "not decodable"
        raise AudioError(f"{name}: not a decodable audio file ({_short(exc)})") from None
    if samples.shape[0] == 0:
        raise AudioError(f"{name}: contains no audio samples")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{name}: contains NaN or infinite samples")
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def load_track(path: str | os.PathLike) -> DecodedTrack:
    """Read, hash and decode one file; raise AudioError naming the file and the problem."""
    path = Path(path)
    try:
        digest = hashlib.blake2b(digest_size=16)
        size = 0
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise AudioError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    samples = decode_file(path)
    duration = len(samples) / SAMPLE_RATE
    if duration < MIN_TRACK_SECONDS:
        raise AudioError(
            f"{path}: too short ({duration:.2f} s; at least {MIN_TRACK_SECONDS:g} s is needed)"
        )
    return DecodedTrack(samples, duration, digest.hexdigest())


def decode_file(path: Path, block_seconds: float = 10.0) -> np.ndarray:
    """Stream-decode a file to 16 kHz mono float32.

    Blocks are mixed down and resampled as they are read, into one preallocated array, so a long
    file costs its 16 kHz waveform plus one block, not its whole native-rate decode as well.
    """
    try:
        with sf.SoundFile(path) as f:
            rate = f.samplerate
            stream = (
                None
                if rate == SAMPLE_RATE
                else soxr.ResampleStream(rate, SAMPLE_RATE, 1, "float32")
            )
            out = np.empty(int(np.ceil(max(f.frames, 0) * SAMPLE_RATE / rate)) + 64, np.float32)
            n = 0
            for block in f.blocks(
                blocksize=int(rate * block_seconds), dtype="float32", always_2d=True
            ):
                mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
                if not np.all(np.isfinite(mono)):
                    raise AudioError(f"{path}: contains NaN or infinite samples")
                n, out = _append(out, n, stream.resample_chunk(mono) if stream else mono)
            if stream is not None:
                n, out = _append(out, n, stream.resample_chunk(np.zeros(0, np.float32), last=True))
    except AudioError:
        raise
    except Exception as exc:  # libsndfile raises several types; all mean "not decodable"
        raise AudioError(f"{path}: not a decodable audio file ({_short(exc)})") from None
    if n == 0:
        raise AudioError(f"{path}: contains no audio samples")
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


def _short(exc: Exception) -> str:
    """libsndfile's message without the noise ('Error opening <_io.BytesIO ...>: ')."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^Error opening <[^>]*>: ", "", text).replace("Error : ", "")
    return text.strip()[:200]


def try_load_track(path: str) -> tuple[DecodedTrack | None, str]:
    """load_track for worker processes: (track, "") or (None, reason); never raises."""
    try:
        return load_track(path), ""
    except AudioError as exc:
        return None, str(exc)
    except Exception as exc:  # e.g. MemoryError on a huge file: report it, keep the run going
        return None, f"{path}: {type(exc).__name__}: {exc}"
