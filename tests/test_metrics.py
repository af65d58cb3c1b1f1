import numpy as np
import pytest

from wav2genre_cache.metrics import aggregate_tracks, classification_metrics


def test_track_aggregation_is_the_mean_of_segment_probabilities():
    proba = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    tracks, agg = aggregate_tracks(proba, np.array([5, 5, 7, 7]))
    assert tracks.tolist() == [5, 7]
    np.testing.assert_allclose(agg, [[0.6, 0.4], [0.4, 0.6]])


def test_metrics_on_a_hand_made_case():
    # truth: a a b b c c ; predicted: a b b b c a
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    proba = np.full((6, 3), 0.1)
    proba[np.arange(6), pred] = 0.8
    m = classification_metrics(y, proba, ["a", "b", "c"], curves=True)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per class: a P=1/2 R=1/2; b P=2/3 R=1; c P=1 R=1/2
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert (
        m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
        and m["per_class"]["b"]["recall"] == 1
    )
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # AUC of class b: positives (rows 2,3) score 0.8, negatives 0.1,0.8,0.1,0.1 -> (4 - 0.5) / 4
    assert m["auc_per_class"]["b"] == pytest.approx(0.875)
    assert set(m["roc"]) == {"a", "b", "c"}


def test_auc_skips_a_class_missing_from_the_truth():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    m = classification_metrics(y, proba, ["a", "b", "c"])
    assert set(m["auc_per_class"]) == {"a", "b"} and m["macro_auc"] == 1.0


def test_agrees_with_scikit_learn_on_random_predictions():
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 200)
    proba = rng.dirichlet(np.ones(5), 200)
    proba[np.arange(0, 200, 3), y[::3]] += 0.5  # some signal
    proba = np.round(proba, 2)  # ties, which AUC must count as one half
    m = classification_metrics(y, proba, list("abcde"))
    pred = proba.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["confusion"] == confusion_matrix(y, pred).tolist()
    for k, label in enumerate("abcde"):
        assert m["auc_per_class"][label] == pytest.approx(roc_auc_score(y == k, proba[:, k]))
