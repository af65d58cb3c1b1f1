"""The process tree below a pid, read from /proc, and a Ray driver's own log lines: what the Ray
tests and benchmarks watch."""

from __future__ import annotations

import os
import re
from pathlib import Path


def descendants(pid: int) -> set[int]:
    """Every process below `pid`: the Ray runtime a driver started is all of it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def start_times(pids: set[int]) -> dict[int, int]:
    """pid -> start time (clock ticks after boot) of each that runs: a pid reused by another
    process later has another start time."""
    found = {}
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] != "Z":  # a zombie has ended; only its parent's wait is missing
            found[pid] = int(fields[19])
    return found


def still_running(started: dict[int, int]) -> set[int]:
    """Those of `started` (pid -> start time) that still run, the same processes."""
    now = start_times(set(started))
    return {pid for pid, t in started.items() if now.get(pid) == t}


def listening_sockets(pids: set[int]) -> dict[int, int]:
    """The TCP sockets these processes listen on: pid -> how many."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        listening |= {int(f[9]) for f in map(str.split, lines) if f[3] == "0A"}
    found: dict[int, int] = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = fd.readlink().name
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in listening:
                found[pid] = found.get(pid, 0) + 1
    return found


def command_line(pid: int) -> str:
    """A process's command line, its arguments joined by spaces ("" once it has ended)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# A Ray runtime's session folder, as its processes name it on their command lines.
SESSION = re.compile(r"/\S*?/session_\d{4}-\d\d-\d\d_[\d-]+_\d+_\d+")


def all_pids() -> list[int]:
    """Every process of this machine."""
    return [int(e.name) for e in Path("/proc").glob("[0-9]*")]


def holds(pid: int, folder: str) -> bool:
    """Whether a process has a file under `folder` open."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd).startswith(folder + "/"):
                return True
        except OSError:
            continue
    return False


def session_processes(session: str) -> list[int]:
    """The processes that name a Ray session folder or hold a file of it open: those a
    runtime's watchdog must have ended, the agents the raylet started included."""
    return [p for p in all_pids() if session in command_line(p) or holds(p, session)]


# A Ray log line: "2026-... WARNING file.py:85 -- ..." or "[2026-... E 123 123] file.cc:2465: ...".
RAY_LINE = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T][\d:,.]+.*?\b\w+\.(py|cc):\d+")


def ray_lines(stderr: str) -> list[str]:
    """Ray's own log lines on a driver's stderr: a successful run has none. (Ray Data's actor
    pools pass each actor object references; with restarts on, Ray Core logged an error-level
    line about it, which the engines' pools, restarts off, no longer cause.)"""
    return [
        line
        for line in stderr.splitlines()
        if RAY_LINE.match(line) or "Token authentication" in line
    ]
