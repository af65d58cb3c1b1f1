"""Selection on small data: cross-validation on train+valid, grouped, one standard error."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import run_cli

from wav2genre_cache.errors import TrainError
from wav2genre_cache.evaluation.calibration import Calibrator
from wav2genre_cache.evaluation.result_row import ResultRow
from wav2genre_cache.stage_two.cv_select import choose_rule
from wav2genre_cache.stage_two.data import load_training_data
from wav2genre_cache.stage_two.folds import grouped_folds
from wav2genre_cache.stage_two.plan import plan_jobs
from wav2genre_cache.stage_two.select import Fitted, best_overall, fit_jobs
from wav2genre_cache.stage_two.train import train_heads
from wav2genre_cache.testing.synthetic import write_synthetic_cache

SMALL = {"segments_per_track": 2, "n_layers": 3, "dim": 16, "n_labels": 4, "signal": 0.4}


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    """80 tracks of 4 labels by 3 artists each: 8 validation tracks, too few to choose on."""
    path = tmp_path_factory.mktemp("cv") / "small.h5"
    return write_synthetic_cache(path, n_tracks=80, artists_per_label=3, **SMALL)


def test_a_small_validation_split_selects_by_artist_grouped_cross_validation(small_cache, tmp_path):
    lines = []
    metrics = train_heads(small_cache, tmp_path / "run", heads=["logreg", "svm"], log=lines.append)
    selection = metrics["selection"]
    assert metrics["selected_on"] == selection["rule"] == "cv"
    assert selection["grouped_by"] == "artist" and selection["folds"] == 5
    assert selection["repeats"] == 2 and selection["tracks"] == 72  # train + valid
    assert "validation is small (8 tracks" in selection["reason"]
    assert any(line.startswith("selection: validation is small") for line in lines)
    for row in metrics["results"]:
        cv = row["selection"]
        assert row["selected_on"] == "cv" and 0 < cv["accuracy_se"] < cv["accuracy_mean"] <= 1
        assert row["calibration"]["fitted_on"] == "cross-validation (held-out tracks)"
        assert 0 <= row["valid"]["accuracy"] <= 1  # the folds' held-out tracks, each once
    # The selected model is within one standard error of the best cross-validated row.
    rows = metrics["results"]
    top = max(rows, key=lambda r: r["selection"]["accuracy_mean"])["selection"]
    chosen = next(r for r in rows if r.get("best_overall"))["selection"]
    assert chosen["accuracy_mean"] >= top["accuracy_mean"] - top["accuracy_se"]
    # The comparison names the rule and shows the folds' figures.
    proc = run_cli("compare", str(tmp_path / "run"))
    table = (tmp_path / "run" / "comparison.md").read_text()
    assert proc.returncode == 0 and "Selection rule `cv`" in table
    assert "cv_track_accuracy" in table and "cv_se" in table
    assert "calibrated on the cross-validation folds' held-out tracks" in table


def test_the_validation_rule_is_kept_where_asked_or_where_validation_is_large(
    small_cache, tmp_path
):
    metrics = train_heads(
        small_cache, tmp_path / "v", heads=["logreg"], selection="valid", log=lambda _: None
    )
    assert metrics["selection"] == {"rule": "valid", "reason": "chosen on the 8 validation tracks"}
    assert all("selection" not in r and r["selected_on"] == "valid" for r in metrics["results"])
    large = write_synthetic_cache(tmp_path / "large.h5", n_tracks=1000, **SMALL)
    data = load_training_data(large)
    assert choose_rule(data, "auto").name == "valid"  # 100 validation tracks, 25 per label
    assert choose_rule(data, "cv").name == "cv"


def test_the_folds_never_hold_test_tracks_and_keep_each_artist_on_one_side(small_cache):
    data = load_training_data(small_cache)
    rule = choose_rule(data, "auto", seed=3)
    artist = data.cache.tracks.artist.to_numpy()
    test_tracks = set(data.track[data.test])
    assert len(rule.folds) == 10
    for train, held in rule.folds:
        assert not (set(train) | set(held)) & test_tracks
        assert not set(artist[train]) & set(artist[held])
    # Each repeat holds every train+valid track out exactly once.
    first_repeat = np.concatenate([held for _, held in rule.folds[:5]])
    assert len(first_repeat) == len(set(first_repeat)) == 72


def test_cross_validated_selection_reads_nothing_of_test(small_cache):
    data = load_training_data(small_cache)
    rule = choose_rule(data, "cv")
    jobs, _ = plan_jobs(data, ["logreg"], "all", lambda _: None)
    scrambled_y = data.y.copy()
    scrambled_y[data.test] = (scrambled_y[data.test] + 1) % len(data.labels)
    scrambled = dataclasses.replace(data, y=scrambled_y)

    def chosen(d):
        return [
            (f.result.params, f.result.selection)
            for f in fit_jobs(d, jobs, 0, 0, lambda _: None, rule=rule)
        ]

    assert chosen(data) == chosen(scrambled)


def _row(head: str, layer: int, mean: float, se: float = 0.05) -> Fitted:
    result = ResultRow(
        head=head,
        feature_set="encoder",
        layer=layer,
        augmented=None,
        selected_on="cv",
        params={},
        trials=None,
        selection_score=mean,
        valid=None,
        test={},
        fit_seconds=0.0,
        predict_seconds=0.0,
        selection={"rule": "cv", "accuracy_mean": mean, "accuracy_se": se},
    )
    data = SimpleNamespace(augmented=False, n_layers=13)
    return Fitted(result, None, data, Calibrator("none", False))


def test_one_standard_error_rule_leans_to_the_simpler_head_then_the_lower_layer():
    rows = [_row("fcnn", 6, 0.80), _row("logreg", 9, 0.76), _row("svm", 2, 0.74)]
    assert best_overall(rows).result.head == "logreg"  # 0.76 >= 0.80 - 0.05; svm is below
    within = [_row("fcnn", 8, 0.80), _row("fcnn", 3, 0.78), _row("fcnn", -1, 0.79)]
    assert best_overall(within).result.layer == 8  # one head: its best layer ...
    assert best_overall(within, lower_layer=True).result.layer == 3  # or the lowest (-1: all)
    # Chosen on validation: the best score, the first of equals.
    plain = [
        dataclasses.replace(r, result=dataclasses.replace(r.result, selection=None)) for r in rows
    ]
    assert best_overall(plain).result.head == "fcnn"


def test_labels_of_one_artist_leave_nothing_to_cross_validate(tmp_path):
    path = write_synthetic_cache(tmp_path / "one.h5", n_tracks=80, artists_per_label=1, **SMALL)
    data = load_training_data(path)
    rule = choose_rule(data, "auto")
    assert rule.name == "valid" and "cross-validation needs 3 folds: 3 artists" in rule.reason
    with pytest.raises(TrainError, match="--selection cv: cross-validation needs 3 folds"):
        choose_rule(data, "cv")
    tags = load_training_data(
        write_synthetic_cache(tmp_path / "tags.h5", n_tracks=80, multi_label=True, **SMALL)
    )
    assert choose_rule(tags, "auto").name == "valid"
    with pytest.raises(TrainError, match="single-label runs"):
        choose_rule(tags, "cv")


def test_few_tracks_a_label_make_fewer_folds(tmp_path):
    # 24 tracks of 6 labels: 22 train+valid, at most 4 of a label: 4 folds.
    path = write_synthetic_cache(tmp_path / "few.h5", n_tracks=24, **{**SMALL, "n_labels": 6})
    rule = choose_rule(load_training_data(path), "auto")
    assert rule.name == "cv" and rule.n_folds == 4 and len(rule.folds) == 8
    assert "2 x 4-fold cross-validation on the 22 training" in rule.reason
    # 20 tracks of 10 labels: at most 2 of a label, too few for 3 folds.
    path = write_synthetic_cache(tmp_path / "two.h5", n_tracks=20, **{**SMALL, "n_labels": 10})
    rule = choose_rule(load_training_data(path), "auto")
    assert rule.name == "valid" and "needs 3 folds" in rule.reason


def test_grouped_folds_hold_out_only_tested_tracks():
    y = np.repeat(np.arange(3), 10)
    groups = np.array([f"a{i // 2}" for i in range(30)])
    tested = y != 2
    folds = grouped_folds(y, groups, tested, folds=5, repeats=1, seed=0)
    held = np.concatenate([h for _, h in folds])
    assert sorted(held) == list(np.flatnonzero(tested))
    assert all(set(np.flatnonzero(~tested)) <= set(train) for train, _ in folds)


def test_the_command_line_refuses_an_unknown_rule(small_cache, tmp_path):
    proc = run_cli(
        "train-heads",
        str(small_cache),
        "--out",
        str(tmp_path / "r"),
        "--selection",
        "x",
        check=False,
    )
    assert proc.returncode != 0 and "--selection 'x': use one of auto, valid, cv" in proc.stderr
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_group_by_none_folds_by_recording_only(small_cache, tmp_path):
    data = load_training_data(small_cache)
    rule = choose_rule(data, "cv", group_by="none")
    assert rule.grouped_by == "recording" and "folds grouped by recording" in rule.reason
    artist = data.cache.tracks.artist.to_numpy()
    assert any(set(artist[train]) & set(artist[held]) for train, held in rule.folds)
    proc = run_cli(
        "train-heads", str(small_cache), "--out", str(tmp_path / "r"), "--group-by", "album",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--group-by 'album': no track of the cache has a 'album' value; use one of artist, " in (
        proc.stderr
    )
