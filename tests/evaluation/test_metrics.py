import json

import numpy as np
import pytest

from wav2genre_cache.evaluation.metrics import (
    aggregate_tracks,
    classification_metrics,
    multilabel_metrics,
)


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


def _random_tags(seed: int, n: int = 300, k: int = 8):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, k)) < rng.uniform(0.05, 0.5, k)).astype(int)
    proba = np.round(np.clip(0.35 * Y + 0.65 * rng.random((n, k)), 0, 1), 2)  # ties
    return Y, proba, [f"tag{i}" for i in range(k)]


@pytest.mark.parametrize("thresholds", [None, 0.4, "per-tag"])
def test_multilabel_agrees_with_scikit_learn_on_random_scores(thresholds):
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    Y, proba, labels = _random_tags(0)
    Y[:, 2] = 0  # no positives: left out of the ranking metrics
    Y[:, 5] = 1  # no negatives: likewise
    if thresholds == "per-tag":
        thresholds = np.linspace(0.3, 0.7, len(labels))
    m = multilabel_metrics(Y, proba, labels, thresholds=thresholds)
    thr = np.broadcast_to(0.5 if thresholds is None else thresholds, (len(labels),))
    pred = (proba >= thr).astype(int)
    ranked = [k for k in range(len(labels)) if k not in (2, 5)]
    assert set(m["auc_per_class"]) == set(m["pr_auc_per_class"]) == {labels[k] for k in ranked}
    ap = [average_precision_score(Y[:, k], proba[:, k]) for k in ranked]
    auc = [roc_auc_score(Y[:, k], proba[:, k]) for k in ranked]
    assert [m["pr_auc_per_class"][labels[k]] for k in ranked] == pytest.approx(ap)
    assert [m["auc_per_class"][labels[k]] for k in ranked] == pytest.approx(auc)
    assert m["macro_pr_auc"] == pytest.approx(np.mean(ap))
    assert m["macro_auc"] == pytest.approx(np.mean(auc))
    assert m["micro_pr_auc"] == pytest.approx(average_precision_score(Y, proba, average="micro"))
    assert m["micro_f1"] == pytest.approx(f1_score(Y, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(f1_score(Y, pred, average="macro", zero_division=0))
    assert m["accuracy"] == pytest.approx(accuracy_score(Y, pred))  # subset accuracy
    per = [m["per_class"][label] for label in labels]
    p = precision_score(Y, pred, average=None, zero_division=0)
    r = recall_score(Y, pred, average=None, zero_division=0)
    assert [c["precision"] for c in per] == pytest.approx(p)
    assert [c["recall"] for c in per] == pytest.approx(r)
    assert [c["support"] for c in per] == Y.sum(axis=0).tolist()
    assert [c["threshold"] for c in per] == pytest.approx(thr)
    assert m["n"] == len(Y)
    json.dumps(m)


def test_multilabel_perfect_scores_give_one():
    Y, _, labels = _random_tags(1)
    m = multilabel_metrics(Y, Y.astype(float), labels, curves=True)
    for key in ("macro_pr_auc", "macro_auc", "micro_pr_auc", "micro_f1", "macro_f1", "accuracy"):
        assert m[key] == 1.0, key
    assert np.sum(m["cooccurrence_errors"]) == 0


def test_multilabel_cooccurrence_errors_by_hand():
    #        truth     predicted
    # row 0  a         a b       -> a's row with a false b
    # row 1  a c       b         -> a and c missed, each with a false b
    # row 2  b         -          -> b missed
    # row 3  -         c         -> a false c on a row with no true tag: counted nowhere
    # row 4  b         b         -> exact
    Y = np.array([[1, 0, 0], [1, 0, 1], [0, 1, 0], [0, 0, 0], [0, 1, 0]])
    pred = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0]])
    m = multilabel_metrics(Y, 0.2 + 0.6 * pred, ["a", "b", "c"])
    assert m["cooccurrence_errors"] == [[1, 2, 0], [0, 1, 0], [0, 1, 1]]
    assert m["accuracy"] == pytest.approx(1 / 5)
    assert m["per_class"]["b"] == {
        "precision": pytest.approx(1 / 3),
        "recall": 0.5,
        "f1": 0.4,
        "support": 2,
        "threshold": 0.5,
    }


def test_multilabel_curves_match_scikit_learn():
    from sklearn.metrics import precision_recall_curve, roc_curve

    Y, proba, labels = _random_tags(2, k=3)
    m = multilabel_metrics(Y, proba, labels, curves=True)
    assert set(m["roc"]) == set(m["pr"]) == set(labels)
    fpr, tpr, _ = roc_curve(Y[:, 1], proba[:, 1])
    assert m["roc"]["tag1"]["fpr"] == np.round(fpr, 5).tolist()
    assert m["roc"]["tag1"]["tpr"] == np.round(tpr, 5).tolist()
    prec, rec, _ = precision_recall_curve(Y[:, 1], proba[:, 1])
    assert m["pr"]["tag1"] == {
        "precision": np.round(prec, 5).tolist(),
        "recall": np.round(rec, 5).tolist(),
    }
    assert "roc" not in multilabel_metrics(Y, proba, labels)


def test_macro_f1_leaves_out_labels_neither_in_the_rows_nor_predicted():
    # Ten labels known to the model, three in the test rows (the others' artists all trained):
    # the macro mean is over the labels the rows hold or the model predicts, as sklearn's.
    from sklearn.metrics import f1_score

    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 7])  # one error into a label with no test track
    proba = np.eye(10)[pred]
    m = classification_metrics(y, proba, [str(k) for k in range(10)])
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 2 / 3 + 0) / 4)
