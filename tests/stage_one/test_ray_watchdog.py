"""A driver killed with kill -9 while Ray starts takes its runtime along (issue 25, item 5).

Before the watchdog started ahead of `ray.init`, a driver killed during Ray's start-up left the
raylet's DashboardAgent and RuntimeEnvAgent running for 72 s (measured here), trying to reach
the dead GCS. One Ray start, killed as soon as the raylet runs.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import make_label_folder
from processes import (
    SESSION,
    command_line,
    descendants,
    listening_sockets,
    session_processes,
    start_times,
    still_running,
)

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is first imported
pytest.importorskip("ray", reason="Ray is an optional dependency: pip install '.[ray]'")

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


def test_a_driver_killed_while_ray_starts_leaves_no_process_and_no_listener(tmp_path):
    data = make_label_folder(tmp_path / "data", per_label=2, seconds=2.0)
    run = subprocess.Popen(
        [sys.executable, "-m", "wav2genre_cache", "embed", str(data), "--out",
         str(tmp_path / "cache.h5"), "--model", "random-tiny", "--engine", "ray"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    runtime: dict[int, int] = {}  # pid -> start time of every process below the driver
    try:
        deadline = time.time() + 300
        names: list[str] = []
        while not any("raylet" in name for name in names):
            assert run.poll() is None and time.time() < deadline, run.stderr.read()
            runtime |= start_times(descendants(run.pid))
            names = [command_line(p) for p in runtime]
            time.sleep(0.02)
        run.send_signal(signal.SIGKILL)
        run.wait()
    finally:
        run.kill()
        run.wait()
    deadline = time.time() + 10
    while still_running(runtime) and time.time() < deadline:
        time.sleep(0.2)
    left = still_running(runtime)
    assert {p: command_line(p) for p in left} == {} and listening_sockets(left) == {}
    # The agents the raylet starts (maybe after the driver's last look) are gone too: no
    # process names the dead runtime's session folder or holds a file of it open.
    session = next(m.group(0) for n in names if (m := SESSION.search(n)))
    assert session_processes(session) == []
