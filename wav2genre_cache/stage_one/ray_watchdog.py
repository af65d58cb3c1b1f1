"""Ends the local Ray runtime's processes when the driver that started it dies without stopping it.

Run as a script beside a driver (`python -I ray_watchdog.py DRIVER_PID`), never imported: it
needs nothing of the package. Killed with SIGKILL, a driver cannot stop its runtime. Ray's
raylet and GCS die with it, but the raylet's agents (DashboardAgent, RuntimeEnvAgent) try for
60 s to report to the dead GCS before they exit, one of them listening on a loopback port all
that time. So the driver starts this before `ray.init` (a kill during Ray's start-up is covered
too), and while the driver lives it notes the driver's Ray processes every INTERVAL seconds and
the session folder they name (/tmp/ray/session_...). When the pipe from the driver closes
without the word "done" (the driver died), it kills those processes still running, each checked
by its start time so that a reused pid is never touched, and then every process that holds a
file of that session open or names it (an agent the raylet started after the last note, whose
parent is gone by then). Other Ray runtimes on the machine have other sessions and are left
alone. Linux only (/proc); elsewhere it waits for the driver and does nothing.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

INTERVAL = 0.2  # seconds between two notes of the driver's processes
# Passes over /proc for the session's processes once the driver died, SWEEP_PAUSE s apart (a
# process may be starting as one runs): at least QUIET_SWEEPS, and on until that many in a row
# found none, MAX_SWEEPS at most (a fixed 3 passes once left a pool actor alive on a loaded box).
QUIET_SWEEPS = 3
MAX_SWEEPS = 30
SWEEP_PAUSE = 0.3
SESSION = re.compile(rb"(/[^\s\0=,'\"]*/session_\d{4}-\d\d-\d\d_[\d-]+_\d+_\d+)")


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a running process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _descendants(pid: int) -> dict[int, int]:
    """Every Ray process below pid (its command names Ray: other children of a driver, a
    notebook's say, are left alone): pid -> its start time."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _stat(int(entry.name))
        if stat:
            children.setdefault(stat[0], []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            stat = _stat(child)
            if stat:
                todo.append(child)
                if b"ray" in _cmdline(child):
                    found[child] = stat[1]
    return found


def _in_session(pid: int, sessions: set[bytes]) -> bool:
    """Whether a process names one of the sessions or has a file of it open (its logs)."""
    if any(s in _cmdline(pid) for s in sessions):
        return True
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.fsencode(os.readlink(fd))
        except OSError:
            continue
        if any(target.startswith(s + b"/") for s in sessions):
            return True
    return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def end_runtime(seen: dict[int, int], sessions: set[bytes]) -> None:
    """Kill the noted processes still running (same start time), then the session's others."""
    me = os.getpid()
    for pid, started in seen.items():
        stat = _stat(pid)
        if pid != me and stat and stat[1] == started:
            _kill(pid)
    quiet = 0
    for sweep in range(MAX_SWEEPS if sessions else 0):
        if sweep:
            time.sleep(SWEEP_PAUSE)
        found = [int(e.name) for e in Path("/proc").glob("[0-9]*") if int(e.name) != me]
        found = [pid for pid in found if _in_session(pid, sessions)]
        for pid in found:
            _kill(pid)
        quiet = 0 if found else quiet + 1
        if quiet == QUIET_SWEEPS:
            break


def main(driver: int) -> None:
    """Note the driver's processes until its pipe (stdin) closes; unless told "done", end them."""
    seen: dict[int, int] = {}
    sessions: set[bytes] = set()
    said: list[bytes] = []
    reader = threading.Thread(target=lambda: said.append(sys.stdin.buffer.read()), daemon=True)
    reader.start()
    while reader.is_alive():
        if Path("/proc").is_dir():
            for pid, started in _descendants(driver).items():
                if pid not in seen:
                    seen[pid] = started
                    sessions.update(SESSION.findall(_cmdline(pid)))
        reader.join(INTERVAL)
    if b"done" not in b"".join(said):  # else the driver stopped its runtime itself
        end_runtime(seen, sessions)


if __name__ == "__main__":
    main(int(sys.argv[1]))
