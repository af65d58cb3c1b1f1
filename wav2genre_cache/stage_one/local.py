"""Stage one's local engine: decode worker processes feed one model on this machine, block by
block, into HDF5 shards that merge into the cache at the end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial

from wav2genre_cache.audio.workers import DecodeWorkers
from wav2genre_cache.data.tracks import EXCLUDED, Track
from wav2genre_cache.encoders.backbone import Backbone
from wav2genre_cache.stage_one.blocks import (
    TracksRead,
    embed_block,
    finish_blocks,
    open_blocks,
    prepare_options,
    write_blocks,
)
from wav2genre_cache.stage_one.options import EmbedJob, EmbedOptions, EmbedSummary, with_batch_size
from wav2genre_cache.stage_one.per_track import prepare_track
from wav2genre_cache.stage_one.reuse import ReusedFeatures
from wav2genre_cache.store.cache import TrackResult
from wav2genre_cache.store.cache_writer import ShardStore


def embed_into_cache(
    job: EmbedJob, config: dict, backbone: Backbone | None, workers: DecodeWorkers
) -> EmbedSummary:
    """Embed the job's tracks here into the cache with these settings, resuming its shards."""
    opts, tracks = with_batch_size(job.opts, backbone), job.catalogue.tracks
    reuse = ReusedFeatures(opts.reuse, config) if opts.reuse and backbone else None
    summary, store, todo = open_blocks(opts, config, tracks, ShardStore, job.console)
    if store is None:  # a finished cache with these settings
        ShardStore(opts.out, config).remove_leftover()
        return summary
    start = time.perf_counter()
    read = TracksRead()
    blocks = _embedded_blocks(todo, backbone, workers, opts, reuse, read)
    write_blocks(store, blocks, len(tracks), summary, job.console, job.progress, start, read)
    summary.seconds = time.perf_counter() - start
    summary.tracks_reused = reuse.reused if reuse else 0
    finish_blocks(store, tracks, summary)
    return summary


def _embedded_blocks(
    todo: list[tuple[int, list[Track]]],
    backbone: Backbone | None,
    workers: DecodeWorkers,
    opts: EmbedOptions,
    reuse: ReusedFeatures | None,
    read: TracksRead,
) -> Iterator[tuple[int, list[TrackResult]]]:
    """Each block of `todo`, embedded, in order; its tracks decoded by the workers ahead of it."""
    plan = prepare_options(opts, backbone, workers.count, stream=True)
    to_decode = [t for _, b in todo for t in b if t.split != EXCLUDED]
    decoded = workers.map(
        partial(prepare_track, plan=plan),
        [(t.path, t.track_id, t.split == "train") for t in to_decode],
        window=2 * workers.count + 2,
        on_crash=_decoder_crashed,
    )
    for k, block in todo:
        yield k, embed_block(block, decoded, backbone, opts, reuse, read)


def _decoder_crashed(item: tuple[str, str, bool]) -> tuple[None, str]:
    return None, f"{item[0]}: the decoder crashed on this file (its worker process died)"
