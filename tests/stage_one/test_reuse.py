"""embed --reuse: encoder features of audio an earlier cache holds are copied, not computed."""

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import make_label_folder, run_cli, write_audio

from wav2genre_cache.store.cache import EmbeddingCache


def embed(data: Path, out: Path, *extra: str, model: str = "random-tiny", check: bool = True):
    return run_cli("embed", str(data), "--out", str(out), "--model", model, *extra, check=check)


def relabelled(folder: Path, out: Path) -> Path:
    """The folder's files as a CSV manifest under other labels, with one new recording."""
    rows = [(str(p), f"tag-{p.parent.name}") for p in sorted(folder.rglob("*.wav"))]
    rows.append((str(write_audio(out.parent / "new.wav", 3.0, freq=950.0)), "tag-new"))
    with out.open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return out


@pytest.mark.parametrize("model", ["random-tiny", "whisper"])
def test_reused_features_equal_computed_ones(tmp_path, model, whisper_dir):
    model = whisper_dir if model == "whisper" else model
    first = make_label_folder(tmp_path / "first", per_label=3, seconds=12.0)
    embed(first, tmp_path / "first.h5", "--segment-seconds", "5", model=model)
    # The same audio under other labels and paths, a changed file, a new one, augmented copies.
    write_audio(first / "low" / "low_2.wav", 12.0, freq=330.0, seed=9)  # no longer the same audio
    manifest = relabelled(first, tmp_path / "manifest" / "tags.csv")
    extra = ("--segment-seconds", "5", "--augment", "noise", "--split", "random")
    reused = embed(manifest, tmp_path / "reused.h5", *extra, "--reuse", str(tmp_path / "first.h5"),
                   model=model)  # fmt: skip
    embed(manifest, tmp_path / "computed.h5", *extra, model=model)
    # Six files were embedded first; one has changed since: five are reused, two computed.
    assert "5 tracks' encoder features reused" in reused.stderr, reused.stderr
    a, b = EmbeddingCache(tmp_path / "reused.h5"), EmbeddingCache(tmp_path / "computed.h5")
    assert a.config == b.config and a.tracks.equals(b.tracks) and a.segments.equals(b.segments)
    assert set(a.segments.view) == {0, 1}
    np.testing.assert_array_equal(a.features(), b.features())


def test_a_cache_of_other_settings_is_refused_before_anything_is_written(tmp_path):
    data = make_label_folder(tmp_path / "data", per_label=2)
    embed(data, tmp_path / "first.h5", "--segment-seconds", "2")
    out = tmp_path / "out" / "second.h5"
    refused = embed(data, out, "--reuse", str(tmp_path / "first.h5"), check=False)
    assert refused.returncode == 2, refused.stderr
    assert "segment_seconds: cache has 2.0, this run asks for 10.0" in refused.stderr
    assert not out.parent.exists()


def test_reuse_goes_with_the_local_engine_and_the_encoder(tmp_path):
    data = make_label_folder(tmp_path / "data", per_label=2)
    embed(data, tmp_path / "first.h5")
    for extra in (("--engine", "ray"), ("--features", "handcrafted")):
        refused = embed(data, tmp_path / "x.h5", "--reuse", str(tmp_path / "first.h5"), *extra,
                        check=False)  # fmt: skip
        assert refused.returncode == 2 and "--reuse copies encoder features" in refused.stderr
    missing = embed(data, tmp_path / "x.h5", "--reuse", str(tmp_path / "none.h5"), check=False)
    assert missing.returncode != 0 and "none.h5: no such cache file" in missing.stderr


def test_a_cache_written_by_0_1_0_is_accepted_for_reuse(tmp_path):
    old = Path(__file__).resolve().parents[1] / "fixtures" / "v0.1.0" / "cache.h5"
    data = make_label_folder(tmp_path / "data", per_label=2, seconds=3.0)
    ran = embed(data, tmp_path / "c.h5", "--segment-seconds", "2", "--reuse", str(old))
    assert ran.returncode == 0 and "reused" not in ran.stderr  # other audio: nothing to copy
