"""The msd layout, on a tiny fake copy written into tmp_path (fakes.write_fake_msd)."""

from __future__ import annotations

from collections import Counter

import pytest
from fakes import (
    FAKE_MSD_GENRES,
    fake_msd_id,
    write_audio_file,
    write_fake_msd,
)

from wav2genre_cache.data.catalogue import read_datasets, read_source
from wav2genre_cache.data.layouts import detect_layout
from wav2genre_cache.errors import DatasetError


def test_msd_reads_the_majority_genre_and_the_artists(tmp_path):
    root = write_fake_msd(tmp_path / "msd")
    assert detect_layout(root) == "msd"
    read = read_source(root)
    assert (read.layout, read.multi_label) == ("msd", False)
    assert read.counts == {"no_audio": 2, "unannotated_audio": 1}
    tracks = read.tracks
    assert len(tracks) == 24
    assert Counter(t.label for t in tracks) == {"Pop_Rock": 8, "Jazz": 8, "Rap": 8}
    first = next(t for t in tracks if t.track_id == fake_msd_id(0, 3))
    # Track 3 has a minority genre (Jazz) on its line: it is ignored.
    assert first.label == "Pop_Rock" and first.artist == "Artist 0-1" and first.split == ""
    assert first.path == str(root / "previews" / "0" / "1" / f"{fake_msd_id(0, 3)}.wav")
    assert [t.track_id for t in tracks] == sorted(t.track_id for t in tracks)


def test_msd_prefers_cd2c_and_finds_the_file_one_folder_down(tmp_path):
    root = write_fake_msd(tmp_path / "msd", annotations="msd_tagtraum_cd2.cls", annotations_dir="x")
    assert detect_layout(root) == "msd"
    assert len(read_source(root).tracks) == 24
    # A CD2C beside it wins: here it annotates a single track.
    (root / "msd_tagtraum_cd2c.cls").write_text(f"# cd2c\n{fake_msd_id(1, 0)}\tBlues\n")
    assert [(t.track_id, t.label) for t in read_source(root).tracks] == [
        (fake_msd_id(1, 0), "Blues")
    ]
    assert read_source(root).counts == {"no_audio": 0, "unannotated_audio": 24}


def test_msd_random_split_keeps_artists_apart_and_counts_what_is_missing(tmp_path):
    root = write_fake_msd(tmp_path / "msd")
    cat = read_datasets([root], seed=4)
    assert cat.sources == ["msd"] and not cat.multi_label
    assert {t.source for t in cat.tracks} == {"msd"}
    assert cat.notes == [
        "msd: 2 annotated tracks have no audio, left out",
        "msd: 1 audio files have no annotation, ignored",
    ]
    counts = cat.counts["sources"]["msd"]
    assert (counts["no_audio"], counts["unannotated_audio"], counts["tracks"]) == (2, 1, 24)
    sides: dict[str, set[str]] = {}
    for t in cat.tracks:
        sides.setdefault(t.artist, set()).add(t.split)
    assert len(sides) == 12 and all(len(s) == 1 for s in sides.values())
    assert set(counts["splits"]) == {"train", "valid", "test"}
    for genre in FAKE_MSD_GENRES:
        # 4 artists of 2 tracks each: one artist to test, one to valid, two to train.
        assert Counter(t.split for t in cat.tracks if t.label == genre) == {
            "train": 4,
            "valid": 2,
            "test": 2,
        }


@pytest.mark.parametrize(
    "line",
    ["trFAKE0000128F9000\tRock", "TRSHORT\tRock", f"{fake_msd_id(0, 0)}", f"{fake_msd_id(0, 0)}\t"],
)
def test_msd_bad_annotation_line_names_file_and_line(tmp_path, line):
    root = write_fake_msd(tmp_path / "msd", per_genre=2)
    cls = root / "msd_tagtraum_cd2c.cls"
    lines = cls.read_text().splitlines()
    cls.write_text("\n".join([*lines[:3], line, *lines[3:]]) + "\n")
    with pytest.raises(DatasetError, match=r"msd_tagtraum_cd2c.cls, line 4: expected TRACKID"):
        read_source(root)


def test_msd_two_previews_of_one_track_are_refused(tmp_path):
    root = write_fake_msd(tmp_path / "msd", per_genre=1)
    write_audio_file(root / "elsewhere" / f"{fake_msd_id(2, 0)}.flac")
    with pytest.raises(DatasetError, match=f"two audio files for track {fake_msd_id(2, 0)}"):
        read_source(root)


def test_msd_without_any_preview_says_so(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "msd_tagtraum_cd2.cls").write_text(f"{fake_msd_id(0, 0)}\tRock\n")
    with pytest.raises(DatasetError, match="none of the 1 tracks of msd_tagtraum_cd2.cls"):
        read_source(tmp_path / "m", "msd")
