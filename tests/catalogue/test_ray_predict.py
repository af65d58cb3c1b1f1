"""predict --engine ray: local predict's rows from Ray Data, a corrupt file skipped, and a driver
killed with kill -9 half-way resumed to the rows of an uninterrupted run.

Three Ray runs in all (one uninterrupted, one killed, its resume), in module-scoped fixtures;
every runtime is started by the engine itself, on 127.0.0.1 only.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_label_folder, run_cli, write_audio
from processes import (
    command_line,
    descendants,
    listening_sockets,
    ray_lines,
    start_times,
    still_running,
)

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is first imported
pytest.importorskip("ray", reason="Ray is an optional dependency: pip install '.[ray]'")

# One worker runs every Ray test, one after another (two runtimes at once crowd two cores).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

TOLERANCE = 1e-3  # scores are rounded to 4 decimals; batching moves float32 sums' last bits
FILES = 47  # tones, and one corrupt file among them: shards of 16 files, 3 of them


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A logistic-regression bundle of random-tiny on tones (1 s segments)."""
    root = tmp_path_factory.mktemp("ray_predict_bundle")
    data = make_label_folder(root / "data", per_label=5, seconds=2.0)
    run_cli("run", str(data), "--out", str(root / "run"), "--model", "random-tiny",
            "--heads", "logreg", "--layers", "best", "--segment-seconds", "1")  # fmt: skip
    return root / "run" / "bundles" / "logreg"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A folder of FILES tones of 4-8 s and a corrupt file sorted among them."""
    root = tmp_path_factory.mktemp("ray_predict_clips")
    for i in range(FILES):
        write_audio(root / f"tone{i:02d}.wav", 4.0 + i % 5, freq=150 + 20 * i, seed=i)
    (root / "tone20_corrupt.wav").write_bytes(b"RIFF not really a wave file")
    return root


def predict_command(clips: Path, bundle: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "wav2genre_cache", "predict", str(clips), "--bundle",
            str(bundle), "--output", str(out), *extra]  # fmt: skip


def read(path: Path) -> list[dict]:
    """An output file's rows (.jsonl or .parquet) as Python values."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def assert_same_rows(a: list[dict], b: list[dict]) -> None:
    """Same files in the same order, same labels and errors; scores within TOLERANCE."""
    assert [r["file"] for r in a] == [r["file"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert (x["label"], x["error"], x["duration"]) == (y["label"], y["error"], y["duration"])
        assert (x["bundle_id"], x["bundle_sha256"]) == (y["bundle_id"], y["bundle_sha256"])
        if x["error"] is not None:
            assert x["top"] is None and y["top"] is None
            continue
        assert [t["label"] for t in x["top"]] == [t["label"] for t in y["top"]]
        for s, t in zip(x["top"], y["top"], strict=True):
            assert abs(s["score"] - t["score"]) <= TOLERANCE
        assert len(x["timeline"]) == len(y["timeline"])
        for s, t in zip(x["timeline"], y["timeline"], strict=True):
            assert (s["start"], s["end"], s["label"]) == (t["start"], t["end"], t["label"])
            assert s["scores"].keys() == t["scores"].keys()
            for label, score in s["scores"].items():
                assert abs(score - t["scores"][label]) <= TOLERANCE


@pytest.fixture(scope="module")
def local_rows(bundle, clips, tmp_path_factory) -> list[dict]:
    """Local predict --output: the reference."""
    out = tmp_path_factory.mktemp("local") / "labels.parquet"
    run_cli("predict", str(clips), "--bundle", str(bundle), "--output", str(out), check=False)
    return read(out)


@pytest.fixture(scope="module")
def ray_run(bundle, clips, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """An uninterrupted predict --engine ray, into .jsonl."""
    out = tmp_path_factory.mktemp("ray") / "labels.jsonl"
    proc = subprocess.run(predict_command(clips, bundle, out, "--engine", "ray"),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_ray_engine_writes_local_predicts_rows(ray_run, local_rows):
    out, _ = ray_run
    rows = read(out)
    assert len(rows) == FILES + 1
    assert_same_rows(local_rows, rows)
    assert not out.with_name(out.name + ".shards").exists()  # merged, then removed


def test_a_ray_run_prints_no_warning_of_ray_s_own(ray_run):
    _, proc = ray_run
    assert ray_lines(proc.stderr) == []
    assert "Ray: 1 node(s)" in proc.stderr  # the stderr read is the run's


def test_a_corrupt_file_is_reported_and_skipped(ray_run):
    out, proc = ray_run
    rows = {Path(r["file"]).name: r for r in read(out)}
    bad = rows.pop("tone20_corrupt.wav")
    assert bad["label"] is None and "not a decodable audio file" in bad["error"]
    assert all(r["error"] is None and r["label"] for r in rows.values())
    said = [line for line in proc.stderr.splitlines() if "skipped" in line]
    assert len(said) == 1 and "tone20_corrupt.wav" in said[0]
    assert f"Wrote {FILES + 1} rows" in proc.stderr
    assert "1 of 48 inputs could not be used" in proc.stderr


def test_a_driver_killed_half_way_resumes_to_the_uninterrupted_rows(
    bundle, clips, ray_run, tmp_path
):
    out = tmp_path / "labels.parquet"
    shards = tmp_path / "labels.parquet.shards"
    run = subprocess.Popen(predict_command(clips, bundle, out, "--engine", "ray"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    runtime: dict[int, int] = {}  # every process the driver started: pid -> start time
    try:
        deadline = time.time() + 300
        while not list(shards.glob("rows-*.parquet")):
            assert run.poll() is None and time.time() < deadline, run.stderr.read()
            runtime |= start_times(descendants(run.pid))
            time.sleep(0.02)
        runtime |= start_times(descendants(run.pid))
        names = {command_line(p) for p in runtime}
        run.send_signal(signal.SIGKILL)
        run.wait()
    finally:
        run.kill()
        run.wait()
    # Its Ray runtime goes with it (issue 25): the raylet, GCS, agents and actors end within
    # 10 s (the agents alone would try for 60 s to reach the dead GCS), none still listening.
    assert any("DashboardAgent" in name for name in names)  # the helpers were running
    deadline = time.time() + 10
    while still_running(runtime) and time.time() < deadline:
        time.sleep(0.2)
    left = still_running(runtime)
    assert {p: command_line(p) for p in left} == {} and listening_sockets(left) == {}
    written = len(list(shards.glob("rows-*.parquet")))
    assert 1 <= written < 3 and not out.exists()  # killed between shards, before the merge
    # Without --resume, the unfinished run's shards are not taken over silently.
    again = run_cli("predict", str(clips), "--bundle", str(bundle), "--output", str(out),
                    "--engine", "ray", check=False)  # fmt: skip
    assert again.returncode != 0 and "--resume" in again.stderr and "unfinished" in again.stderr
    resumed = subprocess.run(predict_command(clips, bundle, out, "--engine", "ray", "--resume"),
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming: {16 * written} files labelled" in resumed.stderr
    assert ray_lines(resumed.stderr) == []  # no token-authentication warning on a resume either
    assert_same_rows(read(ray_run[0]), read(out))
    assert not shards.exists()


def test_a_predictor_actor_killed_mid_run_is_replaced_by_a_fresh_pipeline(
    bundle, clips, ray_run, tmp_path
):
    # Ray restarts no pool actor (restarts off); the engine labels the shards not written yet
    # again on a fresh pipeline, so the run ends with the uninterrupted run's rows.
    out = tmp_path / "labels.jsonl"
    run = subprocess.Popen(predict_command(clips, bundle, out, "--engine", "ray"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not list(out.with_name(out.name + ".shards").glob("rows-*.parquet")):
            assert run.poll() is None and time.time() < deadline, run.stderr.read()
            time.sleep(0.02)
        actor = next(p for p in descendants(run.pid) if "PredictActor" in command_line(p))
        os.kill(actor, signal.SIGKILL)
        assert run.wait(timeout=600) == 0, run.stderr.read()
        stderr = run.stderr.read()
    finally:
        run.kill()
        run.wait()
    retried = [line for line in stderr.splitlines() if "a predictor actor died (" in line]
    assert len(retried) == 1 and retried[0].endswith(
        "labelling the 2 blocks left again, attempt 2 of 3"
    ), stderr
    assert_same_rows(read(ray_run[0]), read(out))
