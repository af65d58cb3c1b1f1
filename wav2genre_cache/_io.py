"""One copy of the small file and value helpers every stage uses.

Atomic writes (a temporary name in the same folder, synced, renamed into place: a reader sees
the old file or the new one, never a part), sha256 of a file, values as JSON can hold them,
and comma-separated option lists.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PureWindowsPath


def temporary_name(path: Path, unique: bool = False) -> Path:
    """The name path is written under before its rename: `<name>.tmp` (a killed run's leftover
    is overwritten by the next), or `<name>.<pid>.tmp` where processes write one file at once."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp" if unique else f"{path.name}.tmp")


@contextmanager
def atomic_path(path: str | Path, sync: bool = True, unique: bool = False) -> Iterator[Path]:
    """A temporary path to write; on a clean exit it is synced and renamed to path, else removed."""
    path = Path(path)
    tmp = temporary_name(path, unique)
    try:
        yield tmp
        if sync:
            sync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(
    path: str | Path, write: Callable[[Path], object], sync: bool = True, unique: bool = False
) -> Path:
    """write(tmp) to a temporary file, then rename it to path: path is never left half written."""
    with atomic_path(path, sync, unique) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, sync: bool = True, unique: bool = False) -> Path:
    """text written atomically to path."""
    return atomic_write(path, lambda tmp: tmp.write_text(text), sync, unique)


def atomic_write_json(path: str | Path, value, sync: bool = True) -> Path:
    """value (made JSON-safe) written atomically to path, one key per line."""
    return atomic_write_text(path, json.dumps(jsonable(value), indent=1), sync)


def sync_file(path: Path) -> None:
    """Flush a file's data to the disk (a rename after it is then safe from power loss)."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def sync_dir(path: Path) -> None:
    """Flush a folder's entries (renames within it) to the disk, where the system allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """The file's sha256, hex; read in blocks, so a large file is never held whole."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json_object(
    path: Path, error: type[Exception], what: str, format_name: str | None = None
) -> dict:
    """A JSON object read back from a file (with "format": format_name where given), or `error`
    naming the file and what is wrong; `what` says what the file should be."""
    try:
        value = json.loads(Path(path).read_text())
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict) or (format_name and value.get("format") != format_name):
        raise error(f"{path}: not {what}")
    return value


def name_in_folder_problem(name: object) -> str | None:
    """Why a file name read from a file (a bundle's, a run's state) cannot name a plain file in
    the folder it was read from, or None if it can. Both separators count: such a file may have
    been written, or edited, on Windows."""
    if not isinstance(name, str) or name in ("", ".") or "\x00" in name:
        return "which is not a file name"
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or PureWindowsPath(name).drive:
        return "which is outside its folder"
    if len(parts) > 1:
        return "which is not a plain file name in its folder"
    return None


def jsonable(obj):
    """obj with tuples as lists and undefined floats (an AUC of a missing class) as null.

    JSON has no tuple (a head's hidden_layers) and no NaN; dicts, lists and tuples are walked.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def missing_folders(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet, deepest first (what making it creates)."""
    return [d for d in (path.parent, *path.parent.parents) if not d.exists()]


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove each folder of missing_folders' list, deepest first, while it is empty: never
    anything that holds what another run or person put there."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            break


def comma_list(value: str | None) -> tuple[str, ...]:
    """The stripped, non-empty items of a comma-separated option ('a, b,' -> ('a', 'b'))."""
    if value is None:
        return ()
    return tuple(item.strip() for item in value.split(",") if item.strip())


# Where no terminal shows a progress bar (a log file, CI), long commands print a plain line
# this often instead.
PLAIN_PROGRESS_SECONDS = 10.0


class Pace:
    """True on the first call (unless `first` is False: `seconds` after construction) and then
    at most once per `seconds` (or when forced): paces the plain progress lines printed where no
    progress bar can be drawn."""

    def __init__(self, seconds: float | None = None, first: bool = True):
        self.seconds = PLAIN_PROGRESS_SECONDS if seconds is None else seconds
        self._last: float | None = None if first else time.monotonic()

    def __call__(self, force: bool = False) -> bool:
        now = time.monotonic()
        if force or self._last is None or now - self._last >= self.seconds:
            self._last = now
            return True
        return False


# Tests only: the resume tests SIGKILL a run at each named step of writing its output
# (store/cache_writer.py and, for the Ray engine, store/parquet.py: "shard:N" before shard N,
# "finalize" after the last shard, "merge" half-way through the merged cache, "merged" once it
# is in place, its shards not yet removed).
KILL_AT = "WAV2GENRE_KILL_AT"


def kill_point(name: str) -> None:
    """SIGKILL this process here if the environment's WAV2GENRE_KILL_AT names this point."""
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
