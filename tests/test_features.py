import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tone

from wav2genre_cache.features import (
    HANDCRAFTED_DIM,
    PreparePlan,
    handcrafted_features,
    prepare_track,
)


def test_handcrafted_vector_has_every_block_and_tells_sounds_apart():
    low = handcrafted_features(tone(5.0, freq=150))
    high = handcrafted_features(tone(5.0, freq=3000))
    assert low.shape == high.shape == (HANDCRAFTED_DIM,)
    assert np.all(np.isfinite(low))
    centroid = slice(4 * 20 + 2 * 12 + 2 * 7, 4 * 20 + 2 * 12 + 2 * 7 + 1)
    assert high[centroid][0] > 1.5 * low[centroid][0]  # the spectral centroid follows the pitch


def test_silence_gives_finite_features():
    assert np.all(np.isfinite(handcrafted_features(np.zeros(16_000 * 3, np.float32))))


def test_prepare_track_augments_training_tracks_only(tmp_path):
    import soundfile as sf

    path = tmp_path / "a.wav"
    sf.write(path, tone(12.0), 16_000)
    plan = PreparePlan(5.0, None, handcrafted=True, augment=("pitch", "noise"), copies=2, seed=0)
    train, _ = prepare_track((str(path), "a", True), plan)
    held_out, _ = prepare_track((str(path), "a", False), plan)
    assert len(train.views) == 3 and len(held_out.views) == 1
    assert [h.shape for h in train.handcrafted] == [(2, 1, HANDCRAFTED_DIM)] * 3
    again, _ = prepare_track((str(path), "a", True), plan)
    np.testing.assert_array_equal(again.views[2], train.views[2])  # seeded: reproducible
    assert not np.array_equal(train.views[1], train.views[2])  # copies differ
    failed, reason = prepare_track((str(tmp_path / "missing.wav"), "m", True), plan)
    assert failed is None and "cannot read file" in reason


def test_logmel_rows_have_the_whole_segment_shape():
    from wav2genre_cache.features import N_MELS, logmel_features, logmel_frames

    frames = logmel_frames(2.0)
    full = logmel_features(tone(2.0), frames)
    short = logmel_features(tone(1.2), frames)  # a short track: padded, same width
    assert full.shape == short.shape == (N_MELS * frames,)
    image = full.reshape(N_MELS, frames)
    assert np.argmax(image.mean(axis=1)) < N_MELS // 3  # a 440 Hz tone lights the low bands


def process_alive(pid: int) -> bool:
    """Whether `pid` runs, from /proc; a zombie has exited already (its new parent reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_a_worker_whose_parent_died_before_its_initializer_ends_at_once():
    code = "from wav2genre_cache.features import watch_parent\nwatch_parent(-1)\nprint('survived')"
    late = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert late.returncode == 1 and "survived" not in late.stdout


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux's /proc")
def test_a_worker_exits_when_its_parent_dies_even_without_the_kernel_signal(tmp_path):
    # The portable fallback alone (no PR_SET_PDEATHSIG): a thread sees the parent go, and exits.
    worker = (
        "import os, time\n"
        "from wav2genre_cache.features import watch_parent\n"
        "watch_parent(os.getppid(), death_signal=False)\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(60)"
    )
    pid_file = tmp_path / "worker.pid"
    spawn = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {worker!r}], stdout=open({str(pid_file)!r}, 'w'))\n"
        "time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", spawn])
    pid = 0
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not pid:
            time.sleep(0.05)
            text = pid_file.read_text() if pid_file.exists() else ""
            pid = int(text) if text.endswith("\n") else 0
        assert pid, "the worker never started"
        parent.kill()
        parent.wait()
        deadline = time.time() + 5
        while process_alive(pid) and time.time() < deadline:
            time.sleep(0.05)
        assert not process_alive(pid), "the worker outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        if pid and process_alive(pid):  # only this test's own worker
            os.kill(pid, signal.SIGKILL)
