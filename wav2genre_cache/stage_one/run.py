"""Stage one: every track of a dataset to per-layer embeddings in a resumable HDF5 cache, on the
engine the options name (ENGINES)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from wav2genre_cache._io import missing_folders, remove_empty_folders
from wav2genre_cache.audio.workers import DecodeWorkers
from wav2genre_cache.data.catalogue import read_datasets
from wav2genre_cache.data.tracks import Catalogue
from wav2genre_cache.encoders.backbone import Backbone, load_backbone
from wav2genre_cache.errors import BackboneError, OptionError
from wav2genre_cache.feature_sets import ENCODER
from wav2genre_cache.stage_one.local import embed_into_cache
from wav2genre_cache.stage_one.options import (
    EmbedJob,
    EmbedOptions,
    EmbedSummary,
    checked_options,
    data_paths,
    embed_config,
)
from wav2genre_cache.stage_one.per_track import prepare_track
from wav2genre_cache.stage_one.ray_engine import embed_on_ray, plan_ray_run
from wav2genre_cache.store.parquet import shard_dir


def default_workers() -> int:
    """Decode workers: all cores but one for the model, at least one, at most eight."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def embed_dataset(
    opts: EmbedOptions, console: Console | None = None, progress: bool = True
) -> EmbedSummary:
    """Run stage one as `wav2genre embed` does; resume an interrupted run with the same settings."""
    console = console or Console(stderr=True, markup=False)  # messages hold file names
    opts = checked_options(opts)
    if opts.engine not in ENGINES:
        raise OptionError(f"unknown engine {opts.engine!r}; use {' or '.join(ENGINES)}")
    if opts.ray_address is not None and opts.engine != "ray":
        raise OptionError("--ray-address goes with --engine ray")
    catalogue = read_catalogue(opts, lambda m: console.print(m, highlight=False))
    workers = default_workers() if opts.workers is None else opts.workers
    if opts.engine == "ray" or Path(opts.out).exists():
        workers = 0  # Ray decodes in its own tasks; a finished cache decodes nothing
    # Decode workers start (a second of imports each) while the model loads.
    with DecodeWorkers(workers, warm=prepare_track.__module__) as pool:
        job = EmbedJob(opts, catalogue, console, progress)
        # The model is handed over, not kept here: the Ray engine lets go of it once checked.
        return ENGINES[opts.engine](job, checked_backbone(opts, console), pool)


def checked_backbone(opts: EmbedOptions, console: Console) -> Backbone | None:
    """The run's model, loaded and able to embed these segments; None without the encoder set.

    Loaded and checked before any output exists: a model that cannot embed audio, or these
    segments, is refused here with nothing to clean up. Only the encoder feature set needs the
    model; hand-crafted features alone never load it.
    """
    if ENCODER not in opts.features:
        return None
    backbone = load_backbone(
        opts.model,
        opts.device,
        opts.dtype,
        log=lambda m: console.print(m, highlight=False),
        window=opts.window,
    )
    problem = backbone.frontend.segment_problem(opts.segment_seconds)
    if problem:
        raise BackboneError(problem)
    return backbone


def read_catalogue(opts: EmbedOptions, log: Callable[[str], None]) -> Catalogue:
    """The run's tracks from every dataset, labels mapped, splits assigned; notes logged."""
    catalogue = read_datasets(
        data_paths(opts),
        opts.dataset,
        opts.label_map,
        opts.split,
        opts.seed,
        opts.split_dir,
        opts.group_by,
    )
    for note in catalogue.notes:
        log(note)
    return catalogue


def _embed_locally(
    job: EmbedJob, backbone: Backbone | None, workers: DecodeWorkers
) -> EmbedSummary:
    """--engine local: the decode workers feed the model in this process; HDF5 shards."""
    out = job.opts.out
    with _undone_on_failure(Path(out), Path(str(out) + ".partial"), "shard-*.h5"):
        config = embed_config(job.opts, job.layout, backbone, job.catalogue.multi_label)
        return embed_into_cache(job, config, backbone, workers)


def _embed_on_ray(job: EmbedJob, backbone: Backbone | None, workers: DecodeWorkers) -> EmbedSummary:
    """--engine ray: Ray Data tasks decode, encoder actors embed; Parquet shards (no workers)."""
    run = plan_ray_run(job.opts, job.layout, backbone, job.catalogue.multi_label)
    del backbone  # the encoder actors load their own; this one was for the checks
    with _undone_on_failure(Path(job.opts.out), shard_dir(job.opts.out), "*.parquet"):
        return embed_on_ray(run, job.catalogue.tracks, job.console, job.progress)


# An engine embeds a job's tracks into the cache with the checked model (None: no encoder
# feature set) and, for the local one, the decode workers.
Engine = Callable[[EmbedJob, Backbone | None, DecodeWorkers], EmbedSummary]
ENGINES: dict[str, Engine] = {"local": _embed_locally, "ray": _embed_on_ray}


@contextmanager
def _undone_on_failure(out: Path, partial: Path, shards: str) -> Iterator[None]:
    """On any failure before a shard is written, remove the folders this run created for `out`.

    A failure before the first block is written (a model that breaks on real audio, Ctrl-C)
    then leaves no empty folder of shards or output folder: nothing could resume from it.
    `partial` is the engine's folder of shards (files matching the glob `shards`).
    """
    new_dirs = missing_folders(out)
    fresh = not partial.exists()
    try:
        yield
    except BaseException:
        if fresh and not any(partial.glob(shards)):
            shutil.rmtree(partial, ignore_errors=True)
            remove_empty_folders(new_dirs)
        raise
