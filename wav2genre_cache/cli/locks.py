"""The lock a command holds on its output while it writes it: two runs into one `--out` would
overwrite each other's shards and files."""

from __future__ import annotations

import fcntl  # POSIX; the project runs on Linux and macOS
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wav2genre_cache._io import missing_folders, remove_empty_folders
from wav2genre_cache.errors import OutputBusy


@contextmanager
def output_lock(out: str | Path) -> Iterator[None]:
    """Hold an advisory lock on the output `out` (the file `<out>.lock` beside it) while a run
    writes it; a second run asking for it is refused at once, naming the holder. The lock goes
    with the process that holds it, a killed one included (flock); its file is removed after."""
    lock = Path(f"{Path(out)}.lock")
    made = missing_folders(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 400, 0).decode(errors="replace").strip() or "another process"
            raise OutputBusy(
                f"{out} is being written by another run ({holder}); wait for it to end, or "
                "choose another output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv[:3])[:200]}".encode(), 0)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # still held: no other run can hold this file
    finally:
        os.close(fd)
        remove_empty_folders(made)
