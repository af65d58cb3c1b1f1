"""One run at a time per output: a second embed, run, train-heads, finetune or cross-validate into
it is refused."""

import os
import subprocess
import sys

import pytest
from conftest import make_label_folder, run_cli

from wav2genre_cache.cli.locks import output_lock


def hold(out) -> subprocess.Popen:
    """Another process holding the lock on `out` (the lock is per process and file)."""
    return subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from wav2genre_cache.cli.locks import "
         "output_lock\nwith output_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(60)",
         str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("command", ["embed", "run", "train-heads", "finetune", "cross-validate"])
def test_a_second_run_into_a_held_output_is_refused_in_one_line(tmp_path, command):
    data = make_label_folder(tmp_path / "data", per_label=2, seconds=2.0)
    out = tmp_path / {"embed": "c.h5", "cross-validate": "cv.json"}.get(command, "run")
    reads_a_cache = command in ("train-heads", "cross-validate")
    source = str(tmp_path / "cache.h5") if reads_a_cache else str(data)
    holder = hold(out)
    try:
        assert holder.stdout.readline().strip() == "held"
        model = () if reads_a_cache else ("--model", "random-tiny")
        refused = run_cli(command, source, "--out", str(out), *model, check=False)
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 2, refused.stderr
    said = refused.stderr.strip().splitlines()
    assert len(said) == 1 and f"is being written by another run (pid {holder.pid}:" in said[0]
    assert not out.exists()


def test_a_killed_holder_leaves_no_lock_and_the_run_goes_on(tmp_path):
    data = make_label_folder(tmp_path / "data", per_label=2, seconds=2.0)
    out = tmp_path / "deep" / "c.h5"
    holder = hold(out)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # SIGKILL: no clean-up ran; its lock file stays, its lock does not
    holder.wait()
    assert (tmp_path / "deep" / "c.h5.lock").exists()
    run_cli("embed", str(data), "--out", str(out), "--model", "random-tiny")
    assert out.is_file() and not (tmp_path / "deep" / "c.h5.lock").exists()


def test_the_lock_cleans_up_after_itself(tmp_path):
    target = tmp_path / "a" / "b" / "out.h5"
    with output_lock(target):
        assert (tmp_path / "a" / "b" / "out.h5.lock").read_text().startswith(f"pid {os.getpid()}:")
    assert not (tmp_path / "a").exists()  # the folders it made, empty again, are gone
