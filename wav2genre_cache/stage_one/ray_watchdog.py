"""Ends the local Ray runtime's processes when the driver that started it dies without stopping it.

Run as a script beside a driver (`python -I ray_watchdog.py DRIVER_PID`), never imported: it
needs nothing of the package. Killed with SIGKILL, a driver cannot stop its runtime. Ray's
raylet and GCS die with it, but the raylet's agents (DashboardAgent, RuntimeEnvAgent) try for
60 s to report to the dead GCS before they exit, one of them listening on a loopback port all
that time. So while the driver lives, this notes its processes every half second; when the
pipe from the driver closes without the word "done" (the driver died), it kills those of them
still running (Ray's only), each checked by its start time, so a reused pid is never touched. Linux
only (/proc); elsewhere it waits for the driver and does nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

INTERVAL = 0.5  # seconds between two notes of the driver's processes


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a running process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def _is_ray(pid: int) -> bool:
    """A Ray process (`ray::...`, raylet, gcs_server, Ray's Python helpers): its command names
    Ray. Other children of a driver (a notebook's, say) are left alone."""
    try:
        return b"ray" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _descendants(pid: int) -> dict[int, int]:
    """Every Ray process below pid: pid -> its start time."""
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
                if _is_ray(child):
                    found[child] = stat[1]
    return found


def main(driver: int) -> None:
    """Note the driver's processes until its pipe (stdin) closes; unless told "done", end them."""
    seen: dict[int, int] = {}
    said: list[bytes] = []
    reader = threading.Thread(target=lambda: said.append(sys.stdin.buffer.read()), daemon=True)
    reader.start()
    while reader.is_alive():
        if Path("/proc").is_dir():
            seen.update(_descendants(driver))
        reader.join(INTERVAL)
    if b"done" in b"".join(said):
        return  # the driver stopped its runtime itself
    me = os.getpid()
    for pid, started in seen.items():
        stat = _stat(pid)
        if pid != me and stat and stat[1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    main(int(sys.argv[1]))
