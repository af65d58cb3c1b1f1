import json

import numpy as np
import pytest

from wav2genre_cache.cache import CacheError
from wav2genre_cache.heads import HeadError
from wav2genre_cache.synthetic import write_synthetic_cache
from wav2genre_cache.train import TrainError, load_bundle, train_heads

SMALL = dict(n_tracks=120, segments_per_track=2, n_layers=4, dim=24, n_labels=4)


@pytest.fixture(scope="module")
def separable_cache(tmp_path_factory):
    return write_synthetic_cache(
        tmp_path_factory.mktemp("c") / "sep.h5", informative_layers=(2,), signal=1.5, **SMALL
    )


def test_separable_labels_reach_near_perfect_accuracy(separable_cache, tmp_path):
    m = train_heads(separable_cache, tmp_path / "run", layers="2", log=lambda _: None)
    accs = {r["head"]: r["test"]["track"]["accuracy"] for r in m["results"]}
    assert set(accs) == {"fcnn", "svm", "rf", "xgb", "logreg"}
    assert max(accs.values()) == 1.0 and min(accs.values()) >= 0.75
    assert m["counts"] == {"train": 96, "valid": 12, "test": 12}
    row = m["results"][0]
    for level in ("segment", "track"):
        assert {"accuracy", "macro_f1", "macro_auc", "per_class", "confusion"} <= set(
            row["test"][level]
        )
    assert row["fit_seconds"] > 0 and row["predict_seconds"] > 0


def test_random_labels_stay_near_chance(tmp_path):
    cache = write_synthetic_cache(
        tmp_path / "rand.h5", random_labels=True, signal=1.5, seed=1, **{**SMALL, "n_tracks": 400}
    )
    m = train_heads(
        cache, tmp_path / "run", heads=["logreg", "svm"], layers="all", log=lambda _: None
    )
    accs = [r["test"]["track"]["accuracy"] for r in m["results"]]
    assert np.mean(accs) < 0.45  # chance is 0.25 with 4 labels and 40 test tracks


def test_layers_best_finds_the_informative_layer(separable_cache, tmp_path):
    m = train_heads(
        separable_cache, tmp_path / "run", heads=["logreg"], layers="best", log=lambda _: None
    )
    assert m["layers"] == [2] and np.argmax(m["probe_scores"]["wav2vec2"]) == 2


def test_bundles_round_trip_and_altered_files_are_refused(separable_cache, tmp_path):
    run = tmp_path / "run"
    m = train_heads(
        separable_cache, run, heads=["fcnn", "svm", "xgb", "rf"], layers="2", log=lambda _: None
    )
    for head in ("fcnn", "svm", "xgb", "rf"):
        meta, model = load_bundle(run / "bundles" / head)
        assert meta["head"] == head and meta["layer"] == 2 and meta["labels"] == m["labels"]
        assert meta["segment_seconds"] == 10.0 and meta["backbone"] == "synthetic"
    best = json.loads((run / "best" / "bundle.json").read_text())
    assert best["head"] == m["best"]["head"]
    head_file = run / "bundles" / "svm" / "head.skops"
    head_file.write_bytes(head_file.read_bytes() + b"\x00")
    with pytest.raises(HeadError, match="altered after training"):
        load_bundle(run / "bundles" / "svm")
    with pytest.raises(HeadError, match="not a bundle"):
        load_bundle(tmp_path)


def test_clear_errors(separable_cache, tmp_path):
    with pytest.raises(TrainError, match="unknown head"):
        train_heads(separable_cache, tmp_path / "r", heads=["knn"])
    with pytest.raises(TrainError, match="out of range"):
        train_heads(separable_cache, tmp_path / "r", layers="7")
    with pytest.raises(TrainError, match="use all, best"):
        train_heads(separable_cache, tmp_path / "r", layers="deep")
    with pytest.raises(TrainError, match="no feature set 'logmel'"):
        train_heads(separable_cache, tmp_path / "r", feature_sets="logmel")
    (tmp_path / "empty.h5").write_bytes(b"")
    with pytest.raises(CacheError, match="not a readable HDF5 cache"):
        train_heads(tmp_path / "empty.h5", tmp_path / "r")


def test_caches_that_cannot_be_trained_on(tmp_path):
    from wav2genre_cache.cache import ShardStore, TrackResult

    def cache_with(rows, name):
        config = {
            "backbone": "x",
            "backbone_revision": "",
            "sample_rate": 16000,
            "segment_seconds": 1.0,
            "hop_seconds": 1.0,
            "dtype": "float32",
            "features": ["wav2vec2"],
        }
        store = ShardStore(tmp_path / name, config)
        store.open()
        store.write(
            0,
            [
                TrackResult(
                    f"t{i}",
                    "p",
                    lab,
                    split,
                    "",
                    "ok",
                    "",
                    1.0,
                    "h",
                    [0.0],
                    [0],
                    {"wav2vec2": np.ones((1, 2, 3), np.float32) * i},
                )
                for i, (lab, split) in enumerate(rows)
            ],
        )
        return store.finalize([f"t{i}" for i in range(len(rows))])

    no_test = cache_with([("a", "train"), ("a", "train"), ("b", "train"), ("b", "valid")], "nt.h5")
    with pytest.raises(TrainError, match="no test tracks"):
        train_heads(no_test, tmp_path / "r")
    lonely = cache_with(
        [("a", "train"), ("a", "test"), ("b", "train"), ("b", "test"), ("c", "train")], "l.h5"
    )
    with pytest.raises(TrainError, match=r"label\(s\) \['c'\] have fewer than two tracks"):
        train_heads(lonely, tmp_path / "r")


def test_fcnn_search_is_bounded_seeded_and_reported(separable_cache, tmp_path):
    from wav2genre_cache.report import write_report
    from wav2genre_cache.train import fcnn_trials

    assert fcnn_trials(5, seed=1) == fcnn_trials(5, seed=1) and len(fcnn_trials(5, 1)) == 5
    m = train_heads(
        separable_cache, tmp_path / "run", heads=["fcnn"], layers="2", trials=4, log=lambda _: None
    )
    row = m["results"][0]
    assert len(row["trials"]) == 4 and m["fcnn_search"]["trials"] == 4
    best = max(row["trials"], key=lambda t: (t["valid_accuracy"], t["valid_macro_f1"]))
    assert row["params"] == best["params"]
    write_report(tmp_path / "run")
    text = (tmp_path / "run" / "comparison.md").read_text()
    assert "FCNN hyper-parameter search (4 trials" in text and "Search space: depth" in text
    meta, model = load_bundle(tmp_path / "run" / "bundles" / "fcnn")
    assert meta["params"] == row["params"]


def test_learned_layer_weights_sum_to_one_and_find_the_informative_layer(tmp_path):
    from wav2genre_cache.report import write_report

    cache = write_synthetic_cache(
        tmp_path / "c.h5",
        n_tracks=200,
        segments_per_track=2,
        n_layers=5,
        dim=16,
        n_labels=4,
        informative_layers=(3,),
        signal=1.5,
        seed=2,
    )
    m = train_heads(
        cache, tmp_path / "run", heads=["logreg", "fcnn-weighted"], layers="all", log=lambda _: None
    )
    row = next(r for r in m["results"] if r["head"] == "fcnn-weighted")
    weights = np.array(row["layer_weights"])
    assert row["layer"] == -1 and weights.sum() == pytest.approx(1, abs=1e-4)
    assert np.argmax(weights) == 3 and weights[3] > 0.4
    assert row["test"]["track"]["accuracy"] >= 0.9
    written = write_report(tmp_path / "run")
    assert written["layer_weights"].is_file()
    assert "| weighted |" in (tmp_path / "run" / "comparison.md").read_text()
    meta, model = load_bundle(tmp_path / "run" / "bundles" / "fcnn-weighted")
    assert meta["layer"] == -1 and np.allclose(model.layer_weights_, weights, atol=1e-4)


def test_attention_head_trains_per_track_in_the_comparison(separable_cache, tmp_path):
    m = train_heads(
        separable_cache,
        tmp_path / "run",
        heads=["logreg", "attention"],
        layers="2",
        log=lambda _: None,
    )
    att = next(r for r in m["results"] if r["head"] == "attention")
    assert att["test"]["track"]["accuracy"] >= 0.9
    meta, model = load_bundle(tmp_path / "run" / "bundles" / "attention")
    assert meta["head"] == "attention" and model.needs_groups
