"""Kill -9 at every step of writing the cache (local engine), then the same command: exit 0 and
the cache an uninterrupted run writes, bit for bit.

The kill is a real SIGKILL, sent by the run itself at the named step (WAV2GENRE_KILL_AT, see
_io.kill_point): the steps around the merge last milliseconds, too short to hit from outside.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_label_folder, run_cli_process
from test_embed import assert_same_cache

from wav2genre_cache._io import KILL_AT

# 40 tracks in blocks of 16: shards 0, 1 and 2.
BLOCKS = 3


def _args(data: Path, out: Path) -> list[str]:
    return [
        "embed", str(data), "--out", str(out), "--model", "random-tiny",
        "--segment-seconds", "1", "--workers", "0",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> tuple[Path, Path]:
    """The dataset and the cache of an uninterrupted run (a process of its own, as the others)."""
    root = tmp_path_factory.mktemp("kill_points")
    data = make_label_folder(root / "data", per_label=20, seconds=2.0)
    run_cli_process(*_args(data, root / "whole.h5"))
    return data, root / "whole.h5"


def _shards(out: Path) -> list[Path]:
    return sorted(Path(f"{out}.partial").glob("shard-*.h5"))


# What the disk holds after each kill: (shards written, merged cache in place, half-merged file).
POINTS = {
    "shard:0": (0, False, False),  # before the first shard
    "shard:1": (1, False, False),  # between shards
    "finalize": (BLOCKS, False, False),  # after the last shard, before the merge
    "merge": (BLOCKS, False, True),  # during the merge
    "merged": (BLOCKS, True, False),  # after the merge, its shards not yet removed
}


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_each_step_resumes_to_the_same_cache(whole, tmp_path, point):
    data, reference = whole
    out = tmp_path / "cache.h5"
    killed = subprocess.run(
        [sys.executable, "-m", "wav2genre_cache", *_args(data, out)],
        env={**os.environ, KILL_AT: point},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    shards, merged, half = POINTS[point]
    assert len(_shards(out)) == shards
    assert out.exists() == merged
    assert Path(f"{out}.tmp").exists() == half

    resumed = run_cli_process(*_args(data, out))
    assert resumed.returncode == 0
    assert "Traceback" not in resumed.stderr and "error" not in resumed.stderr.lower()
    assert not Path(f"{out}.partial").exists() and not Path(f"{out}.tmp").exists()
    assert_same_cache(out, reference)
