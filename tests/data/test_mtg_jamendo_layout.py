"""The mtg-jamendo layout, on a tiny fake copy written into tmp_path
(fakes.write_fake_mtg_jamendo)."""

from __future__ import annotations

from collections import Counter

import pytest
from fakes import (
    FAKE_MTG_AT_ROOT,
    FAKE_MTG_LOW,
    FAKE_MTG_NO_AUDIO,
    MTG_HEADER,
    fake_mtg_id,
    mtg_row,
    write_fake_mtg_jamendo,
)

from wav2genre_cache.data.catalogue import read_datasets, read_source
from wav2genre_cache.data.layouts import detect_layout
from wav2genre_cache.data.tracks import EXCLUDED
from wav2genre_cache.errors import DatasetError


def test_mtg_jamendo_tags_audio_and_the_official_split_0(tmp_path):
    root = write_fake_mtg_jamendo(tmp_path / "jamendo")
    assert detect_layout(root) == "mtg-jamendo"
    read = read_source(root)
    assert (read.layout, read.multi_label, read.counts) == ("mtg-jamendo", True, {"no_audio": 1})
    by_id = {t.track_id: t for t in read.tracks}
    assert len(by_id) == 11 and fake_mtg_id(FAKE_MTG_NO_AUDIO) not in by_id
    # One category in the file: its prefix is dropped, the tags sorted and joined.
    assert by_id[fake_mtg_id(1)].label == "happy|sad"
    assert by_id[fake_mtg_id(2)].label == "energetic|happy"
    assert by_id[fake_mtg_id(5)].label == "sad"
    assert by_id[fake_mtg_id(11)].label == "calm"
    assert by_id[fake_mtg_id(3)].artist == "artist_000001"
    assert by_id[fake_mtg_id(1)].metadata == (("album", "album_000001"),)  # --group-by album
    assert by_id[fake_mtg_id(3)].path == str(root / "audio" / "03" / "3.mp3")
    assert by_id[fake_mtg_id(FAKE_MTG_LOW)].path == str(root / "audio" / "05" / "5.low.mp3")
    assert by_id[fake_mtg_id(FAKE_MTG_AT_ROOT)].path == str(root / "06" / "6.mp3")
    assert {n: by_id[fake_mtg_id(n)].split for n in (1, 8, 9, 10, 11, 12)} == {
        1: "train",
        8: "train",
        9: "valid",
        10: "valid",
        11: "test",
        12: EXCLUDED,
    }
    cat = read_datasets([root])
    assert cat.multi_label and cat.notes == ["jamendo: 1 annotated tracks have no audio, left out"]
    # The official split is kept by the default split method.
    assert cat.counts["sources"]["jamendo"]["splits"] == {
        "train": 7,
        "valid": 2,
        "test": 1,
        EXCLUDED: 1,
    }


def test_mtg_jamendo_split_dir_chooses_another_official_split(tmp_path):
    root = write_fake_mtg_jamendo(tmp_path / "jamendo")
    split_1 = root / "data" / "splits" / "split-1"
    tracks = read_source(root, split_dir=split_1).tracks
    splits = {t.track_id: t.split for t in tracks}
    assert [splits[fake_mtg_id(n)] for n in (1, 2, 3, 4, 11, 12)] == [
        "valid",
        "valid",
        "test",
        "train",
        "train",
        EXCLUDED,
    ]
    cat = read_datasets([root], split_dir=split_1)
    assert [t.split for t in cat.tracks] == [t.split for t in tracks]
    # A folder of split lists that are not for this tsv is refused, not silently passed over.
    other = tmp_path / "other"
    other.mkdir()
    (other / "autotagging_genre-train.tsv").write_text(MTG_HEADER + "\n")
    with pytest.raises(DatasetError, match="no autotagging_moodtheme-train.tsv"):
        read_source(root, split_dir=other)
    # A split folder short of a file names it.
    (split_1 / "autotagging_moodtheme-test.tsv").unlink()
    with pytest.raises(DatasetError, match="autotagging_moodtheme-test.tsv: missing"):
        read_source(root, split_dir=split_1)


def test_mtg_jamendo_mixed_categories_keep_their_prefix_and_no_splits_means_random(tmp_path):
    root = tmp_path / "mixed"
    rows = [
        mtg_row(1, ["genre---rock", "instrument---piano"]),
        mtg_row(2, ["genre---rock", "mood/theme---happy", "genre---pop"]),
        *(mtg_row(n, ["genre---pop"], artist=n) for n in range(3, 13)),
    ]
    root.mkdir()
    (root / "autotagging.tsv").write_text("\n".join([MTG_HEADER, *rows]) + "\n")
    for n in range(1, 13):
        (root / "audio" / f"{n:02d}").mkdir(parents=True)
        (root / "audio" / f"{n:02d}" / f"{n}.mp3").write_bytes(b"")  # exists; never decoded
    assert detect_layout(root) == "mtg-jamendo"
    tracks = read_source(root).tracks
    assert tracks[0].label == "genre---rock|instrument---piano"
    assert tracks[1].label == "genre---pop|genre---rock|mood/theme---happy"
    assert all(t.split == "" for t in tracks)
    cat = read_datasets([root], seed=1)
    assert Counter(t.split for t in cat.tracks) == {"train": 10, "valid": 1, "test": 1}
    # A file earlier in the order wins: autotagging_genre.tsv over autotagging.tsv.
    (root / "data").mkdir()
    (root / "data" / "autotagging_genre.tsv").write_text(
        "\n".join([MTG_HEADER, mtg_row(3, ["genre---jazz", "genre---pop"])]) + "\n"
    )
    assert [(t.track_id, t.label) for t in read_source(root).tracks] == [
        (fake_mtg_id(3), "jazz|pop")
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("TRACK_ID\tPATH\n", "line 1 is not the header"),
        (f"{MTG_HEADER}\ntrack_0000001\tartist_1\talbum_1\t01/1.mp3\t200.0\n", "line 2: expected"),
        (f"{MTG_HEADER}\n{mtg_row(1, ['a---b'])}\n{mtg_row(1, ['a---c'])}\n", "line 3: track"),
    ],
)
def test_mtg_jamendo_bad_tsv_names_file_and_line(tmp_path, text, problem):
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "autotagging.tsv").write_text(text)
    with pytest.raises(DatasetError, match=f"autotagging.tsv(, |: ){problem}"):
        read_source(tmp_path / "j")
