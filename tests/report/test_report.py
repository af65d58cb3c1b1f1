import pytest
from conftest import run_cli

from wav2genre_cache.errors import ReportError
from wav2genre_cache.report.compare import write_report
from wav2genre_cache.stage_two.train import train_heads
from wav2genre_cache.testing.synthetic import write_synthetic_cache


def test_compare_writes_every_table_and_figure(tmp_path):
    cache = write_synthetic_cache(
        tmp_path / "c.h5",
        n_tracks=80,
        segments_per_track=2,
        n_layers=3,
        dim=16,
        n_labels=4,
        signal=1.0,
    )
    train_heads(cache, tmp_path / "run", heads=["logreg", "svm"], layers="all", log=lambda _: None)
    proc = run_cli("compare", str(tmp_path / "run"))
    assert "| * |" in proc.stdout and "track_accuracy" in proc.stdout
    for name in (
        "comparison.md",
        "comparison.csv",
        "comparison.json",
        "accuracy_by_layer.png",
        "model_comparison.png",
        "confusion_matrix.png",
        "roc_curves.png",
    ):
        path = tmp_path / "run" / name
        assert path.is_file() and path.stat().st_size > 200, name
    assert (tmp_path / "run" / "accuracy_by_layer.png").read_bytes()[:4] == b"\x89PNG"
    csv = (tmp_path / "run" / "comparison.csv").read_text().splitlines()
    assert len(csv) == 1 + 2 * 3  # heads x layers


def test_compare_without_a_run(tmp_path):
    with pytest.raises(ReportError, match="metrics.json: not found"):
        write_report(tmp_path)
