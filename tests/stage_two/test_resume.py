"""Stage two keeps each finished job (RUN/jobs): a killed train-heads re-run on the same folder
fits only the jobs it had not finished and writes what an uninterrupted run writes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from wav2genre_cache.errors import TrainError
from wav2genre_cache.heads.registry import head_spec
from wav2genre_cache.stage_two.jobs_store import JobStore
from wav2genre_cache.stage_two.train import train_heads
from wav2genre_cache.store.bundles import load_bundle
from wav2genre_cache.store.cache import EmbeddingCache
from wav2genre_cache.testing.synthetic import write_synthetic_cache

SMALL = dict(n_tracks=80, n_layers=6, dim=16, n_labels=4, segments_per_track=2)
HEADS = "fcnn,svm,logreg,xgb,rf"
TIMING = {"fit_seconds", "predict_seconds"}  # differ between any two runs
# Rich wraps stderr at 80 columns where there is no terminal; a log line must stay one line.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("c") / "c.h5", **SMALL)


def _command(cache: Path, run: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "wav2genre_cache", "train-heads", str(cache)),
        # Chosen on validation: cross-validation (the default here, validation being small)
        # takes 5 times as long, and the other tests cover it.
        *("--out", str(run), "--heads", HEADS, "--selection", "valid"),
    ]


def _jobs(run: Path) -> dict[Path, int]:
    """Each finished job folder, with its job.json's modification time."""
    return {
        p.parent: p.stat().st_mtime_ns
        for p in (run / "jobs").glob("*/*/*/job.json")
        if not p.parent.name.endswith(".tmp")
    }


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _metrics(run: Path) -> dict:
    return _untimed(json.loads((run / "metrics.json").read_text()))


def _assert_same_outputs(cache: Path, expected: Path, run: Path) -> None:
    """Equal metrics.json (timing apart) and bundles: bundle.json (its checksums apart: skops
    and safetensors files differ byte-wise between any two runs), model card, predictions."""
    assert _metrics(run) == _metrics(expected)
    folders = sorted(p.parent.relative_to(expected) for p in expected.glob("**/bundle.json"))
    assert folders == sorted(p.parent.relative_to(run) for p in run.glob("**/bundle.json"))
    assert len(folders) > 1
    features = EmbeddingCache(cache)
    for folder in folders:
        (meta_a, head_a), (meta_b, head_b) = (
            load_bundle(expected / folder),
            load_bundle(run / folder),
        )
        for meta in (meta_a, meta_b):
            del meta["head_sha256"], meta["files"]
        assert meta_a == meta_b
        card_a = (expected / folder / "README.md").read_text().replace(str(expected), "RUN")
        assert card_a == (run / folder / "README.md").read_text().replace(str(run), "RUN")
        X = features.features("encoder", meta_a["layer"])
        spec = head_spec(meta_a["head"])
        np.testing.assert_array_equal(spec.predict_proba(head_a, X), spec.predict_proba(head_b, X))


def test_a_killed_run_resumes_to_the_uninterrupted_result(cache, tmp_path):
    expected, run = tmp_path / "uninterrupted", tmp_path / "run"
    uninterrupted = subprocess.Popen(
        _command(cache, expected), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    killed = subprocess.Popen(
        _command(cache, run), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while len(_jobs(run)) < 3:
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done = _jobs(run)
    n_jobs = len(HEADS.split(",")) * SMALL["n_layers"]
    assert 3 <= len(done) < n_jobs and not (run / "metrics.json").exists()
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read().decode()
    uninterrupted.stderr.close()

    resumed = subprocess.run(_command(cache, run), env=ENV, capture_output=True, text=True)

    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done)} of {n_jobs} jobs already done" in resumed.stderr
    assert resumed.stderr.count("(fit ") == n_jobs - len(done)  # a log line per fitted job
    now = _jobs(run)
    assert len(now) == n_jobs and all(now[job] == t for job, t in done.items())
    _assert_same_outputs(cache, expected, run)


def test_changed_settings_are_refused_with_the_differences(cache, tmp_path):
    run = tmp_path / "run"
    train_heads(cache, run, heads="logreg", layers="0", log=quiet)
    with pytest.raises(TrainError) as refused:
        train_heads(cache, run, heads="logreg,svm", layers="0", seed=1, log=quiet)
    message = str(refused.value)
    assert "\n" not in message and "heads: logreg -> logreg,svm" in message
    assert "seed: 0 -> 1" in message and "layers" not in message
    other = write_synthetic_cache(tmp_path / "other.h5", **{**SMALL, "seed": 1})
    with pytest.raises(TrainError, match=r"\(cache: .*c\.h5 .* -> .*other\.h5"):
        train_heads(other, run, heads="logreg", layers="0", log=quiet)
    # The same cache moved elsewhere is the same cache: its jobs are read back.
    moved = shutil.copy(cache, tmp_path / "moved.h5")
    logs: list[str] = []
    train_heads(moved, run, heads="logreg", layers="0", log=logs.append)
    assert "encoder: 1 of 1 jobs already done" in "\n".join(logs)
    settings = run / "jobs" / "settings.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "format_version": 99}))
    with pytest.raises(TrainError, match="jobs format version 99; .* reads versions up to 1"):
        train_heads(cache, run, heads="logreg", layers="0", log=quiet)


def test_a_corrupted_job_is_fitted_again(cache, tmp_path):
    run = tmp_path / "run"
    train_heads(cache, run, heads="logreg,svm", layers="0,1", log=quiet)
    expected = _metrics(run)
    altered = run / "jobs" / "encoder" / "augmented" / "svm-layer1" / "head.skops"
    altered.write_bytes(altered.read_bytes()[:-8] + b"\0" * 8)
    kept = {job: t for job, t in _jobs(run).items() if job != altered.parent}
    logs: list[str] = []

    train_heads(cache, run, heads="logreg,svm", layers="0,1", log=logs.append)

    assert any(
        line.startswith(str(altered.parent))
        and "head.skops is missing or altered (checksum mismatch); fitting the job again" in line
        for line in logs
    )
    assert sum("(fit " in line for line in logs) == 1
    assert all(_jobs(run)[job] == t for job, t in kept.items())
    assert _metrics(run) == expected
    load_bundle(run / "bundles" / "svm")


def test_a_finished_run_rerun_rewrites_its_outputs_without_fitting(cache, tmp_path):
    run = tmp_path / "run"
    train_heads(cache, run, heads="logreg,xgb", layers="0,1", log=quiet)
    metrics = (run / "metrics.json").read_bytes()
    bundle = (run / "best" / "bundle.json").read_bytes()
    jobs = _jobs(run)
    (run / "metrics.json").unlink()
    shutil.rmtree(run / "best")
    logs: list[str] = []

    train_heads(cache, run, heads="logreg,xgb", layers="0,1", log=logs.append)

    assert not any("(fit " in line for line in logs)
    assert "encoder: 4 of 4 jobs already done" in "\n".join(logs)
    assert _jobs(run) == jobs
    # The rows are read back with their timings: metrics.json is the same file again.
    assert (run / "metrics.json").read_bytes() == metrics
    best = json.loads((run / "best" / "bundle.json").read_text())
    first = json.loads(bundle)
    for meta in (best, first):
        del meta["head_sha256"], meta["files"]
    assert best == first


# A search's trials (and a cross-validated grid point's folds) are kept as each finishes: a
# search killed midway re-run fits only the trials it had not finished.
TINY = dict(n_tracks=40, n_layers=2, dim=8, n_labels=2, segments_per_track=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("t") / "t.h5", **TINY)


def _search(cache: Path, run: Path, selection: str, trials: int) -> list[str]:
    return [
        *(sys.executable, "-m", "wav2genre_cache", "train-heads", str(cache), "--out", str(run)),
        *("--heads", "fcnn", "--layers", "0", "--trials", str(trials), "--selection", selection),
    ]


def _steps(run: Path) -> set[Path]:
    """Each finished step (trial, grid point or fold) of the run's unfinished jobs."""
    return {
        p.parent
        for p in (run / "jobs").glob("*/*/*.steps/*/step.json")
        if not p.parent.name.endswith(".tmp")
    }


@pytest.mark.parametrize(
    ("selection", "trials", "steps", "kill_at"),
    [("valid", 8, 8, 3), ("cv", 2, 20, 5)],  # cv: 2 trials x 2 repeats x 5 folds
)
def test_a_search_killed_midway_resumes_its_trials(
    tiny, tmp_path, selection, trials, steps, kill_at
):
    expected, run = tmp_path / "uninterrupted", tmp_path / "run"
    # In a process like the killed one's (its threads give the same numbers), alongside it.
    uninterrupted = subprocess.Popen(_search(tiny, expected, selection, trials), env=ENV,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    killed = subprocess.Popen(
        _search(tiny, run, selection, trials),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300  # on a loaded 2-core box importing the package took 10 s
    while len(_steps(run)) < kill_at:
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done = _steps(run)
    mtimes = {step: (step / "step.json").stat().st_mtime_ns for step in done}
    assert kill_at <= len(done) < steps and not _jobs(run)
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read().decode()
    uninterrupted.stderr.close()

    # Kept trials protect their settings as finished jobs do.
    with pytest.raises(TrainError, match=f"trials: {trials} -> {trials + 1}"):
        train_heads(tiny, run, heads="fcnn", layers="0", trials=trials + 1, selection=selection,
                    log=quiet)  # fmt: skip
    assert {s: (s / "step.json").stat().st_mtime_ns for s in _steps(run)} == mtimes

    resumed = subprocess.run(_search(tiny, run, selection, trials), env=ENV,
                             capture_output=True, text=True)  # fmt: skip

    assert resumed.returncode == 0, resumed.stderr
    # The store counts what it read back and what it fitted: only the steps not yet done.
    assert (
        f"{len(done)} of {steps} steps (trials, grid points or folds) read back from "
        f"{next(iter(done)).parent}; {steps - len(done)} fitted"
    ) in resumed.stderr
    assert resumed.stderr.count("(fit ") == 1
    assert len(_jobs(run)) == 1 and not _steps(run)  # the job kept, its steps removed
    _assert_same_outputs(tiny, expected, run)


def test_a_search_stopped_after_its_last_trial_reads_the_chosen_model_back(
    tiny, tmp_path, monkeypatch
):
    expected, run = tmp_path / "uninterrupted", tmp_path / "run"
    options = dict(heads="fcnn", layers="0", trials=4, selection="valid")
    train_heads(tiny, expected, log=quiet, **options)

    def stopped(*_):  # stopped between the search's last trial and keeping its job
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(JobStore, "save", stopped)
        with pytest.raises(KeyboardInterrupt):
            train_heads(tiny, run, log=quiet, **options)
    assert len(_steps(run)) == 4 and not _jobs(run)
    logs: list[str] = []

    train_heads(tiny, run, log=logs.append, **options)

    assert any("4 of 4 steps (trials, grid points or folds) read back" in s for s in logs)
    assert any(s.endswith("; 0 fitted") for s in logs)
    _assert_same_outputs(tiny, expected, run)
