"""Split assignment: random (stratified, artists apart), GTZAN-ff lists, a split CSV."""

from __future__ import annotations

from collections import Counter

import pytest

from wav2genre_cache.data.catalogue import read_source
from wav2genre_cache.data.splits import assign_splits, read_gtzan_ff
from wav2genre_cache.data.tracks import Track, join_tags
from wav2genre_cache.errors import DatasetError


def test_random_split_is_stratified_seeded_and_by_track():
    tracks = [Track(f"{lab}.{i}", f"{lab}{i}.wav", lab) for lab in "abcd" for i in range(20)]
    a = assign_splits(tracks, "random", seed=0)
    assert a == assign_splits(tracks, "random", seed=0)
    assert a != assign_splits(tracks, "random", seed=1)
    for lab in "abcd":
        counts = Counter(t.split for t in a if t.label == lab)
        assert counts == {"train": 16, "valid": 2, "test": 2}


def test_random_split_keeps_each_artist_on_one_side():
    tracks = [Track(f"t{i}", f"{i}.wav", "ab"[i % 2], artist=f"artist{i // 4}") for i in range(80)]
    split = {}
    for t in assign_splits(tracks, "random", seed=3):
        split.setdefault(t.artist, set()).add(t.split)
    assert all(len(s) == 1 for s in split.values())
    assert {s for v in split.values() for s in v} == {"train", "valid", "test"}


def test_multi_label_random_split_stratifies_on_the_rarest_tag():
    # Each rare track has its own tag combination: stratifying on the combination would put all
    # three in train; on the rarest tag they go one to each split.
    tracks = [
        Track(f"t{i}", f"{i}.wav", join_tags(["common", f"x{i % 4}", *(["rare"] if i < 3 else [])]))
        for i in range(40)
    ]
    split = assign_splits(tracks, "random", seed=0)
    assert sorted(t.split for t in split[:3]) == ["test", "train", "valid"]


def test_gtzan_ff_assigns_the_dev_clips_their_published_splits(dev_clips, split_lists):
    mapping = read_gtzan_ff(split_lists)
    assert len(mapping) == 930 and mapping["blues.00029"] == "train"
    tracks = assign_splits(read_source(dev_clips).tracks, "gtzan-ff", split_dir=split_lists)
    for t in tracks:
        assert t.split == mapping.get(t.track_id, "excluded")
    assert Counter(t.split for t in tracks) == {"valid": 28, "train": 24, "test": 4, "excluded": 4}


def test_split_csv_file(tmp_path):
    tracks = [Track("a", "a.wav", "x"), Track("b", "b.wav", "x"), Track("c", "c.wav", "y")]
    f = tmp_path / "split.csv"
    f.write_text("track_id,split\na,train\nb,test\n")
    assert [t.split for t in assign_splits(tracks, str(f))] == ["train", "test", "excluded"]
    f.write_text("track_id,split\na,dev\n")
    with pytest.raises(DatasetError, match="unknown split name"):
        assign_splits(tracks, str(f))


def test_random_split_keeps_each_group_of_a_metadata_column_on_one_side():
    # Albums cut across artists here, so keeping artists apart would split albums.
    tracks = [
        Track(f"t{i}", f"{i}.wav", "ab"[i % 2], artist=f"artist{i % 8}",
              metadata=(("album", f"album{i // 4}"),))
        for i in range(80)
    ]  # fmt: skip
    by_album, by_artist = {}, {}
    for t in assign_splits(tracks, "random", seed=3, group_by="album"):
        by_album.setdefault(dict(t.metadata)["album"], set()).add(t.split)
        by_artist.setdefault(t.artist, set()).add(t.split)
    assert all(len(s) == 1 for s in by_album.values())
    assert any(len(s) > 1 for s in by_artist.values())  # grouped by album, not by artist
    # group_by none: nothing is kept together but a track's own segments.
    split = assign_splits(tracks, "random", seed=3, group_by="none")
    assert any(len({t.split for t in split if t.artist == a}) > 1 for a in by_artist)
