"""Stage one: every track of a dataset to per-layer embeddings in a resumable HDF5 cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from wav2genre_cache.audio.augment import AUGMENTATIONS
from wav2genre_cache.audio.decode import SAMPLE_RATE
from wav2genre_cache.audio.whisper_windows import TrackWindows
from wav2genre_cache.audio.workers import DecodeWorkers
from wav2genre_cache.data.datasets import EXCLUDED, Catalogue, Track, read_datasets
from wav2genre_cache.encoders.backbone import (
    Backbone,
    BackboneError,
    default_batch_size,
    load_backbone,
)
from wav2genre_cache.encoders.embed_tracks import embed_tracks, track_windows
from wav2genre_cache.encoders.sources import DEFAULT_MODEL
from wav2genre_cache.errors import CacheError, OptionError
from wav2genre_cache.feature_sets import (
    ENCODER,
    FEATURE_SETS,
    HANDCRAFTED,
    LOGMEL,
    feature_set_name,
)
from wav2genre_cache.stage_one.per_track import PreparedTrack, PrepareOptions, prepare_track
from wav2genre_cache.store.cache import (
    FORMAT_VERSION,
    EmbeddingCache,
    TrackResult,
    config_differences,
)
from wav2genre_cache.store.cache_writer import ShardStore


@dataclass
class EmbedOptions:
    """The settings of one `embed` run (the CLI's options)."""

    data: str | tuple[str, ...]  # one dataset, or several read into one taxonomy (label_map)
    out: str
    dataset: str = "auto"
    label_map: str | None = None  # CSV source,label,target
    model: str = DEFAULT_MODEL
    segment_seconds: float = 10.0
    hop_seconds: float | None = None
    batch_size: int | None = None  # None: by device (backbone.default_batch_size)
    device: str = "auto"
    dtype: str = "auto"
    workers: int | None = None
    split: str = "random"
    split_dir: str | None = None
    seed: int = 0
    features: tuple[str, ...] = (ENCODER,)
    augment: tuple[str, ...] = ()  # any of pitch, stretch, noise; applied to training tracks only
    augment_copies: int = 0
    noise_dir: str | None = None
    window: str | None = None  # alone | packed, for Whisper; None: frontends.DEFAULT_WINDOW
    logmel_in: str = "auto"  # where Whisper's log-mel is made: auto | workers | model
    engine: str = "local"  # local | ray (ray_engine.py)
    ray_address: str | None = None  # None: a Ray runtime on this machine; auto or HOST:PORT
    # Ray's encoder actors call cpu_tuning.keep_freed_memory (the CLI's default for its process).
    keep_freed_memory: bool = False


@dataclass
class EmbedSummary:
    """What an embed run did: counts, speed and the failures it skipped."""

    out: Path
    tracks_ok: int = 0
    tracks_failed: int = 0
    tracks_excluded: int = 0
    tracks_skipped: int = 0  # already done by an earlier, interrupted run
    segments: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    already_complete: bool = False

    @property
    def audio_seconds_per_second(self) -> float:
        """Throughput of this run: seconds of audio embedded per wall-clock second."""
        return self.audio_seconds / self.seconds if self.seconds else 0.0


ENGINES = ("local", "ray")


def default_workers() -> int:
    """Decode workers: all cores but one for the model, at least one, at most eight."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def embed_dataset(
    opts: EmbedOptions, console: Console | None = None, progress: bool = True
) -> EmbedSummary:
    """Run stage one as `wav2genre embed` does; resume an interrupted run with the same settings."""
    console = console or Console(stderr=True)
    opts = replace(opts, features=tuple(feature_set_name(f) for f in opts.features))
    unknown = set(opts.features) - set(FEATURE_SETS)
    if unknown:
        raise OptionError(
            f"unknown feature set(s) {sorted(unknown)}; available: {', '.join(FEATURE_SETS)}"
        )
    bad_aug = set(opts.augment) - set(AUGMENTATIONS)
    if bad_aug:
        raise OptionError(
            f"unknown augmentation(s) {sorted(bad_aug)}; use any of {', '.join(AUGMENTATIONS)}"
        )
    if opts.augment and opts.augment_copies < 1:
        raise OptionError("--augment needs --augment-copies of at least 1")
    if opts.segment_seconds < 1 or (opts.hop_seconds is not None and opts.hop_seconds <= 0):
        raise OptionError("--segment-seconds must be at least 1 and --hop-seconds positive")
    if opts.engine not in ENGINES:
        raise OptionError(f"unknown engine {opts.engine!r}; use {' or '.join(ENGINES)}")
    if opts.ray_address is not None and opts.engine != "ray":
        raise OptionError("--ray-address goes with --engine ray")
    catalogue = read_catalogue(opts, lambda m: console.print(m, highlight=False))
    tracks, layouts = catalogue.tracks, catalogue.layouts
    layout = layouts[0] if len(layouts) == 1 else layouts  # one dataset: as caches always had
    workers = default_workers() if opts.workers is None else opts.workers
    if opts.engine == "ray" or Path(opts.out).exists():
        workers = 0  # Ray decodes in its own tasks; a finished cache decodes nothing
    # Decode workers start (a second of imports each) while the model loads.
    with DecodeWorkers(workers, warm=prepare_track.__module__) as pool:
        # Only the encoder feature set needs the model; hand-crafted features alone never load it.
        # Loaded and checked before any output exists: a model that cannot embed audio, or these
        # segments, is refused here with nothing to clean up.
        backbone = (
            load_backbone(
                opts.model,
                opts.device,
                opts.dtype,
                log=lambda m: console.print(m, highlight=False),
                window=opts.window,
            )
            if ENCODER in opts.features
            else None
        )
        problem = backbone.frontend.segment_problem(opts.segment_seconds) if backbone else None
        if problem:
            raise BackboneError(problem)
        # A failure before the first block is written (a model that breaks on real audio,
        # Ctrl-C) leaves no empty .partial folder or output folder: nothing could resume from it.
        if opts.engine == "ray":
            from wav2genre_cache.stage_one.ray_engine import embed_on_ray, plan_ray_run
            from wav2genre_cache.store.parquet import shard_dir

            run = plan_ray_run(opts, layout, backbone, catalogue.multi_label)
            backbone = None  # the encoder actors load their own; this one was for the checks
            with _undone_on_failure(Path(opts.out), shard_dir(opts.out), "*.parquet"):
                return embed_on_ray(run, tracks, console, progress)
        with _undone_on_failure(Path(opts.out), Path(str(opts.out) + ".partial"), "shard-*.h5"):
            config = embed_config(opts, layout, backbone, catalogue.multi_label)
            return _embed_into_cache(opts, config, tracks, backbone, pool, console, progress)


def _embed_into_cache(
    opts: EmbedOptions,
    config: dict,
    tracks: list[Track],
    backbone: Backbone | None,
    workers: DecodeWorkers,
    console: Console,
    progress: bool,
) -> EmbedSummary:
    """embed_dataset once the model is loaded and the decode workers are starting."""
    if opts.batch_size is None:
        opts = replace(opts, batch_size=default_batch_size(backbone.device) if backbone else 2)
    summary = EmbedSummary(Path(opts.out))

    out = Path(opts.out)
    if out.exists():
        return existing_cache(out, config, summary, console)

    out.parent.mkdir(parents=True, exist_ok=True)
    store = ShardStore(out, config)
    done = store.open()
    todo = blocks_to_do(tracks, opts.batch_size, done, summary, console)
    to_decode = [t for _, b in todo for t in b if t.split != EXCLUDED]

    start = time.perf_counter()
    with embed_progress(console, progress) as bar:
        task = bar.add_task("embed", total=len(tracks), completed=summary.tracks_skipped, speed="")
        plan = prepare_options(opts, backbone, workers.count)
        decoded = workers.map(
            partial(prepare_track, plan=plan),
            [(t.path, t.track_id, t.split == "train") for t in to_decode],
            window=2 * workers.count + 2,
            on_crash=_decoder_crashed,
        )
        for k, block in todo:
            results = embed_block(block, decoded, backbone, opts)
            store.write(k, results)
            record_block(results, summary, console, start, bar, task)
    summary.seconds = time.perf_counter() - start
    store.finalize([t.track_id for t in tracks])
    return summary


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


def prepare_options(opts: EmbedOptions, backbone: Backbone | None, workers: int) -> PrepareOptions:
    """What the decode workers (or tasks) do to each track besides decoding."""
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
    )


def record_block(
    results: list[TrackResult],
    summary: EmbedSummary,
    console: Console,
    start: float,
    bar: Progress,
    task,
) -> None:
    """Count a written block of tracks in the summary and move the progress line on."""
    for r in results:
        tally(summary, r, console)
    summary.seconds = time.perf_counter() - start
    bar.update(
        task,
        advance=len(results),
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


@contextmanager
def _undone_on_failure(out: Path, partial: Path, shards: str) -> Iterator[None]:
    """On any failure before a shard is written, remove the folders this run created for `out`.

    `partial` is the engine's folder of shards (files matching the glob `shards`).
    """
    new_dirs = [d for d in (out.parent, *out.parent.parents) if not d.exists()]  # deepest first
    fresh = not partial.exists()
    try:
        yield
    except BaseException:
        if fresh and not any(partial.glob(shards)):
            shutil.rmtree(partial, ignore_errors=True)
            for d in new_dirs:
                try:
                    d.rmdir()  # only if empty: never anything this run did not make
                except OSError:
                    break
        raise


def data_paths(opts: EmbedOptions) -> list[str]:
    """The run's datasets (DATA...), in the order given."""
    return [opts.data] if isinstance(opts.data, str | Path) else list(opts.data)


def read_catalogue(opts: EmbedOptions, log: Callable[[str], None]) -> Catalogue:
    """The run's tracks from every dataset, labels mapped, splits assigned; notes logged."""
    catalogue = read_datasets(
        data_paths(opts), opts.dataset, opts.label_map, opts.split, opts.seed, opts.split_dir
    )
    for note in catalogue.notes:
        log(note)
    return catalogue


def _label_map_digest(label_map: str | None) -> str | None:
    """The label map's path and a hash of its text: a changed map refuses to resume."""
    if label_map is None:
        return None
    path = Path(label_map)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as exc:
        raise OptionError(f"{path}: cannot read the label map ({exc.strerror or exc})") from None
    return f"{path.resolve()} sha256:{digest}"


def embed_config(
    opts: EmbedOptions, layout: str | list[str], backbone: Backbone | None, multi_label: bool
) -> dict:
    """The settings that decide what a cache holds; resuming requires them to be equal."""
    split_dir = str(Path(opts.split_dir).resolve()) if opts.split_dir else None
    data = [str(Path(d).resolve()) for d in data_paths(opts)]
    return {
        "format_version": FORMAT_VERSION,
        "data": data[0] if len(data) == 1 else data,
        "dataset": layout,
        "label_map": _label_map_digest(opts.label_map),
        "multi_label": multi_label,
        "split": opts.split,
        "split_dir": split_dir,
        "seed": opts.seed,
        "sample_rate": backbone.sample_rate if backbone else SAMPLE_RATE,
        "segment_seconds": float(opts.segment_seconds),
        "hop_seconds": float(opts.hop_seconds or opts.segment_seconds),
        "backbone": backbone.model_id if backbone else "none",
        "backbone_revision": backbone.revision if backbone else "",
        "frontend": backbone.kind if backbone else "",
        "window": backbone.window if backbone else "",
        "layers": backbone.n_layers if backbone else 0,
        "dim": backbone.dim if backbone else 0,
        "dtype": str(backbone.dtype).removeprefix("torch.") if backbone else "",
        "features": list(opts.features),
        "augment": list(opts.augment),
        "augment_copies": opts.augment_copies if opts.augment else 0,
        "noise_dir": str(Path(opts.noise_dir).resolve()) if opts.noise_dir else None,
    }


def embed_block(
    block: list[Track], decoded: Iterator, backbone: Backbone | None, opts: EmbedOptions
) -> list[TrackResult]:
    """Decode, segment and embed one block of tracks; batches never cross blocks (determinism).

    Every view of a track (the original, then its augmented copies) is segmented alike; the
    segments of all views are stored in order, view by view.
    """
    results: list[TrackResult] = []
    views_of: list[int] = []  # how many views each result sent to the model, in results' order

    def views_to_embed() -> Iterator[TrackWindows]:
        # A generator, so that one track at a time is in memory: the model reads a track's
        # views while the workers decode the next. It records each track's result as it goes.
        for t in block:
            r, track = _track_result(t, decoded)
            results.append(r)
            views = []
            if track is not None and backbone is not None:
                views = track.inputs or [
                    track_windows(backbone, samples, starts, length)
                    for samples, (starts, length) in zip(track.views, track.segments, strict=True)
                ]
            views_of.append(len(views))
            yield from views

    if backbone is None:
        for _ in views_to_embed():
            pass
        return results
    feats = iter(
        embed_tracks(
            backbone, views_to_embed(), opts.segment_seconds, opts.hop_seconds, opts.batch_size
        )
    )
    for r, n_views in zip(results, views_of, strict=True):
        if n_views:
            r.features[ENCODER] = np.concatenate([next(feats) for _ in range(n_views)])
    return results


def _track_result(t: Track, decoded: Iterator) -> tuple[TrackResult, PreparedTrack | None]:
    """The cache's record of one track, with the worker's prepared track where it has one."""
    r = TrackResult(t.track_id, t.path, t.label, t.split, t.artist, status="ok", source=t.source)
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
        console.print(f"[yellow]skipped[/yellow] {r.reason}", highlight=False)
    else:
        summary.tracks_excluded += 1


def _summarise_existing(summary: EmbedSummary, cache: EmbeddingCache) -> EmbedSummary:
    t = cache.tracks
    summary.tracks_ok = int((t.status == "ok").sum())
    summary.tracks_failed = int((t.status == "failed").sum())
    summary.tracks_excluded = int((t.status == "excluded").sum())
    summary.segments = len(cache.segments)
    summary.failures = [(r.path, r.reason) for r in t[t.status == "failed"].itertuples()]
    return summary


def _decoder_crashed(item: tuple[str, str, bool]) -> tuple[None, str]:
    return None, f"{item[0]}: the decoder crashed on this file (its worker process died)"
