"""--group-by names what a split keeps together: an artist, an album, a manifest's own column."""

from __future__ import annotations

import pytest

from wav2genre_cache.data.catalogue import read_datasets, read_source
from wav2genre_cache.data.tracks import Track, group_of, metadata_text
from wav2genre_cache.errors import DatasetError


def _manifest(tmp_path, header: str, rows: list[str]):
    for row in rows:
        (tmp_path / row.split(",")[0]).write_bytes(b"")
    path = tmp_path / "songs.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_a_manifest_keeps_its_other_columns_as_metadata(tmp_path):
    path = _manifest(
        tmp_path,
        "path,label,artist,album,session",
        ["a.wav,rock,A,First,s1", "b.wav,pop,B,,s2"],
    )
    a, b = read_source(path).tracks
    assert a.metadata == (("album", "First"), ("session", "s1"))
    assert b.metadata == (("session", "s2"),)  # an empty value is no value
    assert (group_of(a, "album"), group_of(b, "album")) == ("First", "")
    assert (group_of(a, "artist"), group_of(a, "session"), group_of(a, "none")) == ("A", "s1", "")
    assert metadata_text(a) == '{"album": "First", "session": "s1"}' and metadata_text(b)
    assert metadata_text(Track("x", "x.wav", "rock")) == ""


def test_group_by_a_column_keeps_its_values_on_one_side_of_the_split(tmp_path):
    rows = [f"{i}.wav,{'ab'[i % 2]},{i % 10},alb{i // 4}" for i in range(120)]
    path = _manifest(tmp_path, "path,label,artist,album", rows)
    tracks = read_datasets([path], group_by="album", seed=1).tracks
    splits: dict[str, set[str]] = {}
    for t in tracks:
        splits.setdefault(group_of(t, "album"), set()).add(t.split)
    assert all(len(s) == 1 for s in splits.values())
    assert {t.split for t in tracks} == {"train", "valid", "test"}


def test_group_by_a_column_no_track_has_names_what_they_have(tmp_path):
    path = _manifest(tmp_path, "path,label,album", ["a.wav,rock,x", "b.wav,pop,y"])
    with pytest.raises(DatasetError, match=r"'albm'.*use artist, none or one of album"):
        read_datasets([path], group_by="albm")
