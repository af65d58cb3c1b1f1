import json
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.special import expit, softmax

from wav2genre_cache.errors import CalibrationError, Wav2GenreError
from wav2genre_cache.evaluation.calibration import (
    Calibrator,
    choose_thresholds,
    expected_calibration_error,
    fit_calibrator,
    reliability,
)
from wav2genre_cache.evaluation.metrics import multilabel_metrics


def single_label(rng, n: int, scale: float, k: int = 10):
    """Scores softmax(z * scale) with labels drawn from softmax(z): over-confident for scale > 1."""
    z = rng.normal(0, 1.5, (n, k))
    y = (softmax(z, axis=1).cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return softmax(z * scale, axis=1), y


def multi_label(rng, n: int, scale: float, k: int = 20):
    """Tag scores sigmoid(z * scale) with tags drawn from sigmoid(z)."""
    z = rng.normal(-1, 1.5, (n, k))
    return expit(z * scale), (rng.random((n, k)) < expit(z)).astype(int)


KINDS = [(False, single_label), (True, multi_label)]


def held_out_ece(make, multi: bool, method: str, seed: int, scale: float):
    """A calibrator fitted on 2,000 rows, and the ECE of 2,000 other rows before and after it."""
    rng = np.random.default_rng(seed)
    fit_p, fit_y = make(rng, 2000, scale=scale)
    test_p, test_y = make(rng, 2000, scale=scale)
    cal = fit_calibrator(fit_p, fit_y, multi, method)
    before = expected_calibration_error(test_p, test_y, multi)
    return cal, before, expected_calibration_error(cal.apply(test_p), test_y, multi)


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
@pytest.mark.parametrize(("multi", "make"), KINDS, ids=["single", "multi"])
def test_calibration_lowers_the_ece_of_overconfident_scores_on_held_out_rows(multi, make, method):
    cal, before, after = held_out_ece(make, multi, method, seed=1, scale=3.0)
    assert cal.method == method
    assert before > 0.1  # the set-up is over-confident
    assert after < before / 3, (before, after)


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
@pytest.mark.parametrize(("multi", "make"), KINDS, ids=["single", "multi"])
def test_calibrated_scores_are_not_made_notably_worse(multi, make, method):
    _, before, after = held_out_ece(make, multi, method, seed=2, scale=1.0)
    assert after <= before + 0.03, (before, after)


@pytest.mark.parametrize(("multi", "make"), KINDS, ids=["single", "multi"])
def test_temperature_scaling_recovers_a_known_temperature(multi, make):
    p, y = make(np.random.default_rng(3), 5000, scale=3.0)
    assert fit_calibrator(p, y, multi, "temperature").temperature == pytest.approx(3.0, rel=0.1)


@pytest.mark.parametrize("method", ["none", "temperature", "isotonic"])
@pytest.mark.parametrize(("multi", "make"), KINDS, ids=["single", "multi"])
def test_json_round_trip_applies_exactly_the_same_map(multi, make, method):
    rng = np.random.default_rng(4)
    p, y = make(rng, 600, scale=2.0)
    cal = fit_calibrator(p, y, multi, method)
    text = json.dumps(cal.as_json(), allow_nan=False)  # plain JSON
    back = Calibrator.from_json(json.loads(text))
    new_p, _ = make(rng, 300, scale=2.0)
    out = cal.apply(new_p)
    assert np.array_equal(back.apply(new_p), out)
    assert np.array_equal(cal.apply(new_p), out)  # deterministic
    assert out.shape == new_p.shape and out.dtype == np.float64
    assert back == cal
    if not multi:
        np.testing.assert_allclose(out.sum(axis=1), 1.0)
    assert ((out >= 0) & (out <= 1)).all()


def test_a_bundle_without_calibration_is_the_identity():
    cal = Calibrator.from_json(None)
    p = softmax(np.random.default_rng(5).normal(size=(7, 4)), axis=1).astype(np.float32)
    out = cal.apply(p)
    assert cal.method == "none" and out.dtype == np.float64
    assert np.array_equal(out, p.astype(np.float64))


def test_auto_takes_isotonic_for_tags_with_enough_rows_and_temperature_for_labels():
    p, y = multi_label(np.random.default_rng(6), 50, scale=2.0)
    assert fit_calibrator(p, y, True, "auto", min_isotonic=50).method == "isotonic"
    assert fit_calibrator(p[:49], y[:49], True, "auto", min_isotonic=50).method == "temperature"
    assert fit_calibrator(p, y, True).method == "temperature"  # default: 1000 rows
    # Single labels: temperature at any size, so the most probable label never changes.
    p, y = single_label(np.random.default_rng(6), 50, scale=2.0)
    assert fit_calibrator(p, y, False, "auto", min_isotonic=50).method == "temperature"
    assert fit_calibrator(p, y, False, "isotonic").method == "isotonic"  # when asked for


def test_temperature_keeps_the_top_label():
    p, y = single_label(np.random.default_rng(7), 500, scale=3.0)
    cal = fit_calibrator(p, y, False, "temperature")
    assert np.array_equal(cal.apply(p).argmax(axis=1), p.argmax(axis=1))


def test_isotonic_keeps_the_identity_for_a_class_without_both_kinds_of_rows():
    rng = np.random.default_rng(8)
    p, y = single_label(rng, 300, scale=2.0, k=4)
    y[y == 3] = 0  # class 3 never true
    cal = fit_calibrator(p, y, False, "isotonic")
    assert cal.isotonic[3] == {"x": [0.0, 1.0], "y": [0.0, 1.0]}
    assert cal.isotonic[0] != cal.isotonic[3]
    Y = (rng.random((300, 3)) < 0.3).astype(int)
    Y[:, 1] = 1  # a tag on every row: no negatives
    cal = fit_calibrator(rng.random((300, 3)), Y, True, "isotonic")
    assert cal.isotonic[1] == {"x": [0.0, 1.0], "y": [0.0, 1.0]}


def test_isotonic_rows_the_maps_send_to_zero_keep_their_raw_scores():
    maps = [{"x": [0.5, 1.0], "y": [0.0, 1.0]}] * 3  # 0 below 0.5
    cal = Calibrator("isotonic", multi_label=False, isotonic=maps)
    out = cal.apply(np.array([[0.3, 0.3, 0.4], [0.8, 0.1, 0.1]]))
    np.testing.assert_allclose(out, [[0.3, 0.3, 0.4], [1.0, 0.0, 0.0]])


def test_user_mistakes_are_calibration_errors():
    p, y = single_label(np.random.default_rng(9), 20, scale=1.0)
    with pytest.raises(CalibrationError, match="unknown calibration method 'platt'"):
        fit_calibrator(p, y, False, "platt")
    with pytest.raises(CalibrationError, match="multi-label needs"):
        fit_calibrator(p, y, True)
    with pytest.raises(CalibrationError, match="single-label needs"):
        fit_calibrator(p, np.eye(10, dtype=int)[y], False)
    with pytest.raises(CalibrationError, match="no rows"):
        fit_calibrator(p[:0], y[:0], False, "temperature")
    cal = fit_calibrator(p, y, False, "isotonic")
    with pytest.raises(CalibrationError, match="9 classes"):
        cal.apply(p[:, :9])
    with pytest.raises(CalibrationError, match="unreadable"):
        Calibrator.from_json({"multi_label": False})
    assert issubclass(CalibrationError, Wav2GenreError)


def test_ece_by_hand_single_label():
    # bins of 0.2: confidences 0.9, 0.9 (one right) in the last; 0.7 (right), 0.65 (wrong) in
    # [0.6, 0.8): |0.5 - 0.9| * 2/4 + |0.5 - 0.675| * 2/4
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.35, 0.65]])
    y = np.array([0, 1, 1, 0])
    assert expected_calibration_error(p, y, False, bins=5) == pytest.approx(0.2875)
    r = reliability(p, y, False, bins=5)
    assert r["count"] == [0, 0, 0, 2, 2] and sum(r["count"]) == len(p)
    assert r["confidence"][:3] == [None, None, None] and r["accuracy"][0] is None
    assert r["confidence"][3] == pytest.approx(0.675) and r["accuracy"][3] == 0.5
    assert r["edges"] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert r["ece"] == pytest.approx(0.2875)


def test_ece_by_hand_multi_label_counts_every_row_and_tag():
    # pairs (0.9, 1), (0.85, 0) in the last bin; (0.25, 0) in [0.2, 0.4); (0.1, 0) in the first
    p = np.array([[0.9, 0.25], [0.85, 0.1]])
    Y = np.array([[1, 0], [0, 0]])
    expected = 0.375 * 2 / 4 + 0.25 / 4 + 0.1 / 4
    assert expected_calibration_error(p, Y, True, bins=5) == pytest.approx(expected)
    assert reliability(p, Y, True, bins=5)["count"] == [1, 1, 0, 0, 2]
    r = reliability(*multi_label(np.random.default_rng(10), 300, scale=1.0), True)
    assert sum(r["count"]) == 300 * 20 and len(r["edges"]) == 16


def test_a_perfect_score_is_calibrated():
    y = np.array([0, 1, 2, 1])
    assert expected_calibration_error(np.eye(3)[y], y, False) == 0.0


def test_thresholds_maximise_f1_by_hand():
    p = np.array(
        [
            [0.9, 0.9, 0.9, 0.8],
            [0.8, 0.8, 0.9, 0.6],
            [0.7, 0.7, 0.2, 0.4],
            [0.6, 0.6, 0.2, 0.2],
            [0.5, 0.5, 0.1, 0.2],
            [0.4, 0.4, 0.1, 0.2],
        ]
    )
    Y = np.array(
        [[1, 0, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]]
    )
    # tag 0: the top 4 rows give F1 = 2*3 / (4 + 3), the best: between 0.6 and 0.5.
    # tag 1: no positives -> 0.5. tag 2: tied scores are one threshold: top 4, between 0.2 and 0.1.
    # tag 3: rows 3-5 tie at 0.2, so the cuts are the top 1, 2, 3 or 6 rows; all 6 is best
    # (F1 8/10) and there is no lower score: the threshold is the lowest score itself.
    thr = choose_thresholds(p, Y)
    np.testing.assert_allclose(thr, [0.55, 0.5, 0.15, 0.2])
    f1 = multilabel_metrics(Y, p, list("abcd"), thresholds=thr)["per_class"]
    assert f1["a"]["f1"] == pytest.approx(6 / 7) and f1["c"]["f1"] == pytest.approx(6 / 7)
    # equal best F1 (2/3 with the top row or with all four): the highest threshold wins
    tie = choose_thresholds(np.array([[0.8], [0.6], [0.4], [0.2]]), np.array([[1], [0], [0], [1]]))
    np.testing.assert_allclose(tie, [0.7])


def test_thresholds_reach_the_best_f1_of_any_cut_and_are_fast():
    rng = np.random.default_rng(11)
    p = np.round(rng.random((2000, 56)), 3)  # ties
    Y = (rng.random((2000, 56)) < p * rng.uniform(0.1, 1, 56)).astype(int)
    Y[:, 7] = 0
    start = time.perf_counter()
    thr = choose_thresholds(p, Y)
    assert time.perf_counter() - start < 1.0
    assert thr[7] == 0.5
    for k in (0, 13, 55):
        scores = np.unique(p[:, k])
        f1s = [_f1(Y[:, k], p[:, k] >= s) for s in scores]
        assert _f1(Y[:, k], p[:, k] >= thr[k]) == pytest.approx(max(f1s))
        assert scores[scores < thr[k]].size == 0 or thr[k] > scores[scores < thr[k]].max()


def _f1(truth: np.ndarray, pred: np.ndarray) -> float:
    tp = (truth.astype(bool) & pred).sum()
    return 2 * tp / (truth.sum() + pred.sum())


def test_calibration_loads_neither_sklearn_nor_h5py_nor_torch():
    code = (
        "import sys, wav2genre_cache.evaluation.calibration; "
        "print(sorted(m for m in ('sklearn', 'h5py', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_equal_count_reliability_bins_carry_counts_and_intervals():
    from wav2genre_cache.evaluation.calibration import reliability_by_count

    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(4), 95)
    y = rng.integers(0, 4, 95)
    bins = reliability_by_count(proba, y, multi_label=False)
    assert len(bins["count"]) == 9 and sum(bins["count"]) == 95 and min(bins["count"]) >= 10
    assert bins["confidence"] == sorted(bins["confidence"])  # bins follow the confidence
    for a, low, high in zip(bins["accuracy"], bins["low"], bins["high"], strict=True):
        assert low <= a <= high
    few = reliability_by_count(proba[:7], y[:7], multi_label=False)
    assert few["count"] == [7]  # too few tracks for more than one bin
    tags = reliability_by_count(rng.random((7, 5)), rng.integers(0, 2, (7, 5)), multi_label=True)
    assert sum(tags["count"]) == 35 and len(tags["count"]) == 3  # (track, tag) pairs
