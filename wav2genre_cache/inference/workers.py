"""`serve`: one process, or with --workers N, N processes each with its own model on one socket.

With workers, the parent binds the socket (127.0.0.1 unless --host says otherwise) and uvicorn's supervisor
starts the workers by spawn; each inherits that one socket, so every worker listens exactly
where the parent bound and the kernel hands each connection to one of them. A worker shares
nothing with another but the bundle's files: it loads its own model (uvicorn's app factory,
told what to load through the environment, which spawn passes on) with the cores divided
between the workers. A worker ends with its parent, even one killed by SIGKILL: it watches its
parent's pid and stops itself (SIGTERM, then at once if that has not ended it in 10 s).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from wav2genre_cache.errors import BundleError
from wav2genre_cache.inference.server import ServeOptions, create_app, load_predictor

ENV = "WAV2GENRE_SERVE_WORKER"
FACTORY = "wav2genre_cache.inference.workers:worker_app"
PARENT_POLL_SECONDS = 0.5
# A stop (Ctrl-C, SIGTERM, a dead parent) lets requests in progress end for this long, then
# cancels the rest: a queue of uploads must not keep a stopping server for minutes.
STOP_GRACE_SECONDS = 5
STARTUP_FAILURE = 3  # uvicorn.config.STARTUP_FAILURE: the supervisor stops instead of restarting
log = logging.getLogger("uvicorn.error")


def worker_threads(workers: int) -> int:
    """The model threads each of `workers` processes takes: the cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // workers)


def worker_app():
    """uvicorn's app factory, called in each worker: its own predictor and application."""
    settings = json.loads(os.environ[ENV])
    exit_with_parent(settings["parent"])
    options = ServeOptions(**settings["options"])
    try:
        predictor = load_predictor(settings["bundle"], options, worker_threads(options.workers))
    except Exception as exc:  # one line, and no restart: the next worker would fail alike
        log.error("worker %d could not load %s: %s", os.getpid(), settings["bundle"], exc)
        sys.exit(STARTUP_FAILURE)
    return create_app(predictor, options)


def exit_with_parent(parent: int) -> threading.Thread:
    """Stop this process when `parent` is no longer its parent (it died, even by SIGKILL)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful stop
        time.sleep(2 * STOP_GRACE_SECONDS)
        os._exit(1)  # still here: a request the graceful stop waits on will not end

    thread = threading.Thread(target=watch, name="wav2genre-parent-watch", daemon=True)
    thread.start()
    return thread


def serve(bundle: str | Path, options: ServeOptions = ServeOptions()) -> None:
    """Load the bundle and serve the page and API with uvicorn, in options.workers processes."""
    import uvicorn

    if options.workers > 1:
        return serve_workers(bundle, options)
    app = create_app(load_predictor(bundle, options), options)
    uvicorn.run(
        app,
        host=options.host,
        port=options.port,
        log_level="info",
        timeout_graceful_shutdown=STOP_GRACE_SECONDS,
    )


def serve_workers(bundle: str | Path, options: ServeOptions) -> None:
    """Serve with options.workers processes; Ctrl-C stops them all and raises KeyboardInterrupt."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    class Supervisor(Multiprocess):
        """uvicorn's supervisor, remembering whether Ctrl-C stopped it (for exit 130)."""

        interrupted = False

        def handle_int(self) -> None:
            self.interrupted = True
            super().handle_int()

    _check_bundle(bundle, options.runtime)  # one clear error here, before any worker starts
    settings = {"bundle": str(bundle), "parent": os.getpid(), "options": vars(options)}
    os.environ[ENV] = json.dumps(settings)
    config = uvicorn.Config(
        FACTORY,
        factory=True,
        host=options.host,
        port=options.port,
        workers=options.workers,
        log_level="info",
        timeout_graceful_shutdown=STOP_GRACE_SECONDS,
    )
    supervisor = Supervisor(config, sockets=[config.bind_socket()])
    supervisor.run()
    if supervisor.interrupted:
        raise KeyboardInterrupt
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise BundleError(f"{bundle}: a worker could not load it (its reason is logged above)")


def _check_bundle(bundle: str | Path, runtime: str) -> None:
    """Read the bundle's manifest and head (not its backbone): what every worker will load."""
    if runtime == "onnx":
        from wav2genre_cache.inference.onnx_runtime import read_manifest

        read_manifest(bundle)
    else:
        from wav2genre_cache.store.bundles import load_bundle

        load_bundle(bundle)
