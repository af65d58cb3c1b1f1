"""Every head is one registry entry; the training loop asks the entry, never the head's name."""

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fakes import TINY, rows

from wav2genre_cache.errors import HeadError
from wav2genre_cache.heads.registry import (
    ALL_HEADS,
    REGISTRY,
    AttentionPoolingClassifier,
    FCNNClassifier,
    ForestHead,
    Inputs,
    PipelineHead,
    Rows,
    SpectrogramClassifier,
    SVMHead,
    XGBHead,
    _by_name,
    head_spec,
    load_head,
    save_head,
)


def test_every_head_is_registered_once_under_its_name():
    assert list(REGISTRY) == list(ALL_HEADS) and len(set(ALL_HEADS)) == len(ALL_HEADS) == 10
    assert all(spec.name == name for name, spec in REGISTRY.items())
    with pytest.raises(ValueError, match=r"\['svm'\] registered more than once"):
        _by_name(REGISTRY["svm"], REGISTRY["rf"], REGISTRY["svm"])
    with pytest.raises(HeadError, match="unknown head 'knn'; available: fcnn, svm"):
        head_spec("knn")
    # Every estimator class of the package is made by an entry.
    made = {type(spec.make(0, **TINY.get(name, {}))) for name, spec in REGISTRY.items()}
    own = {SVMHead, XGBHead, FCNNClassifier, AttentionPoolingClassifier}
    own |= {ForestHead, PipelineHead}  # rf and logreg: sklearn's, taught tag matrices
    assert own | {SpectrogramClassifier} <= made


def test_the_command_line_help_names_every_head():
    from wav2genre_cache.cli.options import TRAIN_OPTIONS

    heads = next(p for p in TRAIN_OPTIONS if p.name == "heads")
    help_text = heads.annotation.__metadata__[0].help
    assert [h for h in ALL_HEADS if h not in help_text] == []


@pytest.mark.parametrize("name", ALL_HEADS)
def test_each_entry_makes_a_head_that_fits_predicts_and_round_trips(name, tmp_path):
    spec = head_spec(name)
    train, valid = rows(name, 0), rows(name, 1)
    head = spec.fit(spec.make(0, **TINY.get(name, {})), train, valid)
    assert head.multi_label_ is False  # label indices: single-label (tests/test_multilabel_heads)
    proba = spec.predict_proba(head, valid.X, valid.groups)
    assert proba.shape == (40, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    if spec.predicts_tracks:  # one answer per track, given to each of its rows
        assert all(len(np.unique(proba[valid.groups == g], axis=0)) == 1 for g in range(10))
    files = save_head(head, name, tmp_path)
    assert files == list(spec.format.files) and sorted(files) == sorted(os.listdir(tmp_path))
    loaded = load_head(name, tmp_path / files[0])
    assert not loaded.multi_label_
    np.testing.assert_allclose(
        spec.predict_proba(loaded, valid.X, valid.groups), proba, rtol=1e-5, atol=1e-6
    )


class Recorder:
    """An estimator that records what fit was given."""

    def fit(self, X, y, **kwargs):
        self.kwargs = sorted(kwargs)
        return self


@pytest.mark.parametrize("inputs", list(Inputs))
@pytest.mark.parametrize("stops_early", [True, False])
def test_one_fit_signature_gives_each_head_what_it_takes(inputs, stops_early):
    spec = replace(REGISTRY["svm"], inputs=inputs, stops_early=stops_early)
    train = valid = Rows(np.zeros((4, 2)), np.arange(4) % 2, np.arange(4))
    track = ["groups"] if inputs is Inputs.SEGMENTS else []
    early = ["X_val", "y_val"] + (["groups_val"] if track else []) if stops_early else []
    assert spec.fit(Recorder(), train, valid).kwargs == sorted(track + early)
    assert spec.fit(Recorder(), train, None).kwargs == track  # no validation rows


def test_an_svm_head_saved_before_it_moved_module_still_loads(tmp_path):
    # skops records a type by its module: heads saved when SVMHead lived in heads.py name
    # wav2genre_cache.heads.SVMHead, which still resolves (heads re-exports it) and is trusted.
    import zipfile

    spec = head_spec("svm")
    train = rows("svm", 0)
    head = spec.fit(spec.make(0), train)
    (tmp_path / "new").mkdir()
    save_head(head, "svm", tmp_path / "new")
    old = tmp_path / "old.skops"
    with (
        zipfile.ZipFile(tmp_path / "new" / "head.skops") as src,
        zipfile.ZipFile(old, "w") as dst,
    ):
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "schema.json":
                assert b'"wav2genre_cache.heads.estimators"' in data
                data = data.replace(
                    b'"wav2genre_cache.heads.estimators"', b'"wav2genre_cache.heads"'
                )
            dst.writestr(item, data)
    loaded = load_head("svm", old)
    np.testing.assert_allclose(loaded.predict_proba(train.X), head.predict_proba(train.X))


def test_an_fcnn_weighted_head_of_version_0_1_0_loads_and_predicts_as_it_did():
    # Written when the layer-weighted FCNN was a class of its own: its file names no class, and
    # the FCNN with n_layers set builds the same network from the saved parameters.
    saved = Path(__file__).parents[1] / "fixtures" / "fcnn_weighted_v0.1.0"
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 3 * 8)).astype(np.float32)
    X[:, 8:16] += (np.arange(120) % 3)[:, None]
    head = load_head("fcnn-weighted", saved / "head.safetensors")
    assert isinstance(head, FCNNClassifier) and head.n_layers == 3
    assert head.layer_weights_.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(head.predict_proba(X), np.load(saved / "expected_proba.npy"))
