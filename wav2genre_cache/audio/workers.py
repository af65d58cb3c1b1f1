"""The decode worker processes: started early, fed in order, replaced when one dies, closed once."""

from __future__ import annotations

import gc
import importlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from itertools import islice

PARENT_POLL_SECONDS = 0.5
STOP_SECONDS = 1.0  # on an interrupt or error, how long the workers may finish their item
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class DecodeWorkers:
    """A pool of decode processes, started now, and its one owner: `close` (or `with`) ends it.

    The processes start importing the decoders at once, so a caller that starts them before
    loading a model has them ready by the first track. `map` replaces the pool when a worker
    dies; whichever pool is current is the one `close` shuts down.
    """

    def __init__(self, count: int, warm: str = "wav2genre_cache.audio.decode"):
        self.count = count
        self._pool = None
        try:
            with _interrupt_deferred():
                self._pool = _process_pool(count) if count > 0 else None
                for _ in range(count):
                    self._pool.submit(warm_up, warm)
        except BaseException:  # Ctrl-C while they start: no `with` will close them
            self.close(at_once=True)
            raise

    def __enter__(self) -> DecodeWorkers:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(at_once=exc_type is not None)

    def close(self, at_once: bool = False) -> None:
        """Stop the processes, dropping work not started; safe to call twice.

        at_once (an interrupt or an error ends the run): the workers get STOP_SECONDS to finish
        their item, then are killed, so no exit waits on a decode nobody wants.
        """
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if at_once:
            _stop_now(pool)
        else:
            pool.shutdown(wait=True, cancel_futures=True)

    def map(
        self, fn: Callable, items: Iterable, window: int, on_crash: Callable | None = None
    ) -> Iterator:
        """map(fn, items) in order, with at most `window` results in flight.

        The bound keeps memory flat on datasets of any size: decoded audio waits for the model
        in a short queue, never in a list of the whole dataset. If a worker dies (a decoder
        crash, the kernel's OOM killer), the pool is rebuilt, the item in question is retried
        alone, and if it kills a worker again `on_crash(item)` stands in for its result: one
        file never ends a run. Without processes (count 0) it maps in this process.
        """
        if self._pool is None:
            yield from map(fn, items)
            return
        it = iter(items)
        pending = deque((x, self._submit(fn, x)) for x in islice(it, window))
        while pending:
            item, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                if on_crash is None:
                    raise
                self._replace_pool()
                try:
                    result = self._submit(fn, item).result()
                except BrokenProcessPool as exc:
                    if getattr(exc, "start_failed", False):  # twice: the machine, not this file
                        raise exc.__cause__ from None
                    result = on_crash(item)
                    self._replace_pool()
                pending = deque((x, self._submit(fn, x)) for x, _ in pending)
            for x in islice(it, 1):
                pending.append((x, self._submit(fn, x)))
            yield result

    def _replace_pool(self) -> None:
        # Kill the broken pool's processes first: its manager thread terminates the workers it
        # knows of and then joins them all, and a worker started by a submission racing the
        # breakage (after the terminate, before the join) would be joined forever, idle (a
        # hang seen under load, Python 3.11). Only this thread submits, so none is starting now.
        for process in list((getattr(self._pool, "_processes", None) or {}).values()):
            process.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        # The broken pool's pipes and processes are closed by finalizers; run them now, before the
        # new pool takes file descriptors, not at some later collection in the middle of its work.
        gc.collect()
        with _interrupt_deferred():
            self._pool = _process_pool(self.count)

    def _submit(self, fn: Callable, item) -> Future:
        """pool.submit, except that a pool that fails meanwhile gives a failed future, not an error.

        A worker can die between two submissions; `map` then rebuilds the pool when it reaches
        this item, as for the item that was running. Starting a worker can also fail after a
        crash: CI once saw "bad value(s) in fds_to_keep" (a pipe handed to the new worker was
        closed under it, as the breaking pool's manager thread closes its queues), and a
        submission that races the breakage can see "cannot schedule new futures after shutdown"
        before the pool says it is broken. Each is treated as a broken pool: rebuilt, retried;
        if the new pool cannot start a worker either, the error is the machine's (too many open
        files, no memory), not a file's, and it ends the run (which resumes).
        `submit` itself never runs `fn` or pickles its arguments, so these errors can only come
        from the pool's own plumbing.
        """
        try:
            with _interrupt_deferred():  # a Ctrl-C inside submit could orphan a new worker
                return self._pool.submit(fn, item)
        except (BrokenProcessPool, OSError, RuntimeError, ValueError) as exc:
            broken = exc
            if not isinstance(exc, BrokenProcessPool):
                broken = BrokenProcessPool(f"could not start a decode worker: {exc}")
                broken.__cause__ = exc
                broken.start_failed = True  # a pool that could not start one, not one that died
            failed: Future = Future()
            failed.set_exception(broken)
            return failed


def warm_up(module: str = "wav2genre_cache.audio.decode") -> bool:
    """A worker's first task: import the per-track job's module (decoders, augmentations)."""
    importlib.import_module(module)
    return True


def _process_pool(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: forking a process that has started torch's thread pools can deadlock.
    # Each worker exits when this process dies (kill -9 included), so no run leaves orphans; with
    # spawn its parent pid is ours. The workers are spawned by the thread that submits to the pool
    # (ProcessPoolExecutor._adjust_process_count, Python 3.11 to 3.13), here the one creating it:
    # the kernel's parent-death signal, tied to that thread, is armed only for the main thread.
    return ProcessPoolExecutor(
        workers,
        mp_context=mp.get_context("spawn"),
        initializer=start_worker,
        initargs=(os.getpid(), threading.current_thread() is threading.main_thread()),
    )


def start_worker(parent_pid: int, death_signal: bool = True) -> None:
    """Worker initializer: ignore Ctrl-C (the parent decides and stops the workers), and end
    this process when its parent dies (watch_parent)."""
    # A terminal's Ctrl-C reaches the whole process group: a worker that raised
    # KeyboardInterrupt mid-task printed its traceback, and one interrupted while sending its
    # result could corrupt the result pipe, so that the pool never told the others to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # It was born with SIGINT blocked (_interrupt_deferred): one sent meanwhile is now dropped.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    watch_parent(parent_pid, death_signal)


def _stop_now(pool: ProcessPoolExecutor) -> None:
    """Shut `pool` down without waiting on decodes: its workers finish their item within
    STOP_SECONDS or are killed; none is left for multiprocessing's exit to wait on."""
    # shutdown(wait=False) lets go of these, so they are taken first (Python 3.11 to 3.13).
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    results = getattr(pool, "_result_queue", None)
    with _interrupt_deferred():  # a second Ctrl-C must not leave the pool half stopped
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + STOP_SECONDS
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(STOP_SECONDS)
        # The pool's thread ends once it sees its workers gone, unless a worker killed while
        # sending its result left it reading the rest of that message: closing our end of the
        # result pipe, its last writer, ends that read. Python's exit joins this thread.
        if manager is not None:
            manager.join(STOP_SECONDS)
            if manager.is_alive() and results is not None:
                results._writer.close()
                manager.join(STOP_SECONDS)


@contextmanager
def _interrupt_deferred() -> Iterator[None]:
    """Hold a Ctrl-C until the block is done, then raise it: the pool's bookkeeping (a worker
    started but not yet recorded, a lock held) is never left half done.

    SIGINT is also blocked in this thread, so that a worker spawned here starts with it blocked
    and cannot take it before its initializer ignores it. Main thread only (where Python runs
    signal handlers); elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: held.append(number))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGINT, previous)
        if held and callable(previous):
            previous(signal.SIGINT, None)  # the default handler raises KeyboardInterrupt


def watch_parent(parent_pid: int, death_signal: bool = True) -> None:
    """Worker initializer: end this process when `parent_pid`, the run that started it, dies.

    A decode worker otherwise outlives a killed run for good: it waits on queues whose pipes the
    other workers keep open, and so keeps multiprocessing's resource tracker alive too. On Linux
    the kernel kills the worker at once (PR_SET_PDEATHSIG); everywhere a daemon thread checks
    every PARENT_POLL_SECONDS whether the parent is still there. death_signal must be False
    unless the thread that spawns the workers lives as long as the process (the main thread):
    the kernel sends the signal when that *thread* ends, even while the process goes on.
    """
    if death_signal and sys.platform.startswith("linux"):
        _set_parent_death_signal(9)  # SIGKILL: a decode worker has nothing to clean up
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(
        target=_exit_with_parent, args=(parent_pid,), name="watch-parent", daemon=True
    ).start()


def _set_parent_death_signal(signal_number: int) -> None:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal_number), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl here: the polling thread still covers it
        pass


def _exit_with_parent(parent_pid: int) -> None:
    # A dead parent's children are re-parented (to init or a subreaper): the parent pid changes.
    # os._exit, not sys.exit: the main thread may be blocked on a pipe nobody will ever read.
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)
