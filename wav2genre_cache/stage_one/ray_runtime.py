"""The Ray runtime and pipeline every Ray engine shares (stage one's `embed`, the catalogue's
`predict`): a runtime started on 127.0.0.1 only (or a cluster joined), watched so that a killed
driver takes it along, and one Ray Data pipeline: CPU tasks decode, then an actor pool whose
actors load a model once and work on batches of decoded tracks, results in input order.

Without --ray-address, a Ray runtime is started on this machine bound to 127.0.0.1 only
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps every Ray server and connection on loopback; it also
refuses other nodes). With an address (`auto`, or HOST:PORT of a cluster started with
`ray start --head`), the run joins that cluster.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from wav2genre_cache.errors import OptionError, RayEngineError

RAY_REQUIREMENT = "ray[data]>=2.50,<2.61"
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_MODE = "RAY_AUTH_MODE"  # token | disabled: Ray's authentication between its processes
TRACKS_PER_CALL = 16  # tracks per actor call; their equal-length windows are batched together
ATTEMPTS = 3  # pipelines a run may start: the first, and one per pool actor that died
# The pool actors' options: Ray restarts none of them (retried_blocks runs the blocks left on a
# fresh pipeline instead). Ray Data passes each actor its DataContext and map function by
# reference (ray.put); restarting such an actor fails once those objects are lost, and Ray Core
# says so at error level for every such actor with restarts on (core_worker.cc).
NO_RESTARTS = {"max_restarts": 0, "max_task_retries": 0}


class ActorDied(Exception):
    """An actor of the pipeline's pool died (its process ended): the pipeline stopped."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ActorPool:
    """The pipeline's second stage: actors of `actor`, each built once with `kwargs`."""

    actor: type  # a class: __init__(**kwargs) loads the model, __call__(batch) -> batch
    kwargs: dict = field(default_factory=dict)
    device: str = "auto"  # auto | cuda | cpu: one GPU per actor when the cluster has GPUs
    memory: int = 2 * 1024**3  # bytes an actor is expected to hold (Ray's logical memory)


def cpu_threads() -> int:
    """The CPUs this driver may use: a CPU actor's torch threads, as the local engines use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0


def module_memory(*modules) -> int:
    """An actor's memory: its torch modules' weights twice over (loading, tuning) plus a
    working GiB."""
    weights = sum(
        p.numel() * p.element_size() for m in modules if m is not None for p in m.parameters()
    )
    return 2 * weights + 1024**3


@contextmanager
def ray_runtime(address: str | None, console: Console) -> Iterator:
    """The ray module, on a runtime this process started (stopped on leaving, Ctrl-C included;
    watched by ray_watchdog.py in case this process is killed) or on the cluster at `address`."""
    # Watching starts before Ray does: a driver killed during Ray's start-up leaves nothing.
    watchdog = watch_runtime() if address is None else None
    try:
        ray, started_here = start_ray(address, console)
    except BaseException:  # Ray failed or was interrupted while starting: what it started goes
        if watchdog is not None:
            stop_watching(watchdog, end_runtime=True)
        raise
    if watchdog is not None and not started_here:  # a runtime this process had: not ours
        stop_watching(watchdog)
        watchdog = None
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()
        if watchdog is not None:
            stop_watching(watchdog)


def watch_runtime() -> subprocess.Popen | None:
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


def stop_watching(watchdog: subprocess.Popen, end_runtime: bool = False) -> None:
    """Tell the watchdog the runtime was stopped (it exits without killing anything), or with
    end_runtime, that it must end the runtime's processes now, as if the driver had died."""
    try:
        watchdog.communicate(b"" if end_runtime else b"done", timeout=10)
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
            if AUTH_MODE not in os.environ:
                # A new local runtime takes token authentication when the mode is not chosen,
                # and says so in a warning on every run; choosing it (Ray's default, kept) is
                # what stops the warning. As Ray does then: the mode in the environment (for
                # the processes it starts) and in this process's config, read at import. The
                # token is Ray's own (~/.ray/auth_token, made once if missing).
                from ray._raylet import Config

                os.environ[AUTH_MODE] = "token"
                Config.initialize("")
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
    context.execution_options.preserve_order = True  # the driver writes blocks in input order
    context.enable_progress_bars = False  # our own progress line says it
    context.print_on_execution_start = False
    context.issue_detectors_config.detectors = []  # advice on memory we set on purpose
    if WatchPoolActors not in context.custom_execution_callback_classes:
        context.custom_execution_callback_classes.append(WatchPoolActors)
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


def pipeline_rows(
    ray,
    items: list[dict],
    decode: Callable[[dict], dict],
    then: ActorPool | Callable[[dict], dict],
    resume_hint: str,
) -> Iterator[dict]:
    """The Ray Data pipeline: `decode` tasks (one CPU each), then `then` on batches of
    TRACKS_PER_CALL decoded rows (an actor pool, or plain tasks); its rows in input order.

    An actor of the pool that died stops it with ActorDied (retried_blocks starts another); any
    other failure that Ray does not retry away ends the run as RayEngineError, with `resume_hint`.
    """
    # One track per block (decode tasks run in parallel track by track), up to a bound on the
    # blocks the driver makes up front.
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 10_000))
    # One CPU per decode task; the actors' resources differ, so Ray runs the two stages apart
    # (same resources would fuse them into one operator, decoding inside the actors).
    ds = ds.map(decode, num_cpus=1)
    if not isinstance(then, ActorPool):  # no model: plain tasks
        ds = ds.map_batches(then, batch_size=TRACKS_PER_CALL, batch_format="numpy", num_cpus=1)
    else:
        gpus = ray.cluster_resources().get("GPU", 0)
        on_gpu = gpus >= 1 and then.device in ("auto", "cuda")
        actors = int(gpus) if on_gpu else max(1, int(ray.cluster_resources().get("CPU", 1)) // 8)
        with warnings.catch_warnings():
            # Ray 2.60 takes max_restarts only among its deprecated ray_remote_args (to be
            # removed in 2.64, beyond RAY_REQUIREMENT): the options are ours, the warning not.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            ds = ds.map_batches(
                then.actor,
                fn_constructor_kwargs=then.kwargs,
                batch_size=TRACKS_PER_CALL,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_gpus=1 if on_gpu else 0,
                num_cpus=1,
                # Also what keeps the actors' resources unlike the decode tasks' (see above).
                memory=then.memory,
                **NO_RESTARTS,
            )
    try:
        yield from ds.iter_rows()
    except ray.exceptions.RayError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        if isinstance(exc, ray.exceptions.RayActorError) and not exc.actor_init_failed:
            raise ActorDied(death_reason(lines)) from exc
        cause = next(
            (line for line in reversed(lines) if "Error" in line), lines[-1] if lines else ""
        )
        raise RayEngineError(
            f"the Ray pipeline stopped ({type(exc).__name__}: {cause.strip()}); {resume_hint}"
        ) from exc


def death_reason(lines: list[str]) -> str:
    """Why a pool actor died, in a few words, from Ray's ActorDiedError message."""
    for line in lines:
        if "Worker exit detail:" in line:
            return line.split("Worker exit detail:", 1)[1].split(".")[0].strip()
    return lines[0].strip().rstrip(".") if lines else "no reason given"


class WatchPoolActors:
    """Ray Data execution callback: stops the pipeline with ActorDied once an actor of its pool
    is dead. With restarts off, Ray Data replaces no actor, and one that died between batches
    would leave the pipeline waiting for it for ever (one that died in a batch fails the
    batch's task with ActorDiedError). Reads Ray Data's pool (ray[data] 2.50-2.60)."""

    def before_execution_starts(self, executor) -> None:
        """Nothing to do before the pipeline starts."""

    def on_execution_step(self, executor) -> None:
        """Raise ActorDied if a running actor of a pool has died (read from Ray's local state)."""
        from ray.data._internal.execution.operators.actor_pool_map_operator import (
            _ACTOR_STATE_DEAD,
        )

        for op in getattr(executor, "_topology", None) or {}:
            running = getattr(getattr(op, "_actor_pool", None), "_running_actors", {})
            for actor in list(running):
                if actor._get_local_state() == _ACTOR_STATE_DEAD:
                    raise ActorDied("its process ended")

    def after_execution_succeeds(self, executor) -> None:
        """Nothing to do after the pipeline."""

    def after_execution_fails(self, executor, error: Exception) -> None:
        """Nothing to do after the pipeline."""


def retried_blocks(
    ray,
    blocks: list[list[dict]],
    decode: Callable[[dict], dict],
    then: ActorPool | Callable[[dict], dict],
    resume_hint: str,
    say: Callable[[str], None],
    actor: str = "an encoder actor",
    work: str = "embedding",
) -> Iterator[list[dict]]:
    """The pipeline's rows, block by block of `blocks` (lists of items), in order.

    A block counts as kept once the caller asks for the next one (it has written it). When an
    actor of the pool dies, the pipeline stops and a fresh one runs over the blocks not yet
    yielded, said with `say`, up to ATTEMPTS pipelines; then the run fails with `resume_hint`.
    """
    done = 0  # blocks yielded, so kept
    for attempt in range(1, ATTEMPTS + 1):
        items = [item for block in blocks[done:] for item in block]
        rows = pipeline_rows(ray, items, decode, then, resume_hint) if items else iter(())
        try:
            for block in blocks[done:]:
                got = list(itertools.islice(rows, len(block)))  # in input order
                if len(got) < len(block):  # never a short block written as if whole
                    raise RayEngineError(
                        f"the Ray pipeline ended {len(block) - len(got)} rows short of block "
                        f"{done + 1} of {len(blocks)}; {resume_hint}"
                    )
                yield got
                done += 1
            return
        except ActorDied as died:
            left = len(blocks) - done
            if attempt == ATTEMPTS:
                raise RayEngineError(
                    f"{actor} died in each of {ATTEMPTS} pipelines (the last: {died.reason}); "
                    f"{done} of {len(blocks)} blocks were written; {resume_hint}"
                ) from None
            say(
                f"{actor} died ({died.reason}); {work} the {left} blocks left "
                f"again, attempt {attempt + 1} of {ATTEMPTS}"
            )
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()
