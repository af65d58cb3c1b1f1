import os

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.utils.estimator_checks import parametrize_with_checks

from wav2genre_cache.errors import HeadError
from wav2genre_cache.heads.registry import (
    ALL_HEADS,
    HEADS,
    AttentionPoolingClassifier,
    FCNNClassifier,
    ForestHead,
    Inputs,
    LogisticRegressionHead,
    Rows,
    SVMHead,
    XGBHead,
    head_files,
    head_spec,
    load_head,
    make_head,
    save_head,
)

FOREST_XFAIL = {
    # As sklearn's own forest: bootstraps of repeated rows are not those of weighted ones.
    "check_sample_weight_equivalence_on_dense_data": "bootstrap sampling",
    "check_sample_weight_equivalence_on_sparse_data": "bootstrap sampling",
    # Pure leaves give a tag probability of exactly 0 or 1, where the check wants (0, 1).
    "check_classifiers_multilabel_output_format_predict_proba": "pure leaves",
}


@parametrize_with_checks(
    [
        FCNNClassifier(max_epochs=40, hidden_layers=(16,), learning_rate=1e-2),
        SVMHead(),
        XGBHead(n_estimators=5),
        # One layer: the checks feed plain feature matrices. No groups: each row is its own track.
        FCNNClassifier(n_layers=1, max_epochs=40, hidden_layers=(16,), learning_rate=1e-2),
        AttentionPoolingClassifier(hidden=16, max_epochs=40, learning_rate=1e-2),
        # sklearn's own, subclassed to take tag matrices: still estimators by sklearn's rules.
        ForestHead(n_estimators=5),
        LogisticRegressionHead(),
    ],
    expected_failed_checks=lambda est: (
        {
            # Early stopping holds out a stratified tenth, so sample order changes the fitted weights.
            "check_sample_weight_equivalence_on_dense_data": "no sample weights",
        }
        if isinstance(est, FCNNClassifier | AttentionPoolingClassifier)
        else FOREST_XFAIL
        if isinstance(est, ForestHead)
        else {}
    ),
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def separable(n=300, n_classes=4, seed=0):
    X, y = make_classification(
        n_samples=n,
        n_features=20,
        n_informative=10,
        n_classes=n_classes,
        class_sep=4.0,
        random_state=seed,
    )
    return X.astype(np.float32), y


@pytest.mark.parametrize("name", HEADS)
def test_every_head_learns_a_separable_task_and_round_trips(name, tmp_path):
    X, y = separable()
    head = make_head(name, seed=0).fit(X[:200], y[:200])
    assert (head.predict(X[200:]) == y[200:]).mean() > 0.85
    proba = head.predict_proba(X[200:])
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    files = save_head(head, name, tmp_path)
    # Every file written is reported (write_bundle checksums them all), and nothing else is written.
    assert files == list(head_files(name)) and sorted(files) == sorted(os.listdir(tmp_path))
    loaded = load_head(name, tmp_path / files[0])
    np.testing.assert_allclose(loaded.predict_proba(X[200:]), proba, rtol=1e-5, atol=1e-6)


def test_fcnn_is_deterministic_under_a_seed():
    X, y = separable()
    a = FCNNClassifier(max_epochs=10, random_state=3).fit(X, y).predict_proba(X)
    b = FCNNClassifier(max_epochs=10, random_state=3).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [2, 4])
def test_an_fcnn_fit_does_not_depend_on_torchs_thread_count(threads):
    # The project's machines differ in cores, and torch uses one thread per core: the FCNN fits
    # on one thread wherever it runs, so a seed gives the same weights. On torch's threads, 1
    # against 2 moved these weights by up to 5e-4 (and its probabilities by 3e-3).
    import torch

    X, y = make_classification(480, 768, n_informative=40, n_classes=10, random_state=0)
    X = X.astype(np.float32)
    before = torch.get_num_threads()
    try:
        weights = []
        for n in (1, threads):
            torch.set_num_threads(n)
            head = FCNNClassifier(max_epochs=5, random_state=3).fit(X, y)
            assert torch.get_num_threads() == n  # the caller's threads are left as they were
            weights.append({k: v.numpy() for k, v in head.net_.state_dict().items()})
    finally:
        torch.set_num_threads(before)
    for name, value in weights[0].items():
        np.testing.assert_array_equal(weights[1][name], value, err_msg=name)


def test_foreign_or_unsafe_files_are_refused(tmp_path):
    import json

    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    sio.dump(FunctionTransformer(func=json.loads), tmp_path / "head.skops")  # a function: not safe
    with pytest.raises(HeadError, match="not known to be safe"):
        load_head("svm", tmp_path / "head.skops")
    (tmp_path / "head.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(HeadError, match="not a valid fcnn head"):
        load_head("fcnn", tmp_path / "head.safetensors")
    with pytest.raises(HeadError, match="unknown head"):
        make_head("knn")


def spectrogram_task(n=160, mels=16, frames=24, seed=0):
    """Four classes, each raising a different band of mel rows: separable by eye."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    X = rng.standard_normal((n, mels, frames)).astype(np.float32)
    for k in range(4):
        X[y == k, k * 4 : (k + 1) * 4, :] += 2.0
    return X.reshape(n, -1), y


@pytest.mark.parametrize("name", ["cnn", "lstm", "cnn-lstm"])
def test_spectrogram_heads_learn_and_round_trip(name, tmp_path):
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    X, y = spectrogram_task()
    head = make_head(name, seed=0, n_mels=16, max_epochs=15)
    with pytest.raises(NotFittedError):
        head.predict(X)
    assert clone(head).get_params()["kind"] == name
    head.fit(X[:120], y[:120], X_val=X[120:140], y_val=y[120:140])
    assert (head.predict(X[140:]) == y[140:]).mean() >= 0.9
    files = save_head(head, name, tmp_path)
    assert files == list(head_files(name)) == ["head.safetensors"]
    np.testing.assert_allclose(
        load_head(name, tmp_path / files[0]).predict_proba(X[140:]),
        head.predict_proba(X[140:]),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="not n_mels=16 bands"):
        make_head(name, n_mels=16).fit(X[:, :-1], y)


def test_attention_pooling_finds_the_segment_that_carries_the_label(tmp_path):
    from wav2genre_cache.evaluation.metrics import aggregate_tracks

    rng = np.random.default_rng(0)
    n_tracks, segs, dim = 240, 4, 16
    y_track = np.arange(n_tracks) % 3
    centres = rng.standard_normal((3, dim)) * 1.6
    X = rng.standard_normal((n_tracks, segs, dim)).astype(np.float32)
    key = rng.integers(0, segs, n_tracks)  # the one informative segment of each track
    X[np.arange(n_tracks), key] += centres[y_track] + 3.0  # louder, and labelled
    groups = np.repeat(np.arange(n_tracks), segs)
    y = np.repeat(y_track, segs)
    X = X.reshape(-1, dim)
    train, test = groups < 180, groups >= 180
    head = make_head("attention", seed=0).fit(X[train], y[train], groups=groups[train])
    att = head.predict(X[test], groups=groups[test])
    att_acc = (att[::segs] == y_track[180:]).mean()
    mean_head = make_head("logreg").fit(X[train], y[train])
    _, track_proba = aggregate_tracks(mean_head.predict_proba(X[test]), groups[test])
    mean_acc = (track_proba.argmax(1) == y_track[180:]).mean()
    assert att_acc >= 0.9 and att_acc > mean_acc
    weights = head.attention_(X[test], groups[test]).reshape(-1, segs)
    np.testing.assert_allclose(weights.sum(1), 1, atol=1e-5)
    assert (weights.argmax(1) == key[180:]).mean() > 0.8
    files = save_head(head, "attention", tmp_path)
    loaded = load_head("attention", tmp_path / files[0])
    np.testing.assert_allclose(
        loaded.predict_proba(X[test], groups=groups[test]),
        head.predict_proba(X[test], groups=groups[test]),
        atol=1e-6,
    )


# ---- a row's answer does not depend on the rows beside it -------------------------------------

# Quick versions of each head: what is checked is prediction, not learning.
QUICK = {"rf": {"max_depth": 6}, "xgb": {"n_estimators": 5}}


def subset_task(inputs: Inputs, n: int = 224):
    """Rows of the shape a head of `inputs` reads, 4 labels, and that head's quick parameters."""
    if inputs is Inputs.SPECTROGRAM:
        return (*spectrogram_task(n=n, seed=1), {"n_mels": 16, "max_epochs": 2})
    y = np.arange(n) % 4
    X = np.random.default_rng(1).standard_normal((n, 48)).astype(np.float32) + y[:, None] * 0.5
    params = {
        Inputs.VECTOR: {},
        Inputs.ALL_LAYERS: {"n_layers": 3, "max_epochs": 2},
        Inputs.SEGMENTS: {"max_epochs": 2},
    }[inputs]
    return X, y, params


def promised_scores(spec, head, X, groups) -> list[np.ndarray]:
    """What a head answers per row: predict_proba, and decision_function where it has one."""
    out = [spec.predict_proba(head, X, groups)]
    if hasattr(head, "decision_function"):
        out.append(np.asarray(head.decision_function(X)))
    return out


@pytest.mark.parametrize("multi_label", [False, True], ids=["labels", "tags"])
@pytest.mark.parametrize("name", ALL_HEADS)
def test_a_rows_scores_do_not_depend_on_the_batch(name, multi_label):
    # BLAS blocks a matrix product by its shape and the CPU's instruction set: the SVM's kernel,
    # one float32 product, gave -0.24040023 for a row scored among all rows and -0.24040026 in a
    # subset (2-core AMD EPYC). Every head promises exact equality, on every CPU.
    spec = head_spec(name)
    X, y, params = subset_task(spec.inputs)
    Y = np.stack([y == 0, y == 1, y % 2 == 0], 1).astype(int) if multi_label else y
    # A track head answers per track: rows come in pairs of one track, subsets keep whole pairs.
    groups = np.arange(len(X)) // 2 if spec.predicts_tracks else None
    pair = 2 if spec.predicts_tracks else 1
    head = spec.make(seed=0, **QUICK.get(name, params))
    spec.fit(head, Rows(X[:96], Y[:96], None if groups is None else groups[:96]))
    X, groups = X[96:], None if groups is None else groups[96:]

    def scores(rows):
        return promised_scores(spec, head, X[rows], None if groups is None else groups[rows])

    everything = scores(np.arange(len(X)))
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 64):
        starts = np.arange(0, len(X) - size * pair + 1, pair)
        for start in rng.choice(starts, min(3, len(starts)), replace=False):
            rows = np.arange(start, start + size * pair)
            for whole, part in zip(everything, scores(rows), strict=True):
                np.testing.assert_array_equal(part, whole[rows], err_msg=f"{size * pair} rows")
    # In another order, each row's answer moves with it (a track's own rows keep their order).
    order = (rng.permutation(len(X) // pair)[:, None] * pair + np.arange(pair)).ravel()
    for whole, reordered in zip(everything, scores(order), strict=True):
        np.testing.assert_array_equal(reordered, whole[order], err_msg="rows reordered")


def test_the_forest_fits_a_few_tracks_without_sklearns_bootstrap_advice():
    # Its half-size bootstraps are deliberate: on 12 rows scikit-learn warned once per fit,
    # that is once per layer of every run on a small collection.
    import warnings

    X, y = make_classification(n_samples=12, n_features=6, n_informative=3, random_state=0)
    spec = head_spec("rf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec.make(0).fit(X, y)
