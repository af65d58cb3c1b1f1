"""Segments of decoded tracks to per-layer embeddings: the path `embed` and `predict` share."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from wav2genre_cache.audio.decode import SAMPLE_RATE, segment_samples, segment_track
from wav2genre_cache.audio.decode_stream import AudioHash, decode_blocks
from wav2genre_cache.audio.stream_segments import StreamedSegments, hashed, per_chunk
from wav2genre_cache.audio.whisper_windows import TrackWindows, Window
from wav2genre_cache.encoders.backbone import Backbone
from wav2genre_cache.errors import AudioError


def embed_tracks(
    backbone: Backbone,
    tracks: Iterable[np.ndarray | TrackWindows],
    segment_seconds: float,
    hop_seconds: float | None,
    batch_size: int,
) -> list[np.ndarray]:
    """Per-layer embeddings [n_segments, layers, dim] of each decoded 16 kHz track.

    The one segment-to-embedding path: `embed` and `predict` both call it, so a bundle's
    predictions use exactly what its cache holds. The backbone's front end turns each track's
    segments into model inputs (windows); equal-length windows of all the tracks are batched
    together. A track may come already segmented (TrackWindows: from `track_windows`, or with
    Whisper log-mel made in a decode worker by the same code the front end runs). A raw-waveform input shorter
    than a full segment (a short track's one segment) is embedded alone: nothing is ever padded
    (Wav2Vec2-base has no attention mask); Whisper's windows are zero-padded to their fixed
    length, as Whisper was trained. Tracks are consumed one at a time and windows copied into
    the batch, so memory holds one track and one batch, whatever the number or length of the
    tracks.
    """
    frontend = backbone.frontend
    width = frontend.input_samples(int(round(segment_seconds * SAMPLE_RATE)))
    out, pending = [], []  # pending: (track, its segments in this batch row)
    batch = np.empty((batch_size, width), np.float32)  # windows are copied in once, here

    def store(ti: int, spans: list, embs: np.ndarray) -> None:
        for (si, _, _), e in zip(spans, embs, strict=True):
            out[ti][si] = e

    def flush() -> None:
        if pending:
            embs = backbone.embed_windows(batch[: len(pending)], [sp for _, sp in pending])
            for (ti, spans), e in zip(pending, embs, strict=True):
                store(ti, spans, e)
            pending.clear()

    for ti, track in enumerate(tracks):
        if isinstance(track, TrackWindows):
            n_segments, windows = track.n_segments, track.windows
        else:
            starts, length = segment_track(track, segment_seconds, hop_seconds)
            n_segments, windows = len(starts), frontend.windows(track, starts, length)
        out.append(np.zeros((n_segments, backbone.n_layers, backbone.dim), np.float32))
        for x, spans in windows:
            if x.ndim == 1 and len(x) != width and not frontend.pads:
                store(ti, spans, backbone.embed_windows(x[None], [spans])[0])
                continue
            shape = x.shape if x.ndim > 1 else (width,)  # log-mel made ahead, or audio
            if batch.shape[1:] != shape:
                flush()
                batch = np.empty((batch_size, *shape), np.float32)
            row = batch[len(pending)]
            if x.ndim > 1:
                row[...] = x
            else:
                row[: len(x)] = x
                row[len(x) :] = 0.0  # the rest of a Whisper window is silence
            pending.append((ti, spans))
            if len(pending) >= batch_size:
                flush()
    flush()
    return out


def track_windows(backbone: Backbone, samples: np.ndarray, starts: list[int], length: int):
    """A segmented track's windows for `embed_tracks`, made as the model reads them."""
    return TrackWindows(len(starts), backbone.frontend.windows(samples, starts, length))


def streamed_windows(
    backbone: Backbone,
    path: str | Path,
    segments: tuple[list[int], int],
    content_hash: str,
    segment_seconds: float,
    hop_seconds: float | None,
    chunk_seconds: float,
) -> TrackWindows:
    """A long track's windows for `embed_tracks`, decoded from its file a chunk of segments at a
    time as the model reads them: the windows, in order, that `track_windows` makes of the whole.

    `segments` and `content_hash` are what a decode worker found in the same file; audio that
    differs from them (a file changed meanwhile) raises AudioError once it has been read.
    """
    segment, hop = segment_samples(segment_seconds, hop_seconds)
    layout = getattr(backbone.frontend, "layout", None)
    per_window = layout.per_window(segment) if layout is not None else 1
    n = per_chunk(chunk_seconds, hop, per_window)
    expected = list(segments[0])

    def windows() -> Iterator[Window]:
        digest = AudioHash()
        stream = StreamedSegments(hashed(decode_blocks(Path(path)), digest), segment, hop, n)
        starts: list[int] = []
        for chunk in stream:
            first = len(starts)
            starts += [chunk.offset + s for s in chunk.starts]
            for x, spans in backbone.frontend.windows(chunk.audio, chunk.starts, chunk.length):
                yield x, [(first + i, *frames) for i, *frames in spans]
        if starts != expected or digest.hexdigest() != content_hash:
            raise AudioError(f"{path}: the file changed while it was embedded; run again")

    return TrackWindows(len(expected), windows())
