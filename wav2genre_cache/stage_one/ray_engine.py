"""Stage one on Ray Data: CPU tasks decode, an actor pool of encoders embeds, Parquet shards merge.

The same per-track code as the local engine runs in each place (per_track.prepare_track in the
decode tasks, blocks.embed_block in the encoder actors), so the cache it writes is the local
engine's, within float16 rounding of batch-order arithmetic. The driver is the one writer: it
reads the embedded tracks in order, writes each finished block of tracks as Parquet shards
(store/parquet.py) and merges them into the HDF5 cache at the end. A re-run skips the blocks
whose tracks are all in shards already, so a killed driver resumes. A decode worker that dies
is replaced by Ray and its task retried; an encoder actor that dies is not restarted by Ray:
the engine runs the blocks not written yet on a fresh pipeline (ray_runtime.retried_blocks,
a bounded number of times). The runtime (loopback only unless
--ray-address) and the pipeline's shape are ray_runtime.py's, shared with `predict --engine ray`.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from functools import partial

import numpy as np
from rich.console import Console

from wav2genre_cache.data.tracks import EXCLUDED, Track, metadata_text
from wav2genre_cache.encoders.backbone import Backbone
from wav2genre_cache.errors import RayEngineError
from wav2genre_cache.stage_one.blocks import (
    embed_block,
    finish_blocks,
    open_blocks,
    prepare_options,
    write_blocks,
)
from wav2genre_cache.stage_one.options import (
    EmbedOptions,
    EmbedSummary,
    embed_config,
    with_batch_size,
)
from wav2genre_cache.stage_one.per_track import PrepareOptions, prepare_track
from wav2genre_cache.stage_one.ray_runtime import (
    ActorPool,
    cpu_threads,
    module_memory,
    ray_runtime,
    retried_blocks,
)
from wav2genre_cache.store.cache import TrackResult
from wav2genre_cache.store.parquet import ParquetShards

RESUME = "the blocks written so far are kept: re-run the same command to resume"


@dataclass(frozen=True)
class EncoderSpec:
    """What each encoder actor loads, and the identity it must have to match the cache's config."""

    model: str
    device: str
    dtype: str
    window: str | None
    identity: tuple
    threads: int  # torch threads of a CPU actor (0: torch's own choice)
    memory: int  # bytes an actor is expected to hold (Ray's logical memory resource)


def model_identity(backbone: Backbone) -> tuple:
    """The backbone fields a cache's config records: actors must load exactly this model."""
    return (
        backbone.model_id,
        backbone.revision,
        backbone.kind,
        backbone.window,
        backbone.n_layers,
        backbone.dim,
        str(backbone.dtype),
    )


@dataclass(frozen=True)
class RayRun:
    """What a Ray run needs of the driver's checked model: settings, not the model itself."""

    opts: EmbedOptions
    config: dict
    plan: PrepareOptions
    spec: EncoderSpec | None  # None: no encoder feature set, no actors


def plan_ray_run(
    opts: EmbedOptions, layout: str | list[str], backbone: Backbone | None, multi_label: bool
) -> RayRun:
    """The run's settings, taken from the model the driver loaded and checked (then let go)."""
    opts = with_batch_size(opts, backbone)
    plan = prepare_options(opts, backbone, workers=1)  # Ray's decode tasks are the workers
    spec = None
    if backbone is not None:
        spec = EncoderSpec(
            opts.model,
            opts.device,
            opts.dtype,
            opts.window,
            model_identity(backbone),
            threads=cpu_threads(),
            memory=module_memory(backbone.model),
        )
    return RayRun(opts, embed_config(opts, layout, backbone, multi_label), plan, spec)


def embed_on_ray(
    run: RayRun, tracks: list[Track], console: Console, progress: bool
) -> EmbedSummary:
    """embed_dataset with --engine ray, once the driver has checked the model and the options."""
    opts, config, plan, spec = run.opts, run.config, run.plan, run.spec
    summary, store, todo = open_blocks(opts, config, tracks, ParquetShards, console)
    if store is None:
        return summary
    start = time.perf_counter()
    if todo:  # a resumed run whose blocks were all written only merges them: no Ray to start
        with ray_runtime(opts.ray_address, console) as ray:  # stopped however the run ends
            start = time.perf_counter()
            blocks = _embedded_blocks(ray, todo, plan, spec, opts, console)
            write_blocks(store, blocks, len(tracks), summary, console, progress, start)
    summary.seconds = time.perf_counter() - start
    finish_blocks(store, tracks, summary)
    console.print(
        f"Parquet shards (segments and tracks tables) kept in {store.dir}", highlight=False
    )
    return summary


def _embedded_blocks(
    ray,
    todo: list[tuple[int, list[Track]]],
    plan: PrepareOptions,
    spec: EncoderSpec | None,
    opts: EmbedOptions,
    console: Console,
) -> Iterator[tuple[int, list[TrackResult]]]:
    """Each block of `todo`, embedded, in order: the pipeline's results gathered by the driver.
    An encoder actor that dies costs the blocks not written yet, run again on a fresh pipeline."""
    items = [
        [{"index": i, "track": pickle.dumps(t)} for i, t in enumerate(b) if t.split != EXCLUDED]
        for _, b in todo
    ]
    then = (
        partial(results_without_encoder, opts=opts)  # hand-crafted features only: no actors
        if spec is None
        else ActorPool(EncoderActor, {"spec": spec, "opts": opts}, spec.device, spec.memory)
    )
    say = partial(console.print, highlight=False)
    decode = partial(decode_task, plan=plan)
    with closing(retried_blocks(ray, items, decode, then, RESUME, say)) as rows:
        for (k, block), got in zip(todo, rows, strict=True):
            results = {int(r["index"]): pickle.loads(r["result"]) for r in got}
            yield k, [_block_result(t, results.get(i), RESUME) for i, t in enumerate(block)]


def _block_result(t: Track, result: TrackResult | None, resume: str) -> TrackResult:
    """A track's result: the pipeline's, or the excluded track's record (never decoded, as in
    the local engine); a missing one fails the run (the pipeline never drops a row)."""
    if t.split == EXCLUDED:
        return TrackResult(
            t.track_id,
            t.path,
            t.label,
            t.split,
            t.artist,
            "excluded",
            "not in the chosen split",
            source=t.source,
            metadata=metadata_text(t),
        )
    if result is None:
        raise RayEngineError(f"the Ray pipeline returned no result for {t.path}; {resume}")
    return result


def decode_task(row: dict, plan: PrepareOptions) -> dict:
    """Ray task: decode and prepare one track (per_track.prepare_track), as a decode worker does."""
    track: Track = pickle.loads(row["track"])
    prepared = prepare_track((track.path, track.track_id, track.split == "train"), plan)
    return {"index": row["index"], "track": row["track"], "prepared": pickle.dumps(prepared)}


def _tracks_and_prepared(batch: dict) -> tuple[list[Track], list]:
    return (
        [pickle.loads(b) for b in batch["track"]],
        [pickle.loads(b) for b in batch["prepared"]],
    )


def _results_batch(batch: dict, results: list[TrackResult]) -> dict:
    return {
        "index": batch["index"],
        "result": np.array([pickle.dumps(r) for r in results], dtype=object),
    }


def results_without_encoder(batch: dict, opts: EmbedOptions) -> dict:
    """Ray task for runs without the encoder feature set: the tracks' records and features."""
    tracks, prepared = _tracks_and_prepared(batch)
    return _results_batch(batch, embed_block(tracks, iter(prepared), None, opts))


class EncoderActor:
    """Ray actor: one loaded encoder, embedding batches of prepared tracks (blocks.embed_block)."""

    def __init__(self, spec: EncoderSpec, opts: EmbedOptions):
        import torch

        from wav2genre_cache.encoders.backbone import load_backbone

        if spec.threads and (spec.device == "cpu" or not torch.cuda.is_available()):
            torch.set_num_threads(spec.threads)  # a CPU actor computes as the local engine does
        if opts.keep_freed_memory:  # as the CLI does for the local engine's process
            from wav2genre_cache.encoders.cpu_tuning import keep_freed_memory

            keep_freed_memory()
        self.backbone = load_backbone(
            spec.model, spec.device, spec.dtype, log=lambda _: None, window=spec.window
        )
        got = model_identity(self.backbone)
        if got != spec.identity:
            raise RayEngineError(
                f"an encoder actor loaded {got}, not the driver's {spec.identity}: give "
                "--device and --dtype explicitly so that every node loads the same model"
            )
        self.opts = opts

    def __call__(self, batch: dict) -> dict:
        tracks, prepared = _tracks_and_prepared(batch)
        return _results_batch(batch, embed_block(tracks, iter(prepared), self.backbone, self.opts))
