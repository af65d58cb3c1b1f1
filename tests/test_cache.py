import h5py
import numpy as np
import pytest

from wav2genre_cache.cache import (
    CacheError,
    EmbeddingCache,
    ShardStore,
    TrackResult,
    config_differences,
)

CONFIG = {
    "backbone": "random-tiny",
    "backbone_revision": "seed0",
    "sample_rate": 16000,
    "segment_seconds": 1.0,
    "hop_seconds": 1.0,
    "dtype": "float32",
    "features": ["wav2vec2"],
}


def result(i: int, n_seg: int, status: str = "ok") -> TrackResult:
    feats = {"wav2vec2": np.full((n_seg, 3, 4), i, np.float32)} if n_seg else {}
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
    feats = cache.features("wav2vec2")
    assert feats.shape == (6, 3, 4) and list(feats[:, 0, 0]) == [0, 0, 1, 1, 1, 2]
    assert cache.features("wav2vec2", layer=2).shape == (6, 4)
    assert cache.attrs["backbone"] == "random-tiny" and cache.attrs["format_version"] == 1
    assert cache.summary()["failures"] == [{"path": "/d/t3.wav", "reason": "bad"}]
    with pytest.raises(CacheError, match="layer 5 out of range"):
        cache.features("wav2vec2", layer=5)
    with pytest.raises(CacheError, match="no feature set 'logmel'"):
        cache.features("logmel")


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
