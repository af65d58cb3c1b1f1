"""--group-by album (a manifest's own column): the split, the folds, the selection and finetune's
split keep an album's tracks on one side; a column no track has is one line naming the others."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from wav2genre_cache.finetune.options import FinetuneOptions, split_tracks
from wav2genre_cache.stage_two import crossval
from wav2genre_cache.store.cache import EmbeddingCache


@pytest.fixture(scope="module")
def album_manifest(tmp_path_factory, dev_clips):
    """The 60 dev clips in a manifest whose only grouping is an album of 3 consecutive clips."""
    folder = tmp_path_factory.mktemp("albums")
    rows = [
        f"{clip},{clip.parent.name},{clip.parent.name}-{int(clip.stem.split('.')[1]) // 3}"
        for clip in sorted(dev_clips.glob("*/*.*"))
    ]
    manifest = folder / "songs.csv"
    manifest.write_text("path,label,album\n" + "\n".join(rows) + "\n")
    return manifest


@pytest.fixture(scope="module")
def album_cache(album_manifest):
    out = album_manifest.parent / "hc.h5"
    run_cli("embed", str(album_manifest), "--out", str(out), "--features", "handcrafted",
            "--group-by", "album")  # fmt: skip
    return out


def _albums(tracks) -> list[str]:
    return [json.loads(m)["album"] for m in tracks.metadata]


def test_embed_keeps_each_album_on_one_side_and_stores_it(album_cache):
    cache = EmbeddingCache(album_cache)
    assert cache.config["group_by"] == "album"
    sides: dict[str, set[str]] = {}
    for album, split in zip(_albums(cache.tracks), cache.tracks.split, strict=True):
        sides.setdefault(album, set()).add(split)
    assert len(sides) == len(set(sides)) > 15 and all(len(s) == 1 for s in sides.values())


def test_cross_validation_folds_keep_albums_apart(album_cache, monkeypatch):
    tested, real = [], crossval.head_scores

    def recording(spec, head, X, y, track, *args):
        tested.append(set(track.tolist()))
        return real(spec, head, X, y, track, *args)

    monkeypatch.setattr(crossval, "head_scores", recording)
    result = crossval.cross_validate(album_cache, "handcrafted", ["logreg"], 0, 5, 1, 0, "album")
    albums = _albums(EmbeddingCache(album_cache).tracks)
    assert result["grouped_by"] == "album" and result["groups"] == len(set(albums))
    for test in tested:
        held = {albums[i] for i in test}
        assert not held & {a for i, a in enumerate(albums) if i not in test}
    said = run_cli("cross-validate", str(album_cache), "--heads", "logreg", "--folds", "3",
                   "--repeats", "1", "--group-by", "album")  # fmt: skip
    assert f"by album ({len(set(albums))} albums)" in said.stdout


def test_train_heads_selects_on_folds_of_albums(album_cache, tmp_path):
    run = tmp_path / "run"
    run_cli("train-heads", str(album_cache), "--out", str(run), "--feature-set", "handcrafted",
            "--heads", "logreg", "--selection", "cv", "--group-by", "album")  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    assert "grouped by album" in json.dumps(metrics)


def test_a_column_no_track_has_is_one_line_naming_the_columns(album_cache, album_manifest):
    said = run_cli("cross-validate", str(album_cache), "--group-by", "albm", check=False)
    assert said.returncode == 2
    assert "no track of the cache has a 'albm' value; use one of artist, none, album" in (
        said.stdout + said.stderr
    )
    said = run_cli("embed", str(album_manifest), "--out", str(album_manifest.parent / "x.h5"),
                   "--features", "handcrafted", "--group-by", "albm", check=False)  # fmt: skip
    assert said.returncode == 2 and "use artist, none or one of album" in said.stdout + said.stderr


def test_finetune_splits_by_album_too(album_manifest, tmp_path):
    opts = FinetuneOptions(str(album_manifest), str(tmp_path / "ft"), group_by="album", seed=2)
    sides: dict[str, set[str]] = {}
    for t in split_tracks(opts):
        sides.setdefault(dict(t.metadata)["album"], set()).add(t.split)
    assert all(len(s) == 1 for s in sides.values()) and len(sides) > 15
