"""A long track's segments found block by block are the whole track's, sample for sample, and
so is the hash of its audio."""

from __future__ import annotations

import numpy as np
import pytest

from wav2genre_cache.audio.decode import audio_hash, segment_starts
from wav2genre_cache.audio.decode_stream import AudioHash
from wav2genre_cache.audio.stream_segments import StreamedSegments, hashed


@pytest.mark.parametrize("seed", range(40))
def test_streamed_segments_are_the_whole_tracks(seed):
    rng = np.random.default_rng(seed)
    segment = int(rng.integers(5, 60))
    hop = int(rng.integers(1, 2 * segment))
    n = int(rng.integers(0, 40 * segment))
    track = rng.standard_normal(n).astype(np.float32)
    cuts = np.sort(rng.integers(0, n + 1, size=int(rng.integers(0, 12))))
    blocks = np.split(track, cuts)  # blocks of any size, empty ones too
    stream = StreamedSegments(blocks, segment, hop, per_chunk=int(rng.integers(1, 6)))
    starts, seen = [], []
    for chunk in stream:
        assert len(chunk.starts) <= stream.per_chunk
        for s in chunk.starts:
            starts.append(chunk.offset + s)
            seen.append(chunk.audio[s : s + chunk.length])
    assert stream.n_samples == n
    assert starts == segment_starts(n, segment, hop)
    length = min(segment, n)
    for s, audio in zip(starts, seen, strict=True):
        assert np.array_equal(audio, track[s : s + length])


def test_the_audio_kept_is_bounded_by_the_chunk_not_the_track():
    segment, hop, per_chunk = 100, 50, 4
    blocks = (np.ones(30, np.float32) for _ in range(10_000))  # 300,000 samples
    longest = max(len(c.audio) for c in StreamedSegments(blocks, segment, hop, per_chunk))
    assert longest <= (per_chunk - 1) * hop + segment


@pytest.mark.parametrize("seed", range(5))
def test_the_hash_taken_block_by_block_is_the_whole_tracks(seed):
    rng = np.random.default_rng(seed)
    track = rng.uniform(-1.2, 1.2, int(rng.integers(0, 5_000_000))).astype(np.float32)
    cuts = np.sort(rng.integers(0, len(track) + 1, size=int(rng.integers(0, 8))))
    digest = AudioHash()
    for block in hashed(np.split(track, cuts), digest):  # any sizes, past _BLOCK_SAMPLES too
        assert block.dtype == np.float32
    assert digest.hexdigest() == audio_hash(track)
