"""Kill -9 of an `embed --engine ray` driver at every step of writing the cache, then the same
command: exit 0 and the cache an uninterrupted Ray run writes, bit for bit (issue 25), and no
process of the killed driver's Ray runtime left behind.

As for the local engine (test_kill_points.py), the kill is a real SIGKILL that the driver sends
itself at the named step (WAV2GENRE_KILL_AT, see _io.kill_point), here in store/parquet.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_label_folder, run_cli_process
from processes import (
    SESSION,
    command_line,
    descendants,
    listening_sockets,
    ray_lines,
    session_processes,
    start_times,
    still_running,
)
from test_embed import assert_same_cache

from wav2genre_cache._io import KILL_AT

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is first imported
pytest.importorskip("ray", reason="Ray is an optional dependency: pip install '.[ray]'")

# One worker runs every Ray test, one after another (two runtimes at once crowd two cores).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

BLOCKS = 2  # 18 tracks in blocks of 16: shards 0 and 1


def _args(data: Path, out: Path) -> list[str]:
    return [
        "embed", str(data), "--out", str(out), "--model", "random-tiny",
        "--segment-seconds", "1", "--engine", "ray",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> tuple[Path, Path]:
    """The dataset and the cache of an uninterrupted Ray run."""
    root = tmp_path_factory.mktemp("ray_kill_points")
    data = make_label_folder(root / "data", per_label=9, seconds=2.0)
    whole = run_cli_process(*_args(data, root / "whole.h5"))
    assert ray_lines(whole.stderr) == [], whole.stderr  # no warning of Ray's own
    return data, root / "whole.h5"


# What the disk holds after each kill: (blocks written, merged cache in place, half-merged
# file, Ray runtime running at the kill). The Parquet shards stay after the merge.
POINTS = {
    "shard:0": (0, False, False, True),  # before the first shard
    "shard:1": (1, False, False, True),  # between shards
    "finalize": (BLOCKS, False, False, False),  # after the last shard, before the merge
    "merge": (BLOCKS, False, True, False),  # during the merge
    "merged": (BLOCKS, True, False, False),  # after the merge
}


def _killed_run(data: Path, out: Path, point: str) -> tuple[dict[int, int], set[str]]:
    """Run the command to its kill at `point`: every process below the driver (pid -> start
    time) and their command lines, watched until it died."""
    run = subprocess.Popen(
        [sys.executable, "-m", "wav2genre_cache", *_args(data, out)],
        env={**os.environ, KILL_AT: point},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    runtime: dict[int, int] = {}
    names: set[str] = set()
    try:
        deadline = time.time() + 300
        while run.poll() is None:
            assert time.time() < deadline, "no kill within 300 s"
            seen = start_times(descendants(run.pid))
            names |= {command_line(p) for p in seen}  # a Ray worker renames itself per task
            runtime |= seen
            time.sleep(0.05)
        assert run.returncode == -signal.SIGKILL, run.stderr.read()
    finally:
        run.kill()
        run.wait()
    return runtime, names


@pytest.mark.parametrize("point", POINTS)
def test_a_killed_ray_driver_resumes_to_the_same_cache_and_leaves_no_ray_process(
    whole, tmp_path, point
):
    data, reference = whole
    out = tmp_path / "cache.h5"
    runtime, names = _killed_run(data, out, point)
    blocks, merged, half, ray_running = POINTS[point]
    # The runtime the driver started ends with it, within 10 s, none of it listening.
    deadline = time.time() + 10
    while still_running(runtime) and time.time() < deadline:
        time.sleep(0.2)
    left = still_running(runtime)
    assert {p: command_line(p) for p in left} == {} and listening_sockets(left) == {}
    sessions = {m.group(0) for n in names if (m := SESSION.search(n))}
    assert len(sessions) == 1  # one runtime was started, whatever the point
    assert any("raylet" in n for n in names)
    assert session_processes(sessions.pop()) == []  # the raylet's agents included
    if ray_running:  # a worker of this run was killed mid-run, not ended by ray.shutdown
        assert any("EncoderActor" in n or "decode_task" in n for n in names)
    shards = Path(f"{out}.shards")
    assert len(list(shards.glob("tracks-*.parquet"))) == blocks
    assert out.exists() == merged
    assert Path(f"{out}.tmp").exists() == half

    resumed = run_cli_process(*_args(data, out))
    assert "Traceback" not in resumed.stderr and "error" not in resumed.stderr.lower()
    assert ray_lines(resumed.stderr) == []  # no token-authentication warning on a resume either
    if blocks == BLOCKS:  # nothing left to embed: the re-run merges without starting Ray
        assert "Ray:" not in resumed.stderr
    assert not Path(f"{out}.tmp").exists()
    assert_same_cache(out, reference)
