"""Every head's multi-label form: a tag matrix in, each tag's own probability out."""

import json
import os

import numpy as np
import pytest
from fakes import TINY, rows
from sklearn.metrics import average_precision_score

from wav2genre_cache.heads.registry import (
    ALL_HEADS,
    Inputs,
    Rows,
    SVMHead,
    head_spec,
    heads_reading,
    load_head,
    make_head,
    save_head,
)

# Tag 2 never occurs and tag 3 always does: constant columns, as in a small train set.
CONSTANT_TAGS = {2: 0, 3: 1}


def tag_rows(name: str, seed: int) -> Rows:
    """test_registry's rows (any input kind) with 4 tags per track instead of its label."""
    base = rows(name, seed)
    rng = np.random.default_rng(100 + seed)
    per_track = (rng.random((10, 4)) < 0.5).astype(np.int64)
    per_track[:, 0] = np.arange(10) % 2  # the tag the features carry (test_registry's label)
    for k, value in CONSTANT_TAGS.items():
        per_track[:, k] = value
    return Rows(base.X, per_track[base.groups], base.groups)


def proba_of(spec, head, rows: Rows) -> np.ndarray:
    return spec.predict_proba(head, rows.X, rows.groups)


def predict_of(spec, head, rows: Rows) -> np.ndarray:
    return head.predict(rows.X, rows.groups) if spec.predicts_tracks else head.predict(rows.X)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_each_head_fits_a_tag_matrix_and_round_trips(name, tmp_path):
    spec = head_spec(name)
    train, valid = tag_rows(name, 0), tag_rows(name, 1)
    head = spec.make(0, **TINY.get(name, {}))
    assert spec.fit(head, train, valid) is head  # fitted in place, as training relies on
    assert head.multi_label_ is True
    np.testing.assert_array_equal(head.classes_, np.arange(4))
    proba = proba_of(spec, head, valid)
    assert proba.shape == (40, 4) and proba.dtype.kind == "f"
    assert np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all()
    np.testing.assert_array_equal(predict_of(spec, head, valid), (proba > 0.5).astype(int))
    if spec.predicts_tracks:  # one answer per track, given to each of its rows
        assert all(len(np.unique(proba[valid.groups == g], axis=0)) == 1 for g in range(10))
    files = save_head(head, name, tmp_path)
    assert sorted(files) == sorted(os.listdir(tmp_path))
    loaded = load_head(name, tmp_path / files[0])
    assert loaded.multi_label_ is True
    np.testing.assert_array_equal(loaded.classes_, np.arange(4))
    np.testing.assert_allclose(proba_of(spec, loaded, valid), proba, rtol=1e-5, atol=1e-6)
    # Without validation rows the torch heads hold out a plain (unstratified) split.
    alone = spec.fit(spec.make(0, **TINY.get(name, {})), train, None)
    assert proba_of(spec, alone, valid).shape == (40, 4)


@pytest.mark.parametrize("name", ["svm", "rf", "logreg", "xgb"])
def test_a_constant_tag_gets_its_training_rate(name):
    spec = head_spec(name)
    train, valid = tag_rows(name, 0), tag_rows(name, 1)
    proba = proba_of(spec, spec.fit(spec.make(0, **TINY.get(name, {})), train), valid)
    for k, value in CONSTANT_TAGS.items():
        # Exact where no model is fitted for it; XGBoost's own multi-label clips to 1e-6.
        np.testing.assert_allclose(proba[:, k], value, atol=1e-5 if name == "xgb" else 0)


def tag_task(n=500, tags=4, dim=16, seed=0):
    """Each tag present with probability 0.3; a row's features are its tags' centroids + noise."""
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, tags)) < 0.3).astype(np.int64)
    X = Y @ rng.standard_normal((tags, dim)) + rng.standard_normal((n, dim))
    return X.astype(np.float32), Y


@pytest.mark.parametrize("name", heads_reading(Inputs.VECTOR))
def test_vector_heads_learn_tags_and_not_shuffled_ones(name):
    spec = head_spec(name)
    X, Y = tag_task()
    train, test = slice(0, 300), slice(300, None)
    head = spec.fit(spec.make(0), Rows(X[train], Y[train]))
    proba = spec.predict_proba(head, X[test])
    assert average_precision_score(Y[test], proba, average="macro") >= 0.9
    assert (proba.sum(axis=1) > 1.2).any()  # independent tags: rows with two are not shared out
    shuffled = np.random.default_rng(1).permutation(Y[train])
    head = spec.fit(spec.make(0), Rows(X[train], shuffled))
    chance = average_precision_score(Y[test], spec.predict_proba(head, X[test]), average="macro")
    assert abs(chance - Y[test].mean()) < 0.15


def test_the_svm_computes_one_kernel_for_every_tag(monkeypatch):
    calls = []
    kernel = SVMHead._kernel
    monkeypatch.setattr(
        SVMHead, "_kernel", lambda self, P, Q: calls.append(1) or kernel(self, P, Q)
    )
    X, Y = tag_task(n=200)
    head = SVMHead().fit(X, Y)
    assert len(calls) == 1 and len(head.svcs_) == 4
    proba = head.predict_proba(X)
    assert len(calls) == 2  # and one against the support vectors of all tags to predict
    # Above max_precomputed rows libsvm computes the kernel itself: the same SVMs.
    np.testing.assert_allclose(
        SVMHead(max_precomputed=0).fit(X, Y).predict_proba(X), proba, atol=1e-3
    )


def test_logreg_grid_keys_reach_each_tags_regression():
    X, Y = tag_task(n=200)
    small = make_head("logreg", logisticregression__C=0.01).fit(X, Y)
    large = make_head("logreg", C=100.0).fit(X, Y)
    assert small[-1].C == 0.01 and small.multi_label_ and small[-1].coef_.shape == (4, 16)
    assert np.abs(small[-1].coef_).sum() < np.abs(large[-1].coef_).sum() / 5


def test_torch_heads_refuse_validation_tags_of_another_width():
    X, Y = tag_task(n=60)
    with pytest.raises(ValueError, match="3 tags where the training rows have 4"):
        make_head("fcnn", **TINY["fcnn"]).fit(X, Y, X_val=X, y_val=Y[:, :3])


def test_single_label_heads_saved_before_multi_label_still_load(tmp_path):
    """Files without a multi_label entry (or of the plain sklearn types) load as single-label."""
    import skops.io as sio
    from safetensors import safe_open
    from safetensors.torch import save_file
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = rows("fcnn", 0)
    X, y = train.X, train.y
    old = {
        "rf": RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y),
        "logreg": make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y),
    }
    for name, head in old.items():
        sio.dump(head, tmp_path / f"{name}.skops")
        loaded = load_head(name, tmp_path / f"{name}.skops")
        assert not getattr(loaded, "multi_label_", False)
        np.testing.assert_array_equal(loaded.predict_proba(X), head.predict_proba(X))
    svm = SVMHead().fit(X, y)
    del svm.multi_label_  # as an SVMHead from before multi-label was saved
    sio.dump(svm, tmp_path / "svm.skops")
    np.testing.assert_array_equal(load_head("svm", tmp_path / "svm.skops").predict(X), y)

    fcnn = make_head("fcnn", **TINY["fcnn"]).fit(X, y)
    save_head(fcnn, "fcnn", tmp_path / "fcnn")
    path = tmp_path / "fcnn" / "head.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert meta.pop("multi_label") == "false"
    save_file(tensors, path, metadata=meta)
    loaded = load_head("fcnn", path)
    assert loaded.multi_label_ is False
    np.testing.assert_array_equal(loaded.predict_proba(X), fcnn.predict_proba(X))

    xgb = make_head("xgb", **TINY["xgb"]).fit(X, y)
    files = save_head(xgb, "xgb", tmp_path / "xgb")
    info_path = tmp_path / "xgb" / files[1]
    info = json.loads(info_path.read_text())
    assert info.pop("multi_label") is False
    info_path.write_text(json.dumps(info))
    loaded = load_head("xgb", tmp_path / "xgb" / files[0])
    assert loaded.multi_label_ is False
    np.testing.assert_array_equal(loaded.predict_proba(X), xgb.predict_proba(X))
