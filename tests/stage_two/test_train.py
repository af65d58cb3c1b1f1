import json

import numpy as np
import pytest

from wav2genre_cache.errors import CacheError, HeadError, TrainError
from wav2genre_cache.heads.registry import head_spec
from wav2genre_cache.stage_two.train import train_heads
from wav2genre_cache.store.bundles import load_bundle
from wav2genre_cache.testing.synthetic import write_synthetic_cache

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
    assert m["layers"] == [2] and np.argmax(m["probe_scores"]["encoder"]) == 2


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
    from wav2genre_cache.store.cache import TrackResult
    from wav2genre_cache.store.cache_writer import ShardStore

    def cache_with(rows, name):
        config = {
            "backbone": "x",
            "backbone_revision": "",
            "sample_rate": 16000,
            "segment_seconds": 1.0,
            "hop_seconds": 1.0,
            "dtype": "float32",
            "features": ["encoder"],
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
                    f"h{i}",  # each its own recording (equal hashes are duplicates)
                    [0.0],
                    [0],
                    {"encoder": np.ones((1, 2, 3), np.float32) * i},
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
    from wav2genre_cache.heads.registry import fcnn_trials
    from wav2genre_cache.report.compare import write_report

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
    from wav2genre_cache.report.compare import write_report

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
    assert meta["head"] == "attention" and head_spec(meta["head"]).predicts_tracks


# ---- every file a bundle loads is checksummed ---------------------------------------------

# Tiny settings: each head fits in well under a second on 40 rows of 256 features.
TINY_HEADS = {
    "fcnn": dict(hidden_layers=(8,), max_epochs=2),
    "fcnn-weighted": dict(n_layers=2, hidden_layers=(8,), max_epochs=2),
    "attention": dict(hidden=8, max_epochs=2),
    "svm": {},
    "rf": {},
    "logreg": {},
    "xgb": dict(n_estimators=3),
    "cnn": dict(n_mels=16, channels=4, max_epochs=1),  # 16 mels x 16 frames
}


def tiny_bundle(name: str, directory, seed: int = 0):
    """A bundle of a tiny fitted head, written by write_bundle as train_heads writes it."""
    from wav2genre_cache.heads.registry import make_head
    from wav2genre_cache.store.bundles import write_bundle

    rng = np.random.default_rng(seed)
    y = np.arange(40) % 2
    X = (rng.standard_normal((40, 256)) + 2.0 * y[:, None]).astype(np.float32)
    head = make_head(name, seed=seed, **TINY_HEADS[name]).fit(X, y)
    attrs = {
        "sample_rate": 16000,
        "segment_seconds": 10.0,
        "hop_seconds": 10.0,
        "backbone": "synthetic",
        "backbone_revision": "",
        "dtype": "float32",
    }
    write_bundle(
        directory,
        head,
        name,
        params=TINY_HEADS[name],
        layer=-1 if name == "fcnn-weighted" else 0,
        labels=["blues", "rock"],
        feature_set="encoder",
        cache_attrs=attrs,
        metrics={"test_track_accuracy": 1.0, "valid": None},
    )
    return head, X


@pytest.mark.parametrize("name", list(TINY_HEADS))
def test_altering_any_byte_of_any_bundle_file_is_refused(name, tmp_path):
    import shutil

    head, X = tiny_bundle(name, tmp_path / "b")
    meta, loaded = load_bundle(tmp_path / "b")
    np.testing.assert_allclose(loaded.predict_proba(X), head.predict_proba(X), atol=1e-6)
    # bundle.json holds the checksums, README.md (the model card) is documentation, not checked.
    files = sorted(
        p.name for p in (tmp_path / "b").iterdir() if p.name not in ("bundle.json", "README.md")
    )
    for file in files:
        altered = tmp_path / f"altered-{file}"
        shutil.copytree(tmp_path / "b", altered)
        data = bytearray((altered / file).read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit of one byte
        (altered / file).write_bytes(bytes(data))
        with pytest.raises(HeadError, match=rf"{file}: the file was altered after training"):
            load_bundle(altered)
    assert files and sorted(meta.get("files", {})) == files  # every file the head consists of


def test_reversed_xgb_classes_are_refused(tmp_path):
    tiny_bundle("xgb", tmp_path)
    params = tmp_path / "head_params.json"
    info = json.loads(params.read_text())
    info["classes"] = info["classes"][::-1]  # the review's attack: blues 0.80 became rock 0.80
    params.write_text(json.dumps(info))
    with pytest.raises(HeadError, match=r"head_params.json: the file was altered after training"):
        load_bundle(tmp_path)


def test_bundle_json_must_cover_every_file_the_head_needs(tmp_path):
    tiny_bundle("xgb", tmp_path)
    meta = json.loads((tmp_path / "bundle.json").read_text())
    del meta["files"]["head_params.json"]  # a bundle.json edited to leave a file unchecked
    (tmp_path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(HeadError, match="no checksum for head_params.json"):
        load_bundle(tmp_path)


def test_bundles_of_the_old_format_load_or_say_how_to_recreate_them(tmp_path):
    # Before per-file checksums a bundle recorded only head_file and head_sha256.
    for name in ("svm", "xgb"):
        tiny_bundle(name, tmp_path / name)
        meta = json.loads((tmp_path / name / "bundle.json").read_text())
        meta.pop("files", None)
        (tmp_path / name / "bundle.json").write_text(json.dumps({**meta, "format_version": 1}))
    meta, model = load_bundle(tmp_path / "svm")  # one file, checked by head_sha256: still fine
    assert meta["head"] == "svm" and hasattr(model, "predict_proba")
    head_file = tmp_path / "svm" / meta["head_file"]
    head_file.write_bytes(head_file.read_bytes() + b"\x00")
    with pytest.raises(HeadError, match="altered after training"):
        load_bundle(tmp_path / "svm")
    # An old XGBoost bundle's head_params.json has no checksum: refused, with the remedy.
    with pytest.raises(HeadError, match=r"head_params.json.*no checksum.*re-run train-heads"):
        load_bundle(tmp_path / "xgb")
    # A current bundle whose bundle.json lost its checksum map is not taken for an old one.
    tiny_bundle("svm", tmp_path / "new")
    meta = json.loads((tmp_path / "new" / "bundle.json").read_text())
    del meta["files"]
    (tmp_path / "new" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(HeadError, match="has no 'files' checksums"):
        load_bundle(tmp_path / "new")


@pytest.mark.parametrize(
    "bad, why",
    [
        ("../../etc/passwd", "outside the bundle folder"),
        ("/etc/passwd", "outside the bundle folder"),
        ("..", "outside the bundle folder"),
        ("..\\..\\etc\\passwd", "outside the bundle folder"),
        ("sub/head.skops", "not a plain file name in the bundle folder"),
    ],
)
def test_file_names_outside_the_bundle_folder_are_rejected(bad, why, tmp_path):
    import re

    tiny_bundle("svm", tmp_path / "b")
    json_file = tmp_path / "b" / "bundle.json"
    meta = json.loads(json_file.read_text())
    # In head_file (the first format's field, still written) ...
    json_file.write_text(json.dumps({**meta, "head_file": bad}))
    with pytest.raises(HeadError, match=rf"names head file {re.escape(repr(bad))}, which is {why}"):
        load_bundle(tmp_path / "b")
    # ... and in the checksum map.
    files = {**meta.get("files", {}), bad: "0" * 64}
    json_file.write_text(json.dumps({**meta, "files": files}))
    with pytest.raises(HeadError, match=rf"names file {re.escape(repr(bad))}, which is {why}"):
        load_bundle(tmp_path / "b")


# ---- a head asked for trains on the feature set it needs, or the run is refused ------------


def cache_of(path, feature_sets=("encoder", "logmel"), n_tracks=16, seed=0):
    """A small cache of two labels holding encoder (3 layers x 8, which tells them apart) and/or
    logmel (128 mels x 16 frames of noise)."""
    from wav2genre_cache.store.cache import TrackResult
    from wav2genre_cache.store.cache_writer import ShardStore

    rng = np.random.default_rng(seed)
    shapes = {"encoder": (3, 8), "logmel": (1, 128 * 16)}
    config = {
        "backbone": "synthetic",
        "backbone_revision": "",
        "sample_rate": 16000,
        "segment_seconds": 1.0,
        "hop_seconds": 1.0,
        "dtype": "float32",
        "features": list(feature_sets),
    }
    store = ShardStore(path, config)
    store.open()
    splits = ["test", "test", "valid", "valid"] + ["train"] * (n_tracks - 4)
    results = []
    for i, split in enumerate(splits):
        label = i % 2
        features = {
            fs: rng.standard_normal((2, *shapes[fs])).astype(np.float32) for fs in feature_sets
        }
        if "encoder" in features:
            features["encoder"] += 2.0 * label
        results.append(
            TrackResult(
                f"t{i}",
                "p",
                f"genre{label}",
                split,
                "",
                "ok",
                duration=2.0,
                content_hash=f"{i:032x}",
                starts=[0.0, 1.0],
                views=[0, 0],
                features=features,
            )
        )
    store.write(0, results)
    return store.finalize([f"t{i}" for i in range(n_tracks)])


def test_spectrogram_heads_asked_for_train_on_the_caches_logmel(tmp_path, monkeypatch):
    from dataclasses import replace

    from wav2genre_cache.heads.registry import REGISTRY

    for name in ("cnn", "lstm"):  # tiny networks: this is about which heads train, and on what
        tiny = replace(REGISTRY[name], grid=(dict(channels=4, hidden=4, max_epochs=2),))
        monkeypatch.setitem(REGISTRY, name, tiny)
    # train-heads CACHE --heads svm,cnn,lstm: --feature-set is encoder by default.
    cache = cache_of(tmp_path / "both.h5")
    said = []
    m = train_heads(cache, tmp_path / "run", heads=["svm", "cnn", "lstm"], log=said.append)
    trained = {(r["head"], r["feature_set"]) for r in m["results"]}
    assert trained == {("svm", "encoder"), ("cnn", "logmel"), ("lstm", "logmel")}
    assert m["feature_sets"] == ["encoder", "logmel"]
    assert any("head cnn trains on logmel" in line for line in said)
    assert (tmp_path / "run" / "bundles" / "lstm-logmel" / "bundle.json").is_file()
    assert m["best"]["feature_set"] == "encoder"  # predict and serve embed with the backbone


def test_a_head_whose_feature_set_the_cache_lacks_is_refused_with_the_set_to_add(
    separable_cache, tmp_path
):
    with pytest.raises(
        TrainError,
        match=r"head cnn trains on the logmel feature set, which this cache does not hold; "
        r"re-run embed with --features encoder,logmel",
    ):
        train_heads(separable_cache, tmp_path / "r", heads=["svm", "cnn", "lstm"])
    logmel_only = cache_of(tmp_path / "logmel.h5", feature_sets=("logmel",))
    with pytest.raises(
        TrainError,
        match=r"head svm trains on a vector feature set \(encoder or handcrafted\), which this "
        r"cache does not hold; re-run embed with --features logmel,encoder",
    ):
        train_heads(logmel_only, tmp_path / "r", heads=["svm", "cnn"], feature_sets="logmel")
    with pytest.raises(TrainError, match="head fcnn-weighted trains on the layers of the encoder"):
        train_heads(logmel_only, tmp_path / "r", heads=["fcnn-weighted"], feature_sets="logmel")
    assert not (tmp_path / "r").exists()  # refused before any training


def test_feature_sets_for_adds_what_a_head_needs_and_keeps_the_defaults():
    from wav2genre_cache.stage_two.plan import feature_sets_for

    both = {"encoder": 13, "handcrafted": 1, "logmel": 1}
    said = []

    def plan(heads, sets, held=both):
        return feature_sets_for(heads, sets, held, said.append)

    # The default heads (None, as run --features ...,logmel passes them): spectrogram heads on
    # logmel.
    assert plan(None, ["logmel"], {"logmel": 1}) == ["logmel"]
    assert plan(None, ["encoder", "handcrafted", "logmel"]) == [
        "encoder",
        "handcrafted",
        "logmel",
    ]
    assert plan(["svm"], ["encoder", "logmel"]) == ["encoder", "logmel"]
    assert said == []
    # A vector head asked for on a logmel-only run trains on the cache's encoder.
    assert plan(["logreg", "cnn"], ["logmel"]) == ["logmel", "encoder"]
    assert plan(["logreg"], ["logmel"], {"handcrafted": 1, "logmel": 1}) == [
        "logmel",
        "handcrafted",
    ]
    # fcnn-weighted needs several layers; a set no head asked for trains on is left out, aloud.
    assert plan(["fcnn-weighted"], ["handcrafted"]) == ["encoder"]
    assert plan(["cnn"], ["encoder"]) == ["logmel"]
    assert any("encoder: none of the heads asked for (cnn)" in line for line in said)
    with pytest.raises(TrainError, match="no feature set to train on"):
        plan(["svm"], [])


def test_cross_validate_and_train_heads_give_the_same_figures_run_twice(tmp_path):
    # Seeded end to end: the same command twice writes the same numbers (rf and xgb use every
    # core; their trees are summed in a fixed order).
    from conftest import run_cli

    cache = write_synthetic_cache(tmp_path / "c.h5", signal=0.6, **SMALL)
    outputs = []
    for k in range(2):
        run_cli(
            "cross-validate", str(cache), "--feature-set", "encoder", "--layer", "1",
            "--folds", "3", "--repeats", "2", "--out", str(tmp_path / f"cv{k}.json"),
        )  # fmt: skip
        run_cli(
            "train-heads", str(cache), "--out", str(tmp_path / f"run{k}"), "--heads",
            "svm,rf,xgb,logreg", "--layers", "1",
        )  # fmt: skip
        metrics = json.loads((tmp_path / f"run{k}" / "metrics.json").read_text())
        outputs.append(
            (
                json.loads((tmp_path / f"cv{k}.json").read_text()),
                [(r["head"], r["valid"], r["test"]["track"]) for r in metrics["results"]],
            )
        )
    assert outputs[0] == outputs[1]
