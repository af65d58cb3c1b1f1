"""predict --output: a row per file in .csv, .jsonl, .json or .parquet, resumable after a kill."""

import hashlib
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_label_folder, run_cli, write_audio

FORMATS = [".csv", ".jsonl", ".json", ".parquet"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    """A run of random-tiny on tones (1 s segments) with two bundles: logreg and svm."""
    root = tmp_path_factory.mktemp("output_bundle")
    data = make_label_folder(root / "data", per_label=5, seconds=2.0)
    run_cli("run", str(data), "--out", str(root / "run"), "--model", "random-tiny",
            "--heads", "logreg,svm", "--layers", "best", "--segment-seconds", "1")  # fmt: skip
    return root / "run" / "bundles"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """Three short tones and, between them, a corrupt file."""
    root = tmp_path_factory.mktemp("clips")
    tones = [write_audio(root / f"tone{i}.wav", 1.5, freq=200 + 150 * i) for i in range(3)]
    corrupt = root / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wave file")
    return [tones[0], corrupt, *tones[1:]]


@pytest.fixture(scope="module")
def printed(bundles, clips) -> list[dict]:
    """What `predict --json` prints for the clips: the rows must hold the same."""
    return json.loads(run_cli("predict", *map(str, clips), "--bundle", str(bundles / "logreg"),
                              "--json", check=False).stdout)  # fmt: skip


def predict(out: Path, bundle: Path, *inputs: Path, extra=(), check=True):
    """predict --output, in this process."""
    return run_cli("predict", *map(str, inputs), "--bundle", str(bundle), "--output", str(out),
                   *extra, check=check)  # fmt: skip


def none_if_nan(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def plain(value):
    """A value as JSON holds it (parquet's arrays as lists, pandas' NaN as None)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return none_if_nan(value)


def read_rows(path: Path) -> list[dict]:
    """The rows of an output file as pandas reads them, in one shape for every format."""
    if path.suffix == ".csv":
        df = pd.read_csv(path)
        rows = []
        for record in df.to_dict("records"):
            record = {k: none_if_nan(v) for k, v in record.items()}
            ranks = sorted(int(c.split("_")[1]) for c in record if c.startswith("label_"))
            top = [{"label": record.pop(f"label_{i}"), "score": record.pop(f"score_{i}")}
                   for i in ranks]  # fmt: skip
            record["top"] = None if record["error"] else [t for t in top if t["label"]]
            for cell in ("tags", "timeline"):
                record[cell] = json.loads(record[cell]) if record[cell] else None
            rows.append(record)
        return rows
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    else:
        # precise_float: pandas' own float parser is off in the last digit (0.2885 -> 0.28850000000000003)
        df = pd.read_json(path, lines=path.suffix == ".jsonl", dtype=False, precise_float=True)
    return [{k: plain(v) for k, v in r.items()} for r in df.to_dict("records")]


def expected_rows(printed: list[dict], bundle: Path) -> list[dict]:
    """predict --json's entries as output rows: {label, score}, and the bundle's stamp."""
    sha = hashlib.sha256((bundle / "bundle.json").read_bytes()).hexdigest()
    rows = []
    for e in printed:
        ok = "error" not in e
        rows.append({
            "file": e["file"],
            "label": e.get("label"),
            "top": [{"label": t["label"], "score": t["probability"]} for t in e["top"]] if ok else None,
            "tags": None,
            "duration": e.get("duration"),
            "timeline": [
                {"start": s["start"], "end": s["end"], "label": s["label"], "scores": s["probabilities"]}
                for s in e["timeline"]
            ] if ok else None,
            "error": e.get("error"),
            "bundle_id": "random-tiny:layer0:logreg",
            "bundle_sha256": sha,
        })  # fmt: skip
    return rows


@pytest.mark.parametrize("suffix", FORMATS)
def test_each_format_round_trips_through_pandas_with_an_error_row(
    tmp_path, bundles, clips, printed, suffix
):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow", reason="writing .parquet needs pyarrow: pip install pyarrow")
    out = tmp_path / f"labels{suffix}"
    proc = predict(out, bundles / "logreg", *clips, check=False)
    # One corrupt file among good ones: named, given an error row, and the run goes on (exit 0).
    assert proc.returncode == 0, proc.stderr
    assert f"skipped {clips[1]}: not a decodable audio file" in proc.stderr
    assert "predict: 4/4 files, 1 failed" in proc.stderr  # stderr is no terminal: plain lines
    assert proc.stdout == ""
    rows = read_rows(out)
    assert rows == expected_rows(printed, bundles / "logreg")
    assert [r["error"] is None for r in rows] == [True, False, True, True]
    assert all(r["top"][0]["label"] == r["label"] for r in rows if r["error"] is None)


def test_the_csv_has_a_label_and_score_column_per_rank(tmp_path, bundles, clips):
    out = tmp_path / "labels.csv"
    predict(out, bundles / "logreg", *clips, extra=["--top-k", "5"])
    df = pd.read_csv(out)
    # Two labels: two ranks, whatever --top-k asks; scores are numbers, ready to sort.
    assert [c for c in df.columns if c[:6] in ("label_", "score_")] == [
        "label_1", "score_1", "label_2", "score_2"
    ]  # fmt: skip
    assert df.score_1.dtype == float and df.score_1.notna().sum() == 3


def test_a_killed_run_resumed_gives_the_rows_of_an_uninterrupted_one(tmp_path, bundles):
    songs = tmp_path / "songs"
    for i in range(40):
        write_audio(songs / f"song{i:02}.wav", 4.0, freq=150 + 20 * i, seed=i)
    (songs / "song20x.wav").write_text("corrupt")
    killed, whole = tmp_path / "killed.jsonl", tmp_path / "whole.jsonl"
    args = ["predict", str(songs), "--bundle", str(bundles / "logreg"), "--batch-size", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "wav2genre_cache", *args, "-o", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 60
    while not (killed.exists() and killed.read_bytes().count(b"\n") >= 2):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no row written in 60 s"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    lines_before = killed.read_bytes().count(b"\n")
    assert 2 <= lines_before < 41, "the run ended before it was killed"

    resumed = run_cli(*args, "-o", str(killed), "--resume")
    assert f"{lines_before} inputs already in it skipped" in resumed.stderr
    run_cli(*args, "-o", str(whole))
    lines = killed.read_text().splitlines()
    assert len(lines) == 41 and len({json.loads(line)["file"] for line in lines}) == 41
    assert set(lines) == set(whole.read_text().splitlines())


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_half_written_last_row_is_dropped_and_predicted_again(tmp_path, bundles, clips, suffix):
    out = tmp_path / f"labels{suffix}"
    predict(out, bundles / "logreg", *clips)
    whole = out.read_text()
    out.write_text(whole[:-25])  # what a kill in the middle of the last write leaves
    proc = predict(out, bundles / "logreg", *clips, extra=["--resume"])
    assert "dropped a half-written last row" in proc.stderr
    assert "3 inputs already in it skipped" in proc.stderr
    assert out.read_text() == whole


def test_resume_with_another_bundle_is_refused(tmp_path, bundles, clips):
    out = tmp_path / "labels.jsonl"
    predict(out, bundles / "logreg", *clips[:1])
    before = out.read_bytes()
    proc = predict(out, bundles / "svm", *clips, extra=["--resume"], check=False)
    assert proc.returncode == 2
    assert f"error: {out} was made by another bundle (random-tiny:layer0:logreg" in proc.stderr
    assert out.read_bytes() == before


@pytest.mark.parametrize("resume", [False, True])
def test_an_existing_output_is_never_overwritten(tmp_path, bundles, clips, resume):
    out = tmp_path / "labels.json"
    out.write_text("[]")  # --resume: nothing in it yet, so every file is predicted
    proc = predict(out, bundles / "logreg", *clips, extra=["--resume"] if resume else [],
                   check=False)  # fmt: skip
    if resume:
        assert proc.returncode == 0 and len(json.loads(out.read_text())) == 4
    else:
        assert proc.returncode == 2 and out.read_text() == "[]"
        assert f"error: {out} already exists; use --resume" in proc.stderr


def test_options_that_cannot_be_used_are_refused(tmp_path, bundles, clips, monkeypatch):
    def refused(out, *extra):
        proc = predict(tmp_path / out, bundles / "logreg", *clips, extra=extra, check=False)
        assert proc.returncode == 2 and not (tmp_path / out).exists()
        return proc.stderr

    assert "unknown format '.txt'; name the file .csv, .jsonl" in refused("x.txt")
    assert "--json prints to stdout, --output writes a file" in refused("x.csv", "--json")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    assert "writing .parquet needs pyarrow, which is not installed: pip install pyarrow" in (
        refused("x.parquet")
    )
    proc = run_cli("predict", str(clips[0]), "--bundle", str(bundles / "logreg"), "--resume",
                   check=False)  # fmt: skip
    assert proc.returncode == 2 and "--resume goes with --output" in proc.stderr
