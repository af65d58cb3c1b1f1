"""Ctrl-C (SIGINT to the process group, as a terminal sends it) ends embed, run, finetune and
predict within EXIT_SECONDS: exit 130, one line saying what is kept, no worker's traceback."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPETITIONS = 20  # the local engine's interrupted runs (issue 25 asked for 20)
RAY_REPETITIONS = 1  # a Ray runtime takes seconds to start: one run
EXIT_SECONDS = 10.0  # SIGINT to exit: measured 1.1 s median (README); room for a loaded CI box
MAX_DELAY = 1.5  # the SIGINT comes 0 to MAX_DELAY s after the first progress line
START_SECONDS = 300  # a loaded machine imports and loads slowly


@dataclass
class Interrupted:
    """An interrupted command: its exit status, seconds from SIGINT to exit, stderr after it."""

    returncode: int | None
    seconds: float
    after: list[str]  # stderr lines from the first progress line on (that line excluded)


def interrupt(
    args: list[str], progress: str, delay: float, started_by: str | None = None
) -> Interrupted:
    """Start `wav2genre args`, SIGINT its process group `delay` s after the first stderr line
    starting with `progress` (matching the regular expression `started_by`, where given), and
    wait (up to 60 s) for it to exit."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "wav2genre_cache", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        start_new_session=True,  # its own group, as a terminal's foreground job has
        # ... and Ctrl-C's default action: a test run started in the background (CI, `make test
        # &`) ignores SIGINT, and a child inherits that, so it would never be interrupted.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if re.match(started_by, line) if started_by else line.startswith(progress):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + START_SECONDS
        while not started.wait(0.1) and proc.poll() is None and time.monotonic() < deadline:
            pass
        if not started.is_set():
            reader.join(10)
            pytest.fail(f"no {progress!r} line; stderr:\n" + "\n".join(lines))
        time.sleep(delay)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            returncode = proc.wait(60)
        except subprocess.TimeoutExpired:
            returncode = None  # hung: killed below, and the assertions say so
        seconds = time.monotonic() - sent
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
        except ProcessLookupError:
            pass
        proc.wait()
        reader.join(10)
    first = next(i for i, line in enumerate(lines) if line.startswith(progress))
    return Interrupted(returncode, seconds, lines[first + 1 :])


def assert_interrupted(run: Interrupted, progress: str) -> str:
    """Exit 130 within EXIT_SECONDS, no traceback, and one 'interrupted' line; that line."""
    said = "\n".join(run.after)
    assert run.returncode == 130, f"exit {run.returncode} after {run.seconds:.1f} s:\n{said}"
    assert run.seconds < EXIT_SECONDS, f"{run.seconds:.1f} s to exit:\n{said}"
    assert "Traceback" not in said, said
    (message,) = [line for line in run.after if line.startswith("interrupted")]
    # Besides the message, only progress: its plain lines, and its bar drawn once as it stops.
    bar = progress.rstrip(":")
    assert all(line.startswith((bar, "interrupted")) for line in run.after), said
    return message


def embed_args(data: Path, out: Path, *extra: str) -> list[str]:
    """embed of the dev clips with the untrained tiny model."""
    return ["embed", str(data), "--out", str(out), "--model", "random-tiny", *extra]


def test_ctrl_c_ends_embed_at_once_and_the_same_command_resumes(dev_clips, tmp_path):
    out = tmp_path / "cache.h5"
    run = interrupt(embed_args(dev_clips, out, "--workers", "2"), "embed:", MAX_DELAY / 2)
    message = assert_interrupted(run, "embed:")
    assert "run the same command to resume" in message or "nothing was kept" in message
    resumed = subprocess.run(
        [sys.executable, "-m", "wav2genre_cache", *embed_args(dev_clips, out, "--workers", "2")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=START_SECONDS,
    )
    assert resumed.returncode == 0, resumed.stderr
    if "run the same command to resume" in message:
        kept = int(message.split("keeps the ")[1].split()[0])
        assert f"; {kept} were already done" in resumed.stderr
    assert out.is_file() and not Path(f"{out}.partial").exists()


@pytest.mark.slow
def test_ctrl_c_at_random_moments_of_embed_always_ends_it_within_seconds(dev_clips, tmp_path):
    rng = random.Random(25)
    times = []
    for k in range(REPETITIONS):
        out = tmp_path / f"cache-{k}.h5"
        workers = str(1 + k % 2)  # one worker (the reported hang) and two
        args = embed_args(dev_clips, out, "--workers", workers)
        run = interrupt(args, "embed:", rng.uniform(0, MAX_DELAY))
        assert_interrupted(run, "embed:")
        times.append(run.seconds)
        shutil.rmtree(tmp_path / f"cache-{k}.h5.partial", ignore_errors=True)
    print(
        f"{REPETITIONS} interrupted embeds: seconds to exit min {min(times):.2f}, "
        f"median {statistics.median(times):.2f}, max {max(times):.2f}"
    )


@pytest.mark.slow
def test_ctrl_c_ends_run_within_seconds(dev_clips, tmp_path):
    args = ["run", str(dev_clips), "--out", str(tmp_path / "run"), "--model", "random-tiny"]
    # After the first shard is kept (embed's lines move track by track between shards).
    kept = r"embed: \d+/\d+ tracks \([1-9]"
    run = interrupt([*args, "--workers", "1"], "embed:", MAX_DELAY / 3, started_by=kept)
    assert "run the same command to resume" in assert_interrupted(run, "embed:")


@pytest.mark.slow
def test_ctrl_c_ends_embed_on_ray(dev_clips, tmp_path):
    pytest.importorskip("ray")
    for k in range(RAY_REPETITIONS):
        out = tmp_path / f"ray-{k}.h5"
        run = interrupt(embed_args(dev_clips, out, "--engine", "ray"), "embed:", MAX_DELAY / 3)
        assert_interrupted(run, "embed:")


@pytest.mark.slow
def test_ctrl_c_ends_finetune_and_keeps_its_checkpoint(dev_clips, tmp_path):
    out = tmp_path / "tuned"
    args = [
        "finetune", str(dev_clips), "--out", str(out), "--model", "random-tiny",
        "--segment-seconds", "4", "--unfreeze", "all", "--epochs", "50", "--batch-size", "2",
        "--checkpoint-every", "1", "--workers", "1", "--augment", "pitch", "--probe-epochs", "0",
    ]  # fmt: skip
    run = interrupt(args, "fine-tune:", MAX_DELAY / 3)
    message = assert_interrupted(run, "fine-tune:")
    assert "run the same command to resume" in message
    assert (out / "finetune" / "latest.json").is_file()
    assert not any((out / "finetune" / "checkpoints").glob("*.tmp"))


@pytest.mark.slow
def test_ctrl_c_ends_predict_and_keeps_its_rows(dev_bundle, dev_clips, tmp_path):
    rows = tmp_path / "labels.csv"
    args = ["predict", str(dev_clips), "--bundle", str(dev_bundle), "--output", str(rows)]
    message = assert_interrupted(interrupt(args, "predict:", MAX_DELAY / 3), "predict:")
    assert f"{rows} keeps its" in message and "--resume" in message
    kept = int(message.split("keeps its ")[1].split()[0])
    assert len(rows.read_text().splitlines()) in (kept + 1, kept + 2)  # header; a row in flight
