"""The per-block pieces both stage-one engines share: which blocks of tracks are left, what the
decode workers do to a track, embedding one block, writing the blocks under the run's progress
line and counting them in its summary."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from wav2genre_cache._io import Pace
from wav2genre_cache.audio.decode import SAMPLE_RATE
from wav2genre_cache.audio.stream_segments import chunk_seconds
from wav2genre_cache.audio.whisper_windows import TrackWindows
from wav2genre_cache.data.tracks import EXCLUDED, Track, metadata_text
from wav2genre_cache.encoders.backbone import Backbone
from wav2genre_cache.encoders.embed_tracks import embed_tracks, streamed_windows, track_windows
from wav2genre_cache.errors import CacheError, Interrupted, OptionError
from wav2genre_cache.feature_sets import ENCODER, HANDCRAFTED, LOGMEL
from wav2genre_cache.stage_one.options import EmbedOptions, EmbedSummary
from wav2genre_cache.stage_one.per_track import PreparedTrack, PrepareOptions
from wav2genre_cache.stage_one.reuse import ReusedFeatures
from wav2genre_cache.store.cache import EmbeddingCache, TrackResult, config_differences


class BlockStore(Protocol):
    """An engine's shards of finished blocks (store.cache.ShardStore, store.parquet.ParquetShards)."""

    def open(self) -> set[str]: ...  # the track ids in the shards written so far

    def write(self, block: int, results: list[TrackResult]) -> None: ...

    def finalize(self, order: list[str]) -> Path: ...  # the shards merged into the cache


def open_blocks(
    opts: EmbedOptions,
    config: dict,
    tracks: list[Track],
    shards: Callable[[Path, dict], BlockStore],
    console: Console,
) -> tuple[EmbedSummary, BlockStore | None, list[tuple[int, list[Track]]]]:
    """The run's summary, its store of shards and the blocks left to embed in it.

    No store (and no block) when a finished cache is at opts.out already: the summary then
    says what it holds, if its settings are these (existing_cache).
    """
    out = Path(opts.out)
    summary = EmbedSummary(out)
    if out.exists():
        return existing_cache(out, config, summary, console), None, []
    out.parent.mkdir(parents=True, exist_ok=True)
    store = shards(out, config)
    return summary, store, blocks_to_do(tracks, opts.batch_size, store.open(), summary, console)


def blocks_to_do(
    tracks: list[Track], batch_size: int, done: set[str], summary: EmbedSummary, console: Console
) -> list[tuple[int, list[Track]]]:
    """The run's blocks of tracks (number, tracks) not finished yet: each is a shard, what a
    kill redoes. A block counts as done when every track id of it is in some shard, so another
    batch size or an added file never skips a track that was not embedded."""
    size = max(16, batch_size)
    blocks = [tracks[i : i + size] for i in range(0, len(tracks), size)]
    todo = [(k, b) for k, b in enumerate(blocks) if not all(t.track_id in done for t in b)]
    summary.tracks_skipped = len(tracks) - sum(len(b) for _, b in todo)
    if summary.tracks_skipped:
        console.print(
            f"Resuming: {summary.tracks_skipped} of {len(tracks)} tracks already embedded."
        )
    return todo


class TracksRead:
    """How many tracks of the block being embedded the model has read: the run's progress moves
    between shards, which are minutes apart on a slow machine or with augmented copies."""

    def __init__(self):
        self.count = 0
        self.listener: Callable[[], None] | None = None

    def add(self) -> None:
        """One more track read (embed_block calls it as the model moves to the next track)."""
        self.count += 1
        if self.listener is not None:
            self.listener()


def write_blocks(
    store: BlockStore,
    blocks: Iterable[tuple[int, list[TrackResult]]],
    tracks: int,
    summary: EmbedSummary,
    console: Console,
    progress: bool,
    start: float,
    read: TracksRead | None = None,
) -> None:
    """Write each embedded block (number, results) as a shard, counting it under the progress line.

    `blocks` may be lazy: its work then runs under the progress line too, which `read` (the
    tracks of the current block read so far, where the engine counts them) moves on.
    """
    plain = Pace() if progress and not console.is_terminal else None  # a log: plain lines
    kept = summary.tracks_skipped  # tracks in written shards: what a Ctrl-C leaves
    try:
        with embed_progress(console, progress) as bar:
            task = bar.add_task("embed", total=tracks, completed=kept, speed="")

            def moved(force: bool = False) -> None:
                done = kept + (read.count if read else 0)
                bar.update(task, completed=done)
                if plain is not None and plain(force=force):
                    # Segments and rate count kept shards: none before the first, no 0.0 rate.
                    rate = (
                        f", {summary.segments:,} segments, "
                        f"{summary.audio_seconds_per_second:,.1f} audio-s/s"
                        if summary.segments
                        else ""
                    )
                    console.print(
                        f"embed: {done}/{tracks} tracks ({kept} kept){rate}", highlight=False
                    )

            if read is not None:
                read.listener = moved
            for k, results in blocks:
                store.write(k, results)
                kept += len(results)
                if read is not None:
                    read.count = 0
                record_block(results, summary, console, start, bar, task)
                moved(force=True)  # a shard kept: said at once, whatever the pace
    except KeyboardInterrupt:
        raise Interrupted(interrupted_embed(kept)) from None


def interrupted_embed(kept: int) -> str:
    """What a Ctrl-C while embedding leaves: the shards written so far, which a rerun resumes."""
    if not kept:
        return "no track was embedded yet; nothing was kept"
    return f"the cache keeps the {kept} tracks done; run the same command to resume"


def finish_blocks(store: BlockStore, tracks: list[Track], summary: EmbedSummary) -> None:
    """Merge the shards into the cache, and count its tracks: a resumed run whose blocks were
    all done before has embedded nothing itself, and is complete all the same."""
    cache = EmbeddingCache(store.finalize([t.track_id for t in tracks]))
    summary.tracks_in_cache = int((cache.tracks.status == "ok").sum())
    if summary.tracks_skipped:  # what the earlier run skipped is said again
        said = {path for path, _ in summary.failures}
        failed = cache.tracks[cache.tracks.status == "failed"]
        summary.failures += [(r.path, r.reason) for r in failed.itertuples() if r.path not in said]


def prepare_options(
    opts: EmbedOptions, backbone: Backbone | None, workers: int, stream: bool = False
) -> PrepareOptions:
    """What the decode workers (or tasks) do to each track besides decoding; with `stream`,
    tracks over opts.long_track_seconds are streamed (the local engine's workers)."""
    return PrepareOptions(
        opts.segment_seconds,
        opts.hop_seconds,
        handcrafted=HANDCRAFTED in opts.features,
        logmel=LOGMEL in opts.features,
        augment=tuple(opts.augment),
        copies=opts.augment_copies if opts.augment else 0,
        seed=opts.seed,
        noise_dir=opts.noise_dir,
        windows=backbone.frontend.layout
        if logmel_in_workers(backbone, workers, opts.logmel_in)
        else None,
        stream_seconds=opts.long_track_seconds if stream else None,
    )


def record_block(
    results: list[TrackResult],
    summary: EmbedSummary,
    console: Console,
    start: float,
    bar: Progress,
    task,
) -> None:
    """Count a written block of tracks in the summary and on the progress line."""
    for r in results:
        tally(summary, r, console)
    summary.seconds = time.perf_counter() - start
    bar.update(
        task,
        speed=f"{summary.segments:,} segments, {summary.audio_seconds_per_second:,.1f} audio-s/s",
    )


def embed_progress(console: Console, progress: bool) -> Progress:
    """The one progress line of an embed run: tracks done, segments, audio-seconds per second."""
    return Progress(
        TextColumn("[bold]embed"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tracks"),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not progress,
    )


def existing_cache(
    out: Path, config: dict, summary: EmbedSummary, console: Console
) -> EmbedSummary:
    """A finished cache at `out`: nothing to do if its settings are these, else refuse."""
    diff = config_differences(EmbeddingCache(out).config, config)
    if diff:
        raise CacheError(
            f"{out} already exists with different settings:\n  "
            + "\n  ".join(diff)
            + "\nUse another --out, or delete the file to rebuild it."
        )
    summary.already_complete = True
    console.print(f"{out} is already complete with these settings; nothing to do.")
    return _summarise_existing(summary, EmbeddingCache(out))


def logmel_in_workers(backbone: Backbone | None, workers: int, where: str = "auto") -> bool:
    """Whether the decode workers make the encoder's log-mel windows, not the model's thread.

    Only Whisper front ends have such work (a window's log-mel: about 15 ms of numpy). auto: in
    the workers when the model runs on a GPU, whose feeding thread they relieve (H100, 16 cores,
    whisper-base float32: 5,074 against 4,683 audio-s/s after load); on the model's side on a
    CPU, whose cores the model keeps busy anyway (16 cores: 225 against 238; 2 cores: slower
    too). benchmarks/README.md has the runs.
    """
    if where not in ("auto", "workers", "model"):
        raise OptionError(f"unknown log-mel place {where!r}; use auto, workers or model")
    if backbone is None or getattr(backbone.frontend, "layout", None) is None or workers <= 0:
        return False
    if where != "auto":
        return where == "workers"
    return backbone.device.type == "cuda"


def embed_block(
    block: list[Track],
    decoded: Iterator,
    backbone: Backbone | None,
    opts: EmbedOptions,
    reuse: ReusedFeatures | None = None,
    read: TracksRead | None = None,
) -> list[TrackResult]:
    """Decode, segment and embed one block of tracks; batches never cross blocks (determinism).

    Every view of a track (the original, then its augmented copies) is segmented alike; the
    segments of all views are stored in order, view by view. With `reuse`, an original view
    whose audio that cache holds is copied from it instead of embedded.
    """
    results: list[TrackResult] = []
    views_of: list[int] = []  # how many views each result sent to the model, in results' order
    copied: dict[int, np.ndarray] = {}  # result index -> its original view's reused features

    def views_to_embed() -> Iterator[TrackWindows]:
        # A generator, so that one track at a time is in memory: the model reads a track's
        # views while the workers decode the next. It records each track's result as it goes.
        for t in block:
            r, track = _track_result(t, decoded)
            results.append(r)
            views = []
            if track is not None and backbone is not None:
                first = 0  # the first view to embed: 1 when the original is reused
                original = reuse.encoder_features(r.content_hash, r.starts_of(0)) if reuse else None
                if original is not None:
                    copied[len(results) - 1], first = original, 1
                views = _views(backbone, t, track, opts)[first:]
            views_of.append(len(views))
            yield from views
            if read is not None:
                read.add()

    if backbone is None:
        for _ in views_to_embed():
            pass
        return results
    feats = iter(
        embed_tracks(
            backbone, views_to_embed(), opts.segment_seconds, opts.hop_seconds, opts.batch_size
        )
    )
    for i, (r, n_views) in enumerate(zip(results, views_of, strict=True)):
        parts = ([copied[i]] if i in copied else []) + [next(feats) for _ in range(n_views)]
        if parts:
            r.features[ENCODER] = np.concatenate(parts)
    return results


def _views(
    backbone: Backbone, t: Track, track: PreparedTrack, opts: EmbedOptions
) -> list[TrackWindows]:
    """A prepared track's views as the model reads them (none is made before it is read): the
    windows a worker made, a long track decoded again from its file a chunk at a time (its one
    view, the original), or the windows of each view's audio."""
    if track.inputs:
        return track.inputs
    if track.streamed:
        segments, chunk = track.segments[0], chunk_seconds(opts.long_track_seconds)
        return [
            streamed_windows(
                backbone, t.path, segments, track.content_hash,
                opts.segment_seconds, opts.hop_seconds, chunk,
            )
        ]  # fmt: skip
    return [
        track_windows(backbone, samples, starts, length)
        for samples, (starts, length) in zip(track.views, track.segments, strict=True)
    ]


def _track_result(t: Track, decoded: Iterator) -> tuple[TrackResult, PreparedTrack | None]:
    """The cache's record of one track, with the worker's prepared track where it has one."""
    r = TrackResult(
        t.track_id,
        t.path,
        t.label,
        t.split,
        t.artist,
        status="ok",
        source=t.source,
        metadata=metadata_text(t),
    )
    if t.split == EXCLUDED:  # never sent to the workers
        r.status, r.reason = "excluded", "not in the chosen split"
        return r, None
    track, reason = next(decoded)
    if track is None:
        r.status, r.reason = "failed", reason
        return r, None
    r.duration, r.content_hash = track.duration, track.content_hash
    for v, (starts, _) in enumerate(track.segments):
        r.starts += [s / SAMPLE_RATE for s in starts]
        r.views += [v] * len(starts)
    if track.handcrafted is not None:
        r.features[HANDCRAFTED] = np.concatenate(track.handcrafted)
    if track.logmel is not None:
        r.features[LOGMEL] = np.concatenate(track.logmel)
    return r, track


def tally(summary: EmbedSummary, r: TrackResult, console: Console) -> None:
    """Add one track's outcome to the run's summary; a skipped file is said at once."""
    if r.status == "ok":
        summary.tracks_ok += 1
        summary.segments += len(r.starts)
        summary.audio_seconds += r.duration
    elif r.status == "failed":
        summary.tracks_failed += 1
        summary.failures.append((r.path, r.reason))
        console.print(Text.assemble(("skipped", "yellow"), f" {r.reason}"), highlight=False)
    else:
        summary.tracks_excluded += 1


def _summarise_existing(summary: EmbedSummary, cache: EmbeddingCache) -> EmbedSummary:
    t = cache.tracks
    summary.tracks_ok = summary.tracks_in_cache = int((t.status == "ok").sum())
    summary.tracks_failed = int((t.status == "failed").sum())
    summary.tracks_excluded = int((t.status == "excluded").sum())
    summary.segments = len(cache.segments)
    summary.failures = [(r.path, r.reason) for r in t[t.status == "failed"].itertuples()]
    return summary
