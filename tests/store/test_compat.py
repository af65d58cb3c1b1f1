"""Files written by wav2genre-cache 0.1.0 still load: the cache, every bundle of a run, a
fine-tuning checkpoint and the Ray engine's Parquet shards, in tests/fixtures/v0.1.0/.

Those fixtures stand for files users already have: they are never regenerated (see the README
beside them). Whatever writes to a fixture works on a copy in tmp_path.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli

from wav2genre_cache.inference.predict import Predictor
from wav2genre_cache.store.bundles import load_bundle
from wav2genre_cache.store.cache import EmbeddingCache

FIXTURES = Path(__file__).parents[1] / "fixtures" / "v0.1.0"
LABELS = ["classical", "metal"]
TRACKS = [f"{g}.{i:05d}" for g in LABELS for i in range(4)]
BUNDLES = ["best", *(f"bundles/{h}" for h in ("fcnn", "finetuned", "logreg", "rf", "svm", "xgb"))]
# What each bundle's head is stored as on disk, as 0.1.0 wrote it.
HEAD_FILES = {
    "best": {"head.skops"},
    "bundles/svm": {"head.skops"},
    "bundles/logreg": {"head.skops"},
    "bundles/rf": {"head.skops"},
    "bundles/xgb": {"head.ubj", "head_params.json"},
    "bundles/fcnn": {"head.safetensors"},
    "bundles/finetuned": {"model.safetensors", "config.json", "preprocessor_config.json"},
}


def probe_wave(seconds: float = 5.0, sr: int = 16_000) -> np.ndarray:
    """The fixed waveform expected_predictions.json was computed on (do not change it)."""
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.1 * np.sin(2 * np.pi * 2500.0 * t)).astype(
        np.float32
    )


def expected_predictions() -> dict:
    """What 0.1.0 predicted with each bundle (README.md says how it was computed)."""
    return json.loads((FIXTURES / "expected_predictions.json").read_text())


def copy_fixture(tmp_path: Path, *names: str) -> Path:
    """Copies of fixture files or folders in tmp_path (the same relative paths); tmp_path."""
    for name in names:
        src, dst = FIXTURES / name, tmp_path / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
    return tmp_path


def test_the_fixture_folder_is_whole():
    """Every file the tests below rely on is there (a fixture lost in a move fails here first)."""
    for bundle, files in HEAD_FILES.items():
        assert {"bundle.json", *files} <= {p.name for p in (FIXTURES / "run" / bundle).iterdir()}
    for name in (
        "cache.h5",
        "split.csv",
        "expected_predictions.json",
        "run/metrics.json",
        "run/finetune.json",
    ):
        assert (FIXTURES / name).is_file(), name
    assert (FIXTURES / "run" / "finetune" / "latest.json").is_file()
    assert len(list((FIXTURES / "ray_shards").glob("*.parquet"))) == 4


# ---- the HDF5 cache -------------------------------------------------------------------------


def test_the_cache_opens_with_its_tracks_segments_and_features():
    cache = EmbeddingCache(FIXTURES / "cache.h5")
    assert cache.attrs["package_version"] == "0.1.0" and cache.attrs["format_version"] == 1
    assert cache.config["backbone"] == "random-tiny" and cache.config["features"] == ["encoder"]
    assert cache.tracks.track_id.tolist() == TRACKS
    assert (cache.tracks.status == "ok").all() and set(cache.tracks.label) == set(LABELS)
    assert cache.tracks.split.value_counts().to_dict() == {"train": 4, "valid": 2, "test": 2}
    assert (cache.tracks.duration == 5.0).all()
    assert len(cache.segments) == 24 and set(cache.segments.track) == set(range(8))
    x = cache.features("encoder")
    assert x.shape == (24, 3, 32) and x.dtype == np.float32 and np.isfinite(x).all()
    assert np.array_equal(cache.features("encoder", layer=2), x[:, 2])
    assert x.std() > 0  # real embeddings, not zeros


def test_info_on_the_cache_prints_its_tracks(tmp_path):
    copy_fixture(tmp_path, "cache.h5")
    proc = run_cli("info", "cache.h5", cwd=tmp_path)
    assert "random-tiny" in proc.stdout
    assert "8 ok, 0 failed" in proc.stdout and "train 4, valid 2, test 2" in proc.stdout
    assert "classical" in proc.stdout and "metal" in proc.stdout
    summary = json.loads(run_cli("info", "cache.h5", "--json", cwd=tmp_path).stdout)
    assert summary["tracks"] == {"ok": 8, "failed": 0, "excluded": 0}
    assert summary["tracks_per_label"] == {
        lab: {"test": 1, "train": 2, "valid": 1} for lab in LABELS
    }
    assert summary["segments"] == 24
    assert summary["features"] == {"encoder": {"layers": 3, "dim": 32}}


# ---- the bundles of a train-heads (+ finetune) run ------------------------------------------


@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_bundle_loads_and_predicts_as_it_did_in_0_1_0(bundle):
    meta, _ = load_bundle(FIXTURES / "run" / bundle)
    assert meta["package_version"] == "0.1.0" and meta["labels"] == LABELS
    assert set(meta["files"]) == HEAD_FILES[bundle]
    result = Predictor(FIXTURES / "run" / bundle, device="cpu").predict_waveforms([probe_wave()])[0]
    assert result["label"] in LABELS
    assert {t["label"] for t in result["top"]} == set(LABELS)
    assert sum(t["probability"] for t in result["top"]) == pytest.approx(1, abs=1e-3)
    # The probabilities 0.1.0 gave on the same waveform (rounded to 4 places by predict): a head
    # that loads but lost its weights, or a backbone that changed, would not give them.
    expected = expected_predictions()["probe_wave"][bundle]
    assert result["label"] == expected["label"]
    got = [[seg["probabilities"][lab] for lab in LABELS] for seg in result["timeline"]]
    want = [[seg[lab] for lab in LABELS] for seg in expected["timeline"]]
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_each_frozen_head_scores_the_cached_segments_as_it_did_in_0_1_0():
    """Each head on the cache's own features, through its head spec as predict calls it."""
    from wav2genre_cache.heads.registry import head_spec

    cache = EmbeddingCache(FIXTURES / "cache.h5")
    expected = expected_predictions()["cache_segments"]
    assert set(expected) == set(BUNDLES) - {"bundles/finetuned"}
    for bundle, want in expected.items():
        meta, head = load_bundle(FIXTURES / "run" / bundle)
        x = cache.features(meta["feature_set"], layer=meta["layer"])
        groups = cache.segments.track.to_numpy()
        proba = head_spec(meta["head"]).predict_proba(head, x, groups=groups)
        assert proba.shape == (24, 2), bundle
        np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5, err_msg=bundle)
        np.testing.assert_allclose(proba, want, atol=1e-4, err_msg=bundle)


def test_compare_on_a_copy_of_the_run(tmp_path):
    copy_fixture(tmp_path, "run", "cache.h5")
    proc = run_cli("compare", "run", cwd=tmp_path)
    heads = {"svm", "logreg", "rf", "xgb", "fcnn", "finetuned"}
    assert all(head in proc.stdout for head in heads)
    rows = json.loads((tmp_path / "run" / "comparison.json").read_text())
    assert {r["head"] for r in rows} == heads
    assert sum(r["best"] == "*" for r in rows) == 1


def test_predict_on_the_run_folder_uses_its_best_bundle(tmp_path):
    copy_fixture(tmp_path, "run")
    sf.write(tmp_path / "probe.wav", probe_wave(), 16_000)
    (entry,) = json.loads(
        run_cli("predict", "probe.wav", "--bundle", "run", "--json", cwd=tmp_path).stdout
    )
    want = expected_predictions()["probe_wave"]["best"]
    assert entry["label"] == want["label"] and len(entry["timeline"]) == len(want["timeline"])


# ---- the fine-tuning checkpoint -------------------------------------------------------------


def finetune_options(state_dir: Path, out: Path):
    """The FinetuneOptions the checkpoint was written with, from its settings.json."""
    from wav2genre_cache.finetune.options import FinetuneOptions

    settings = json.loads((state_dir / "settings.json").read_text())
    names = {f.name for f in dataclasses.fields(FinetuneOptions)}
    kept = {k: v for k, v in settings.items() if k in names and k not in ("data", "out")}
    kept["augment"] = tuple(kept.get("augment") or ())
    return FinetuneOptions(data=settings["data"], out=str(out), **kept), settings


def test_the_checkpoint_loads_into_a_fresh_model_of_its_kind(tmp_path):
    import torch

    from wav2genre_cache.encoders.finetuned import SegmentClassifier
    from wav2genre_cache.finetune.checkpoint import load_checkpoint, read_weights
    from wav2genre_cache.finetune.model import freeze as _freeze
    from wav2genre_cache.finetune.model import load_encoder as _load_encoder
    from wav2genre_cache.finetune.model import param_groups as _param_groups

    copy_fixture(tmp_path, "run/finetune")
    state_dir = tmp_path / "run" / "finetune"
    opts, settings = finetune_options(state_dir, tmp_path / "run")
    assert settings["labels"] == LABELS and opts.model == "random-tiny"
    # Built as finetune builds it before resuming.
    encoder, _, frontend, info = _load_encoder(opts)
    torch.manual_seed(opts.seed)
    model = SegmentClassifier(encoder, frontend.input_name, len(LABELS), info["layer"])
    _freeze(model, info["unfreeze"], opts.train_feature_encoder)
    optimizer = torch.optim.AdamW(_param_groups(model, info["unfreeze"], opts), lr=opts.lr)

    progress = load_checkpoint(state_dir, model, optimizer)
    assert progress["epoch"] == 1 and progress["global_step"] == 6 and progress["probed"]
    assert progress["best"]["file"] == "best-epoch-001.safetensors"
    folder = (
        state_dir
        / "checkpoints"
        / json.loads((state_dir / "latest.json").read_text())["checkpoint"]
    )
    saved = read_weights(folder / "weights.safetensors")
    state = model.state_dict()
    assert saved and set(saved) <= set(state)
    assert any(k.startswith("head.") for k in saved) and any(
        k.startswith("encoder.") for k in saved
    )
    for k, v in saved.items():
        assert torch.equal(state[k], v), k
    # Adam's moments for every trainable parameter came back.
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all("exp_avg" in optimizer.state[p] for p in trainable)
    # The best epoch's weights (what finish() builds the bundle from) fit the same model.
    best = read_weights(state_dir / progress["best"]["file"])
    missing, unexpected = model.load_state_dict(best, strict=False)
    assert not unexpected and set(best) == set(saved)


def test_finetune_with_the_same_options_finds_the_run_complete(tmp_path):
    """The run folder's settings.json is still read as the same settings: nothing is retrained."""
    copy_fixture(tmp_path, "run", "split.csv")
    _, settings = finetune_options(FIXTURES / "run" / "finetune", tmp_path / "run")
    for track in TRACKS:  # the split depends on the track names only, not on their audio
        genre = track.split(".")[0]
        (tmp_path / settings["data"] / genre).mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / settings["data"] / genre / f"{track}.wav", probe_wave(2.0), 16_000)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    proc = run_cli(
        "finetune", settings["data"], "--out", "run", "--model", settings["model"],
        "--split", settings["split"], "--segment-seconds", str(settings["segment_seconds"]),
        "--unfreeze", settings["unfreeze"], "--epochs", str(settings["epochs"]),
        "--batch-size", str(settings["batch_size"]),
        "--probe-epochs", str(settings["probe_epochs"]), "--workers", "0", "--device", "cpu",
        cwd=tmp_path,
    )  # fmt: skip
    assert "already complete" in proc.stderr
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before


# ---- the Ray engine's Parquet shards --------------------------------------------------------


def shard_copy(tmp_path: Path) -> Path:
    """The shard folder where the engine keeps it for cache tmp_path/cache.h5; that path."""
    shutil.copytree(FIXTURES / "ray_shards", tmp_path / "cache.h5.shards")
    return tmp_path / "cache.h5"


def test_the_parquet_shards_read_back(tmp_path):
    pytest.importorskip("pyarrow", reason="the Ray engine's extra: pip install '.[ray]'")
    import pyarrow.parquet as pq

    from wav2genre_cache.store.parquet import ParquetShards, shard_dir, tensor_column_to_numpy

    out = shard_copy(tmp_path)
    folder = shard_dir(out)
    config = json.loads((folder / "config.json").read_text())
    # Resuming with the cache's own settings: every track is already done.
    assert ParquetShards(out, EmbeddingCache(FIXTURES / "cache.h5").config).open() == set(TRACKS)
    tracks = pq.ParquetDataset(sorted(folder.glob("tracks-*.parquet"))).read().to_pandas()
    assert sorted(tracks.track_id) == TRACKS and (tracks.status == "ok").all()
    assert tracks.n_segments.sum() == 24 and (tracks.duration == 5.0).all()
    segments = [pq.read_table(p) for p in sorted(folder.glob("segments-*.parquet"))]
    assert [t.num_rows for t in segments] == [12, 12]
    feats = np.concatenate([tensor_column_to_numpy(t[config["features"][0]]) for t in segments])
    assert feats.shape == (24, 3, 32) and feats.dtype == np.float32
    # They were written from cache.h5's features: the same values.
    np.testing.assert_array_equal(feats, EmbeddingCache(FIXTURES / "cache.h5").features())


def test_the_parquet_shards_merge_into_the_fixture_cache(tmp_path):
    pytest.importorskip("pyarrow", reason="the Ray engine's extra: pip install '.[ray]'")
    from wav2genre_cache.store.parquet import ParquetShards, shard_dir

    out = shard_copy(tmp_path)
    config = json.loads((shard_dir(out) / "config.json").read_text())
    merged = EmbeddingCache(ParquetShards(out, config).finalize(TRACKS))
    fixture = EmbeddingCache(FIXTURES / "cache.h5")
    assert merged.tracks.equals(fixture.tracks)
    assert merged.segments.equals(fixture.segments)
    np.testing.assert_array_equal(merged.features(), fixture.features())
