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
        signal=0.2,  # enough to learn, not enough for a perfect ranking (no ROC figure then)
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
    # One page with everything inline: the table, the notes and every figure as data.
    page = (tmp_path / "run" / "report.html").read_text()
    pngs = sorted((tmp_path / "run").glob("*.png"))
    assert page.count("data:image/png;base64,") == len(pngs) >= 5
    assert page.count("<tr>") == 1 + 2 * 3 and "<h1>Model comparison</h1>" in page
    assert 'src="' not in page.replace('src="data:', "")  # nothing to fetch from beside it


def test_compare_without_a_run(tmp_path):
    with pytest.raises(ReportError, match="metrics.json: not found"):
        write_report(tmp_path)


def test_figures_without_information_are_said_not_drawn_and_the_rest_are_linked(tmp_path):
    # Labels far apart: every test track ranked perfectly (AUC 1.00 for each label); one layer.
    cache = write_synthetic_cache(
        tmp_path / "c.h5", n_tracks=60, segments_per_track=1, n_layers=3, dim=8, n_labels=3,
        signal=8.0,
    )  # fmt: skip
    run = tmp_path / "run"
    train_heads(cache, run, heads=["logreg"], layers="1", log=lambda _: None)
    (run / "roc_curves.png").write_bytes(b"a stale figure of an earlier compare")
    written = write_report(run)
    assert not (run / "roc_curves.png").exists() and not (run / "accuracy_by_layer.png").exists()
    assert "roc" not in written and "ablation" not in written
    md = (run / "comparison.md").read_text()
    assert "No label AUC figure: every label in test ranks its 6 test tracks perfectly" in md
    assert "No accuracy-by-layer figure: the run trained on 1 layer(s)" in md
    for name in ("model_comparison.png", "confusion_matrix.png", "reliability.png"):
        assert (run / name).is_file() and f"]({name})" in md
