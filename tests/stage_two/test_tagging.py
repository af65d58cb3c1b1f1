"""Stage two with tags, several sources and duplicates: training, calibration, report, bundles."""

import json

import pytest

from wav2genre_cache.report.compare import write_report
from wav2genre_cache.stage_two.data import load_training_data
from wav2genre_cache.stage_two.train import train_heads
from wav2genre_cache.store.bundles import load_bundle
from wav2genre_cache.testing.synthetic import write_synthetic_cache

TAGS = dict(n_tracks=300, segments_per_track=2, n_layers=3, dim=24, n_labels=5, multi_label=True)
QUIET = dict(log=lambda _: None)


@pytest.fixture(scope="module")
def tag_cache(tmp_path_factory):
    return write_synthetic_cache(
        tmp_path_factory.mktemp("tags") / "tags.h5", informative_layers=(1,), signal=1.2, **TAGS
    )


@pytest.fixture(scope="module")
def tag_run(tag_cache, tmp_path_factory):
    run = tmp_path_factory.mktemp("tagrun") / "run"
    return run, train_heads(tag_cache, run, heads=["logreg", "svm", "fcnn"], layers="1", **QUIET)


def test_tags_with_structure_reach_a_high_macro_pr_auc(tag_run):
    _, m = tag_run
    assert m["multi_label"] is True and m["labels"] == [f"tag{k}" for k in range(5)]
    for r in m["results"]:
        track = r["test"]["track"]
        assert track["macro_pr_auc"] > 0.85, (r["head"], track["macro_pr_auc"])
        assert track["macro_auc"] > 0.9
        assert set(track["pr_auc_per_class"]) == set(m["labels"])
        assert len(r["thresholds"]) == 5 and all(0 <= t <= 1 for t in r["thresholds"])


def test_shuffled_tags_stay_near_chance(tmp_path):
    cache = write_synthetic_cache(
        tmp_path / "shuffled.h5", informative_layers=(1,), signal=1.2, random_labels=True, **TAGS
    )
    m = train_heads(cache, tmp_path / "run", heads=["logreg", "svm"], layers="1", **QUIET)
    data = load_training_data(cache)
    base_rate = data.y[data.test].mean()  # a tag's chance PR-AUC is its share of the tracks
    for r in m["results"]:
        track = r["test"]["track"]
        assert track["macro_pr_auc"] < base_rate + 0.2, (r["head"], track["macro_pr_auc"])
        assert abs(track["macro_auc"] - 0.5) < 0.15


def test_taggers_are_ranked_by_macro_pr_auc_and_drawn(tag_run):
    run, m = tag_run
    written = write_report(run)
    for figure in ("tag_errors", "reliability", "heads"):
        assert written[figure].read_bytes()[:4] == b"\x89PNG", figure
    assert "confusion" not in written  # single-label figures are not drawn for taggers
    md = (run / "comparison.md").read_text()
    assert "tag_auc" in written or "No tag AUC figure: every tag in test ranks" in md
    assert "ablation" not in written and "No accuracy-by-layer figure" in md  # one layer
    table = json.loads((run / "comparison.json").read_text())
    valid = [row["valid_track_macro_pr_auc"] for row in table]
    assert valid == sorted(valid, reverse=True)
    text = (run / "comparison.md").read_text()
    assert "macro PR-AUC" in text and "track_macro_pr_auc" in text


def test_a_tagger_bundle_carries_its_thresholds_and_calibration(tag_run):
    run, m = tag_run
    meta, head = load_bundle(run / "best")
    best = next(r for r in m["results"] if r.get("best_overall"))
    assert meta["multi_label"] is True and meta["thresholds"] == best["thresholds"]
    assert meta["calibration"]["method"] in ("temperature", "isotonic")
    assert meta["metrics"]["test_track_macro_pr_auc"] == best["test"]["track"]["macro_pr_auc"]
    assert getattr(head, "multi_label_", False)


def test_calibration_is_fitted_on_validation_and_reported_on_test(tag_run):
    _, m = tag_run
    for r in m["results"]:
        c = r["calibration"]
        assert c["fitted_on"] == "valid" and 0 <= c["ece_after"] <= 1 and 0 <= c["ece_before"] <= 1
    best = next(r for r in m["results"] if r.get("best_overall"))
    curves = best["test_detail"]["reliability"]
    assert sum(curves["before"]["count"]) == sum(curves["after"]["count"]) == 30 * 5


def test_single_label_runs_are_calibrated_too_and_the_svm_among_them(tmp_path):
    cache = write_synthetic_cache(
        tmp_path / "single.h5", n_tracks=200, segments_per_track=2, n_layers=2, dim=16,
        n_labels=4, signal=0.6,
    )  # fmt: skip
    m = train_heads(cache, tmp_path / "run", heads=["svm", "logreg"], layers="1", **QUIET)
    assert m["multi_label"] is False
    svm = next(r for r in m["results"] if r["head"] == "svm")
    assert svm["calibration"]["method"] == "temperature"  # 20 validation tracks: not isotonic
    assert svm["calibration"]["temperature"] != 1.0
    assert "thresholds" not in svm  # single-label: the most probable label, no thresholds
    meta, _ = load_bundle(tmp_path / "run" / "bundles" / "svm")
    assert meta["calibration"]["temperature"] == svm["calibration"]["temperature"]
    m2 = train_heads(
        cache, tmp_path / "none", heads=["svm"], layers="1", calibration="none", **QUIET
    )
    assert m2["results"][0]["calibration"]["method"] == "none"
    assert (
        m2["results"][0]["calibration"]["ece_before"]
        == m2["results"][0]["calibration"]["ece_after"]
    )


def test_metrics_per_source_beside_the_overall_figures(tmp_path):
    cache = write_synthetic_cache(
        tmp_path / "two.h5", n_tracks=160, segments_per_track=2, n_layers=2, dim=16,
        n_labels=4, signal=1.5, sources=2,
    )  # fmt: skip
    run = tmp_path / "run"
    m = train_heads(cache, run, heads=["logreg"], layers="1", **QUIET)
    assert m["sources"] == ["source0", "source1"]
    r = m["results"][0]
    per = r["test"]["per_source"]
    assert set(per) == {"source0", "source1"}
    assert sum(p["n"] for p in per.values()) == r["test"]["track"]["n"]
    # The overall accuracy is the per-source accuracies weighted by their tracks.
    overall = sum(p["accuracy"] * p["n"] for p in per.values()) / r["test"]["track"]["n"]
    assert overall == pytest.approx(r["test"]["track"]["accuracy"])
    write_report(run)
    text = (run / "comparison.md").read_text()
    assert "## Per dataset" in text and "| source1 |" in text


def test_duplicates_never_straddle_a_split(tmp_path):
    cache = write_synthetic_cache(
        tmp_path / "dup.h5", n_tracks=120, segments_per_track=2, n_layers=2, dim=16,
        n_labels=4, duplicates=30,
    )  # fmt: skip
    data = load_training_data(cache)
    tracks = data.cache.tracks
    for group in data.duplicates["groups"]:
        sides = {data.track_split[tracks.index[tracks.track_id == t][0]] for t in group}
        assert len(sides) == 1, group
    assert len(data.duplicates["groups"]) == 30
    # Of 30 copies placed at random, some landed apart and were moved, to train first.
    moved = data.duplicates["moved"]
    assert moved and all(m["to"] in ("train", "valid") for m in moved)
    assert any("appear more than once" in note for note in data.notes)
    before = set(tracks.track_id[tracks.split == "test"])
    after = set(tracks.track_id[data.track_split == "test"])
    assert after < before  # test lost its copies of training tracks, and gained nothing
    m = train_heads(cache, tmp_path / "run", heads=["logreg"], layers="1", **QUIET)
    assert m["duplicates"]["tracks"] == 60 and "split" not in m["duplicates"]


def test_cross_validation_refuses_a_tag_cache_with_the_way_to_go(tag_cache):
    from wav2genre_cache.errors import TrainError
    from wav2genre_cache.stage_two.crossval import cross_validate

    with pytest.raises(TrainError, match="multi-label.*train-heads"):
        cross_validate(tag_cache, "encoder", ["logreg"], layer=1)


def test_compare_draws_a_tagger_whose_test_split_leaves_figures_undefined(tag_run, tmp_path):
    import shutil

    run, _ = tag_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    m = json.loads((copy / "metrics.json").read_text())
    for r in m["results"]:  # as metrics.json holds a NaN AUC: null
        r["test"]["track"]["macro_pr_auc"] = None
        if "test_detail" in r:
            r["test_detail"]["macro_pr_auc"] = None
            r["test_detail"]["pr_auc_per_class"]["tag0"] = None
    (copy / "metrics.json").write_text(json.dumps(m))
    written = write_report(copy)
    assert written["tag_auc"].is_file() and written["tag_errors"].is_file()


def test_cross_validation_keeps_copies_of_a_recording_in_one_fold(tmp_path, monkeypatch):
    import wav2genre_cache.stage_two.crossval as crossval

    cache = write_synthetic_cache(
        tmp_path / "dup.h5", n_tracks=100, segments_per_track=1, n_layers=1, dim=8,
        n_labels=2, duplicates=20,
    )  # fmt: skip
    folds = []
    real = crossval.head_scores

    def recording(spec, head, X, y, track, *args):
        folds.append(set(track.tolist()))
        return real(spec, head, X, y, track, *args)

    monkeypatch.setattr(crossval, "head_scores", recording)
    result = crossval.cross_validate(cache, "encoder", ["logreg"], layer=0, folds=5, repeats=2)
    assert len(folds) == 10 and result["tracks"] == 100
    for test in folds:
        for k in range(20):  # track 80 + k is a copy of track k
            assert (k in test) == (80 + k in test)
