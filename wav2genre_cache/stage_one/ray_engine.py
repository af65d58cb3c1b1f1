"""Stage one on Ray Data: CPU tasks decode, an actor pool of encoders embeds, Parquet shards merge.

The same per-track code as the local engine runs in each place (per_track.prepare_track in the
decode tasks, blocks.embed_block in the encoder actors), so the cache it writes is the local
engine's, within float16 rounding of batch-order arithmetic. The driver is the one writer: it
reads the embedded tracks in order, writes each finished block of tracks as Parquet shards
(store/parquet.py) and merges them into the HDF5 cache at the end. A re-run skips the blocks
whose tracks are all in shards already, so a killed driver resumes; an encoder actor or decode
worker that dies is replaced by Ray and its work retried.

Without --ray-address, a Ray runtime is started on this machine bound to 127.0.0.1 only
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps every Ray server and connection on loopback; it also
refuses other nodes). With an address (`auto`, or HOST:PORT of a cluster started with
`ray start --head`), the run joins that cluster.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from rich.console import Console

from wav2genre_cache.data.tracks import EXCLUDED, Track
from wav2genre_cache.encoders.backbone import Backbone
from wav2genre_cache.errors import OptionError, RayEngineError
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
from wav2genre_cache.store.cache import TrackResult
from wav2genre_cache.store.parquet import ParquetShards

RAY_REQUIREMENT = "ray[data]>=2.50,<2.61"
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
TRACKS_PER_CALL = 16  # tracks per encoder call; their equal-length windows are batched together


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
            threads=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0,
            memory=actor_memory(backbone),
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
    ray, started_here = start_ray(opts.ray_address, console)
    watchdog, start = None, time.perf_counter()
    try:  # from here on the runtime is stopped, whatever ends the run (Ctrl-C included)
        if started_here and opts.ray_address is None:
            watchdog = _watch_runtime()
        blocks = _embedded_blocks(ray, todo, plan, spec, opts)
        write_blocks(store, blocks, len(tracks), summary, console, progress, start)
    finally:
        if started_here:
            ray.shutdown()
        if watchdog is not None:
            _stop_watching(watchdog)
    summary.seconds = time.perf_counter() - start
    finish_blocks(store, tracks, summary)
    console.print(
        f"Parquet shards (segments and tracks tables) kept in {store.dir}", highlight=False
    )
    return summary


def actor_memory(backbone: Backbone) -> int:
    """An encoder actor's memory: its weights twice over (loading, tuning) plus a working GiB."""
    weights = sum(p.numel() * p.element_size() for p in backbone.model.parameters())
    return 2 * weights + 1024**3


def _watch_runtime() -> subprocess.Popen | None:
    """ray_watchdog.py beside this driver: it ends the runtime's processes if the driver is
    killed before it stops them (SIGKILL, an out-of-memory kill)."""
    script = Path(__file__).with_name("ray_watchdog.py")
    try:
        return subprocess.Popen(
            [sys.executable, "-I", str(script), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the terminal stops the driver, not it
        )
    except OSError:
        return None  # a runtime that may linger after a kill beats no run at all


def _stop_watching(watchdog: subprocess.Popen) -> None:
    """Tell the watchdog the runtime was stopped; it exits without killing anything."""
    try:
        watchdog.communicate(b"done", timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        watchdog.kill()


def start_ray(address: str | None, console: Console) -> tuple:
    """Join the cluster at `address`, or start a Ray runtime on this machine, on 127.0.0.1 only.

    Returns the ray module and whether this call started the runtime (and so must stop it). A
    process that has Ray running already (a notebook, a Ray job) is used as it is.
    """
    if address is None:
        # Read when ray is imported (and by the processes it starts, through the environment):
        # a local runtime then binds and connects on loopback only.
        os.environ[LOOPBACK_ONLY] = "0"
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise OptionError(
            f"--engine ray needs Ray Data: pip install 'wav2genre-cache[ray]' "
            f"(or pip install '{RAY_REQUIREMENT}')"
        ) from None
    started = not ray.is_initialized()
    if started:
        if address is None:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False  # ray was imported before the variable
        try:
            ray.init(
                # "local": a new runtime here, never RAY_ADDRESS or a `ray start` cluster.
                address=address or "local",
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=True,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayEngineError(
                f"cannot reach the Ray cluster at {address!r} ({exc}); start one with "
                "`ray start --head` or leave out --ray-address to run on this machine"
            ) from None
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the driver writes blocks in track order
    context.enable_progress_bars = False  # our own progress line says it
    context.print_on_execution_start = False
    context.issue_detectors_config.detectors = []  # advice on memory we set on purpose
    # Ray Data warns that its progress bars are off, which we asked for; errors still raise.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
    console.print(
        f"Ray: {len(nodes)} node(s), {int(ray.cluster_resources().get('CPU', 0))} CPUs, "
        f"{int(gpus)} GPUs",
        highlight=False,
    )
    return ray, started


def _embedded_blocks(
    ray, todo: list[tuple[int, list[Track]]], plan: PrepareOptions, spec, opts: EmbedOptions
) -> Iterator[tuple[int, list[TrackResult]]]:
    """Each block of `todo`, embedded, in order: the pipeline's results gathered by the driver."""
    items = [
        {"index": i, "track": pickle.dumps(t)}
        for i, t in enumerate(t for _, b in todo for t in b)
        if t.split != EXCLUDED
    ]
    results: Iterator[tuple[int, TrackResult]] = iter(())
    if items:
        results = _run_pipeline(ray, items, plan, spec, opts)
    i = 0
    pending = next(results, None)
    for k, block in todo:
        out = []
        for t in block:
            if t.split == EXCLUDED:  # never decoded, as in the local engine
                out.append(
                    TrackResult(
                        t.track_id,
                        t.path,
                        t.label,
                        t.split,
                        t.artist,
                        "excluded",
                        "not in the chosen split",
                        source=t.source,
                    )
                )
            elif pending is not None and pending[0] == i:
                out.append(pending[1])
                pending = next(results, None)
            else:  # the pipeline keeps track order and fails rather than drop a row
                raise RayEngineError(
                    f"the Ray pipeline returned no result for {t.path}; the blocks written "
                    "so far are kept: re-run the same command to resume"
                )
            i += 1
        yield k, out


def _run_pipeline(
    ray, items: list[dict], plan: PrepareOptions, spec: EncoderSpec | None, opts: EmbedOptions
) -> Iterator[tuple[int, TrackResult]]:
    """The Ray Data pipeline: decode tasks, then encoder actors; (index, result) in order."""
    # One track per block (decode tasks run in parallel track by track), up to a bound on the
    # blocks the driver makes up front.
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 10_000))
    # One CPU per decode task; the encoder's resources differ, so Ray runs the two stages apart
    # (same resources would fuse them into one operator, decoding inside the encoder actors).
    ds = ds.map(partial(decode_task, plan=plan), num_cpus=1)
    if spec is None:  # hand-crafted features only: no model, no actors
        ds = ds.map_batches(
            partial(results_without_encoder, opts=opts),
            batch_size=TRACKS_PER_CALL,
            batch_format="numpy",
            num_cpus=1,
        )
    else:
        gpus = ray.cluster_resources().get("GPU", 0)
        on_gpu = gpus >= 1 and spec.device in ("auto", "cuda")
        actors = int(gpus) if on_gpu else max(1, int(ray.cluster_resources().get("CPU", 1)) // 8)
        ds = ds.map_batches(
            EncoderActor,
            fn_constructor_kwargs={"spec": spec, "opts": opts},
            batch_size=TRACKS_PER_CALL,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=1 if on_gpu else 0,
            num_cpus=1,
            # Also what keeps the actors' resources unlike the decode tasks' (see above).
            memory=spec.memory,
        )
    try:
        for row in ds.iter_rows():
            yield int(row["index"]), pickle.loads(row["result"])
    except ray.exceptions.RayError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        cause = next(
            (line for line in reversed(lines) if "Error" in line), lines[-1] if lines else ""
        )
        raise RayEngineError(
            f"the Ray pipeline stopped ({type(exc).__name__}: {cause.strip()}); the blocks "
            "written so far are kept: re-run the same command to resume"
        ) from exc


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
