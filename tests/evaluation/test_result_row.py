"""The result row stage two and fine-tuning both write: its JSON, bundle scores and calibration."""

import numpy as np

from wav2genre_cache.evaluation.calibration import Calibrator
from wav2genre_cache.evaluation.result_row import (
    CalibratedTracks,
    ResultRow,
    selection_score,
)

TRACK = {"accuracy": 0.5, "macro_f1": 0.4, "macro_auc": 0.7}


def row(**kw) -> ResultRow:
    base = dict(
        head="logreg",
        feature_set="encoder",
        layer=3,
        augmented=None,
        selected_on="valid",
        params={"C": 1.0},
        trials=None,
        selection_score=0.5004,
        valid={"accuracy": 0.5, "macro_f1": 0.4},
        test={"segment": {"accuracy": 0.3}, "track": TRACK},
        fit_seconds=1.0,
        predict_seconds=0.1,
    )
    return ResultRow(**{**base, **kw})


def test_the_json_holds_the_optional_fields_only_where_set():
    plain = row().as_json()
    assert list(plain) == [
        "head",
        "feature_set",
        "layer",
        "augmented",
        "selected_on",
        "params",
        "trials",
        "selection_score",
        "valid",
        "test",
        "fit_seconds",
        "predict_seconds",
    ]
    marked = row(best_of_head=True, bundle="bundles/logreg", test_loss=0.2).as_json()
    assert marked["best_of_head"] is True and marked["bundle"] == "bundles/logreg"
    assert marked["test_loss"] == 0.2 and "best_overall" not in marked


def test_bundle_metrics_add_tag_and_calibration_scores_where_there_are_some():
    single = row().bundle_metrics()
    assert single == {
        "test_tracks": None,  # TRACK has no n: a row written before intervals
        "test_track_accuracy": 0.5,
        "test_track_accuracy_ci": None,
        "test_track_macro_f1": 0.4,
        "test_track_macro_f1_ci": None,
        "test_track_macro_auc": 0.7,
        "test_segment_accuracy": 0.3,
        "valid": {"accuracy": 0.5, "macro_f1": 0.4},
    }
    tags = {**TRACK, "macro_pr_auc": 0.6, "micro_f1": 0.55}
    calibrated = row(
        test={"segment": {"accuracy": 0.3}, "track": tags},
        calibration={"ece_before": 0.2, "ece_after": 0.1},
    ).bundle_metrics()
    assert calibrated["test_track_macro_pr_auc"] == 0.6
    assert calibrated["test_track_micro_f1"] == 0.55
    assert (calibrated["test_ece_before"], calibrated["test_ece_after"]) == (0.2, 0.1)


def test_selection_score_breaks_ties_by_the_second_figure():
    assert selection_score(TRACK, False) == 0.5 + 1e-3 * 0.4
    assert selection_score({"macro_pr_auc": 0.6, "macro_auc": 0.8}, True) == 0.6 + 1e-3 * 0.8


def test_calibration_and_detail_of_tracks():
    raw = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    y = np.array([0, 1, 1])
    identity = CalibratedTracks.of(raw, y, False, Calibrator("none", False))
    report = identity.calibration(Calibrator("none", False))
    assert report["method"] == "none" and report["fitted_on"] is None
    assert "temperature" not in report and report["ece_before"] == report["ece_after"]
    sharper = Calibrator("temperature", False, temperature=0.5)
    tracks = CalibratedTracks.of(raw, y, False, sharper)
    report = tracks.calibration(sharper)
    assert report["temperature"] == 0.5 and report["fitted_on"] == "valid"
    detail = tracks.detail({"accuracy": 2 / 3})
    assert detail["accuracy"] == 2 / 3 and detail["y_true"] == [0, 1, 1]
    assert np.allclose(detail["proba"], np.round(sharper.apply(raw), 5))
    assert set(detail["reliability"]) == {"before", "after"}
