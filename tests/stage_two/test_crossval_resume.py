"""cross-validate --out keeps each (repeat, fold, head) score in <out>.folds as it is fitted: a
killed run re-run with the same command fits only the rest and writes the uninterrupted JSON."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from wav2genre_cache.testing.synthetic import write_synthetic_cache

TINY = dict(n_tracks=40, n_layers=2, dim=8, n_labels=2, segments_per_track=1)
OPTIONS = ("--feature-set", "encoder", "--heads", "fcnn,logreg", "--folds", "3", "--repeats", "2")
SCORES = 3 * 2 * 2  # folds x repeats x heads
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}  # one log line stays one line


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("t") / "t.h5", **TINY)


def _command(cache: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "wav2genre_cache", "cross-validate", str(cache), *OPTIONS,
            "--out", str(out)]  # fmt: skip


def _kept(out: Path) -> dict[Path, int]:
    """Each kept fold score, with its step.json's modification time."""
    return {
        p.parent: p.stat().st_mtime_ns
        for p in Path(f"{out}.folds").glob("*/step.json")
        if not p.parent.name.endswith(".tmp")
    }


def test_a_killed_cross_validation_resumes_to_the_uninterrupted_result(tiny, tmp_path):
    expected, out = tmp_path / "uninterrupted.json", tmp_path / "cv.json"
    uninterrupted = subprocess.Popen(
        _command(tiny, expected), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    killed = subprocess.Popen(
        _command(tiny, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300  # on a loaded 2-core box importing the package took 10 s
    while len(_kept(out)) < 3:
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done = _kept(out)
    assert 3 <= len(done) < SCORES and not out.exists()
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read().decode()
    uninterrupted.stderr.close()

    resumed = subprocess.run(_command(tiny, out), env=ENV, capture_output=True, text=True)

    assert resumed.returncode == 0, resumed.stderr
    assert (
        f"{len(done)} of {SCORES} fold scores read back from {out}.folds; "
        f"{SCORES - len(done)} fitted"
    ) in resumed.stderr
    kept = _kept(out)
    assert len(kept) == SCORES and all(kept[step] == t for step, t in done.items())
    assert out.read_bytes() == expected.read_bytes()
    assert not Path(f"{out}.lock").exists()

    # A finished run re-run fits nothing and writes the same result.
    again = run_cli("cross-validate", str(tiny), *OPTIONS, "--out", str(out))
    assert f"{SCORES} of {SCORES} fold scores read back" in again.stderr
    assert "; 0 fitted" in again.stderr and _kept(out) == kept
    assert out.read_bytes() == expected.read_bytes()


def test_changed_settings_are_refused_with_the_differences(tiny, tmp_path):
    out = tmp_path / "cv.json"
    options = ("--feature-set", "encoder", "--heads", "logreg", "--folds", "3", "--repeats", "1")
    run_cli("cross-validate", str(tiny), *options, "--out", str(out))
    first = out.read_bytes()
    refused = run_cli("cross-validate", str(tiny), *options, "--seed", "1", "--heads", "logreg,svm",
                      "--out", str(out), check=False)  # fmt: skip
    assert refused.returncode == 2
    said = refused.stderr.strip().splitlines()
    assert (
        len(said) == 1
        and "with other settings (heads: logreg -> logreg,svm; seed: 0 -> 1)" in (said[0])
    )
    assert out.read_bytes() == first
    # Without --out nothing is kept: the run is not resumable, as before.
    plain = run_cli("cross-validate", str(tiny), *options, cwd=tmp_path)
    assert "fold scores" not in plain.stderr and sorted(p.name for p in tmp_path.iterdir()) == [
        "cv.json",
        "cv.json.folds",
    ]
