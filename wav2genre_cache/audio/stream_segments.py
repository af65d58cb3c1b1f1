"""A long track's segments from its decoded blocks, a bounded stretch of audio at a time.

The same segments as decode.segment_starts gives the whole track (a regular hop, then the tail
segment anchored to the end where its tail is long enough), found while the blocks arrive: the
audio kept is the current chunk's and the last segment's worth, so memory does not grow with
the track's duration. predict embeds each chunk and lets it go; embed's decode worker computes
a long track's hand-crafted and log-mel features and its hash chunk by chunk, and the model's
side decodes it again, chunk by chunk, for the encoder (stage_one/per_track.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf

from wav2genre_cache.audio.decode import MIN_TAIL_FRACTION
from wav2genre_cache.audio.decode_stream import SAMPLE_RATE, AudioHash

# A file longer than this is decoded and embedded as it decodes (predict, and embed's local
# engine), CHUNK_SECONDS of segments at a time: its memory is that chunk's, whatever its
# duration (a 16 kHz waveform is 220 MB an hour).
LONG_SECONDS = 600.0
CHUNK_SECONDS = 300.0


def is_long(path: str | Path, long_seconds: float | None = LONG_SECONDS) -> bool:
    """Whether a file's header says it is longer than long_seconds (None: never long)."""
    if long_seconds is None:
        return False
    try:
        return sf.info(str(path)).duration > long_seconds
    except Exception:  # not audio, or unreadable: the decoder names the problem
        return False


def chunk_seconds(long_seconds: float) -> float:
    """A streamed track's chunk: CHUNK_SECONDS, or less where the threshold is lower (tests)."""
    return min(CHUNK_SECONDS, long_seconds)


def per_chunk(seconds: float, hop: int, per_window: int = 1) -> int:
    """Segments in a chunk of about `seconds`: whole groups of `per_window` (Whisper's packed
    windows group segments from the track's first), at least one group."""
    return per_window * max(1, int(seconds * SAMPLE_RATE / hop) // per_window)


def hashed(blocks: Iterable[np.ndarray], digest: AudioHash) -> Iterator[np.ndarray]:
    """The blocks, each added to `digest` as it passes (the hash of the whole, when done)."""
    for block in blocks:
        digest.update(block)
        yield block


class Chunk(NamedTuple):
    """Consecutive segments of a track: their audio, their starts in it, and its place."""

    audio: np.ndarray  # from the first segment's start to the end of the last
    starts: list[int]  # in audio
    length: int  # every segment's, in samples
    offset: int  # audio[0]'s sample in the track


class StreamedSegments:
    """Iterate to get the Chunks of blocks' segments (at most `per_chunk` each); `n_samples`
    is the track's length once the iteration has ended."""

    def __init__(self, blocks: Iterable[np.ndarray], segment: int, hop: int, per_chunk: int):
        if segment <= 0 or hop <= 0 or per_chunk <= 0:
            raise ValueError("segment, hop and per_chunk must be positive")
        self.blocks, self.segment, self.hop, self.per_chunk = blocks, segment, hop, per_chunk
        self.n_samples = 0

    def __iter__(self) -> Iterator[Chunk]:
        seg, hop = self.segment, self.hop
        buf, buf_start = np.zeros(0, np.float32), 0  # buf holds samples buf_start...
        pending: list[int] = []  # starts (in the track) not yielded yet
        next_start, last_regular = 0, None
        for block in self.blocks:
            buf = np.concatenate([buf, block])
            self.n_samples += len(block)
            while next_start + seg <= self.n_samples:
                pending.append(next_start)
                last_regular, next_start = next_start, next_start + hop
                if len(pending) == self.per_chunk:
                    yield self._chunk(buf, buf_start, pending, seg)
                    pending = []
            # Keep what a later segment may need: the next regular one's, and the last
            # segment's worth for a tail anchored to the end.
            keep = min(pending[0] if pending else next_start, self.n_samples - seg)
            if keep > buf_start:
                buf, buf_start = buf[keep - buf_start :].copy(), keep
        n = self.n_samples
        if n < seg:  # a short track: one segment, the whole of it
            if n > 0:
                yield Chunk(buf, [0], n, 0)
            return
        tail = n - (last_regular + seg)
        if tail >= MIN_TAIL_FRACTION * seg and n - seg > last_regular:
            pending.append(n - seg)
        if pending:
            yield self._chunk(buf, buf_start, pending, seg)

    @staticmethod
    def _chunk(buf: np.ndarray, buf_start: int, starts: list[int], seg: int) -> Chunk:
        first = starts[0]
        audio = buf[first - buf_start : starts[-1] + seg - buf_start]
        return Chunk(audio, [s - first for s in starts], seg, first)
