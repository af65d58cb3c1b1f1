import json

import pytest
from conftest import run_cli


@pytest.mark.slow
def test_run_end_to_end_on_the_dev_clips(tmp_path, dev_clips):
    run = tmp_path / "run"
    proc = run_cli("run", str(dev_clips), "--out", str(run), "--model", "random-tiny")
    assert "Embedded 60 tracks (180 segments" in proc.stderr
    assert "untrained (random) backbone" in proc.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["counts"] == {"train": 40, "valid": 10, "test": 10}
    assert len(metrics["results"]) == 5 * 3 and metrics["untrained_backbone"] is True
    assert (run / "best" / "bundle.json").is_file() and (run / "roc_curves.png").is_file()
    info = run_cli("info", str(run / "cache.h5"), "--json")
    assert json.loads(info.stdout)["tracks"]["ok"] == 60


def test_help_lists_every_command():
    out = run_cli("--help").stdout
    for cmd in ("embed", "info", "train-heads", "compare", "run"):
        assert cmd in out


def test_errors_are_one_clear_line_and_exit_2(tmp_path):
    proc = run_cli(
        "embed",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path / "x.h5"),
        "--model",
        "random-tiny",
        check=False,
    )
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr
    proc = run_cli("train-heads", str(tmp_path / "x.h5"), "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "no such cache file" in proc.stderr
