import h5py
import numpy as np
import pytest

from wav2genre_cache.errors import CacheError
from wav2genre_cache.store.cache import EmbeddingCache, TrackResult, config_differences
from wav2genre_cache.store.cache_writer import ShardStore

CONFIG = {
    "backbone": "random-tiny",
    "backbone_revision": "seed0",
    "sample_rate": 16000,
    "segment_seconds": 1.0,
    "hop_seconds": 1.0,
    "dtype": "float32",
    "features": ["encoder"],
}


def result(i: int, n_seg: int, status: str = "ok") -> TrackResult:
    feats = {"encoder": np.full((n_seg, 3, 4), i, np.float32)} if n_seg else {}
    return TrackResult(
        f"t{i}",
        f"/d/t{i}.wav",
        "ab"[i % 2],
        "train",
        "",
        status,
        "" if status == "ok" else "bad",
        float(n_seg),
        "h",
        [float(s) for s in range(n_seg)],
        [0] * n_seg,
        feats,
    )


def test_shards_merge_into_one_file_in_track_order(tmp_path):
    store = ShardStore(tmp_path / "c.h5", CONFIG)
    assert store.open() == set()
    store.write(1, [result(2, 1), result(3, 0, "failed")])
    store.write(0, [result(0, 2), result(1, 3)])
    assert ShardStore(tmp_path / "c.h5", CONFIG).open() == {"t0", "t1", "t2", "t3"}
    store.finalize(["t0", "t1", "t2", "t3"])
    cache = EmbeddingCache(tmp_path / "c.h5")
    assert list(cache.tracks.track_id) == ["t0", "t1", "t2", "t3"]
    assert list(cache.tracks.status) == ["ok", "ok", "ok", "failed"]
    assert list(cache.segments.track) == [0, 0, 1, 1, 1, 2]
    feats = cache.features("encoder")
    assert feats.shape == (6, 3, 4) and list(feats[:, 0, 0]) == [0, 0, 1, 1, 1, 2]
    assert cache.features("encoder", layer=2).shape == (6, 4)
    assert cache.attrs["backbone"] == "random-tiny" and cache.attrs["format_version"] == 1
    assert cache.summary()["failures"] == [{"path": "/d/t3.wav", "reason": "bad"}]
    with pytest.raises(CacheError, match="layer 5 out of range"):
        cache.features("encoder", layer=5)
    with pytest.raises(CacheError, match="no feature set 'logmel'"):
        cache.features("logmel")


def old_result(i: int, n_seg: int) -> TrackResult:
    """A track as an earlier version stored it: the encoder's features named "wav2vec2"."""
    r = result(i, n_seg)
    r.features = {"wav2vec2": r.features["encoder"]}
    return r


def test_an_earlier_versions_wav2vec2_feature_set_reads_as_encoder(tmp_path):
    old_config = {**CONFIG, "features": ["wav2vec2"]}
    store = ShardStore(tmp_path / "old.h5", old_config)
    store.open()
    store.write(0, [old_result(0, 2), old_result(1, 1)])
    store.finalize(["t0", "t1"])
    with h5py.File(tmp_path / "old.h5") as f:
        assert list(f["features"]) == ["wav2vec2"]  # written as the earlier version did
    cache = EmbeddingCache(tmp_path / "old.h5")
    assert cache.feature_names == ["encoder"] and cache.feature_shapes["encoder"] == (3, 3, 4)
    assert cache.config["features"] == ["encoder"]
    assert list(cache.features("encoder")[:, 0, 0]) == [0, 0, 1]
    assert list(cache.features("wav2vec2", layer=1)[:, 0]) == [0, 0, 1]  # the old name too
    # Today's settings match the earlier version's: such a cache is not refused as different.
    assert config_differences(old_config, CONFIG) == []


def test_a_run_interrupted_by_an_earlier_version_resumes_under_the_new_name(tmp_path):
    old = ShardStore(tmp_path / "c.h5", {**CONFIG, "features": ["wav2vec2"]})
    old.open()
    old.write(0, [old_result(0, 2)])
    store = ShardStore(tmp_path / "c.h5", CONFIG)
    assert store.open() == {"t0"}
    store.write(1, [result(1, 1)])
    store.finalize(["t0", "t1"])
    cache = EmbeddingCache(tmp_path / "c.h5")
    assert cache.feature_names == ["encoder"]
    assert list(cache.features("encoder")[:, 0, 0]) == [0, 0, 1]


def test_resuming_with_other_settings_is_refused(tmp_path):
    ShardStore(tmp_path / "c.h5", CONFIG).open()
    with pytest.raises(CacheError, match="segment_seconds: cache has 1.0, this run asks for 2.0"):
        ShardStore(tmp_path / "c.h5", {**CONFIG, "segment_seconds": 2.0}).open()
    assert config_differences(CONFIG, CONFIG) == []


def test_unreadable_and_foreign_files_give_clear_errors(tmp_path):
    with pytest.raises(CacheError, match="no such cache file"):
        EmbeddingCache(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(CacheError, match="not a readable HDF5 cache"):
        EmbeddingCache(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1, 2]
    with pytest.raises(CacheError, match="not a wav2genre cache"):
        EmbeddingCache(tmp_path / "other.h5")


def test_changed_features_are_found_by_their_block_and_refused(tmp_path):
    # 150 float16 values overwritten by hand: info and train-heads used to accept them.
    from conftest import run_cli

    from wav2genre_cache.store.cache import CHECKSUM_ROWS
    from wav2genre_cache.testing.synthetic import write_synthetic_cache

    cache = write_synthetic_cache(
        tmp_path / "c.h5", n_tracks=60, segments_per_track=80, n_layers=2, dim=8, n_labels=2
    )  # 4,800 segments: two blocks
    assert EmbeddingCache(cache).verify() == {
        "checked": True, "blocks": 2, "rows_per_block": CHECKSUM_ROWS
    }  # fmt: skip
    assert "checksums  ok: 2 blocks" in run_cli("info", str(cache), "--verify").stdout
    with h5py.File(cache, "r+") as f:
        data = f["features/encoder"]
        data[4500:4575] = data[4500:4575] + np.float16(0.5)  # 75 rows x 2 layers = 150 values
    for command in (["info", str(cache), "--verify"],
                    ["train-heads", str(cache), "--out", str(tmp_path / "run")],
                    ["cross-validate", str(cache), "--feature-set", "encoder"]):  # fmt: skip
        refused = run_cli(*command, check=False)
        assert refused.returncode == 2, refused.stderr
        assert "checksum mismatch in features/encoder rows 4096-8191)" in refused.stderr
    assert not (tmp_path / "run").exists()


def test_a_cache_from_before_checksums_is_read_and_said_unchecked():
    from pathlib import Path

    old = Path(__file__).resolve().parents[1] / "fixtures" / "v0.1.0" / "cache.h5"
    assert EmbeddingCache(old).verify() == {
        "checked": False, "reason": "written before caches carried checksums"
    }  # fmt: skip
