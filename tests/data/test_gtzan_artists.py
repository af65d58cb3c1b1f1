"""GTZAN's artists from Sturm's index: found beside the data, read into tracks, used by splits."""

from collections import Counter
from pathlib import Path

import pytest
from conftest import SHARED, write_audio

from wav2genre_cache.data.catalogue import read_datasets, read_source
from wav2genre_cache.data.gtzan_artists import find_index, read_index
from wav2genre_cache.errors import DatasetError

INDEX = """## Bob L. Sturm, 2012
blues.00000.wav ::: Artist A ::: One
blues.00001.wav ::: Artist A ::: Two
blues.00002.wav ::: Artist B ::: Three
blues.00003.wav :::  ::: Four
pop.00000.wav ::: Artist C ::: Five
"""


def gtzan(root: Path, index_at: Path | None) -> Path:
    for name in ("blues.00000", "blues.00001", "blues.00002", "blues.00003", "pop.00000"):
        write_audio(root / name.split(".")[0] / f"{name}.wav", 0.5)
    if index_at is not None:
        index_at.parent.mkdir(parents=True, exist_ok=True)
        index_at.write_text(INDEX)
    return root


@pytest.mark.parametrize("where", ["inside", "beside", "in a folder beside"])
def test_the_index_is_found_in_or_beside_the_gtzan_folder_and_read_into_tracks(tmp_path, where):
    at = {
        "inside": tmp_path / "genres" / "GTZANindex.txt",
        "beside": tmp_path / "GTZANindex.txt",
        "in a folder beside": tmp_path / "gtzan_artists" / "GTZANindex.txt",
    }[where]
    root = gtzan(tmp_path / "genres", at)
    assert find_index(root) == at.resolve() or find_index(root) == at
    read = read_source(root)
    artists = {t.track_id: t.artist for t in read.tracks}
    assert artists == {
        "blues.00000": "Artist A",
        "blues.00001": "Artist A",
        "blues.00002": "Artist B",
        "blues.00003": "",  # blank in the index: unknown, a group of its own
        "pop.00000": "Artist C",
    }
    assert read.notes == [
        f"GTZAN artists from {at} (Sturm 2012): 3 artists for 5 tracks (1 unknown); splits "
        "keep each artist on one side."
    ]


def test_without_an_index_the_user_is_told_that_figures_may_be_inflated(tmp_path):
    root = gtzan(tmp_path / "genres", None)
    read = read_source(root)
    assert all(t.artist == "" for t in read.tracks)
    assert len(read.notes) == 1 and "no GTZAN artist index (GTZANindex.txt)" in read.notes[0]
    assert "inflated" in read.notes[0]


def test_a_csv_manifest_of_gtzan_files_gets_their_artists_unless_it_names_them(tmp_path):
    root = gtzan(tmp_path / "genres", tmp_path / "GTZANindex.txt")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label,artist\n"
        f"{root}/blues/blues.00000.wav,x,\n"
        f"{root}/blues/blues.00001.wav,x,Someone Else\n"
        f"{root}/pop/pop.00000.wav,y,\n"
    )
    artists = [t.artist for t in read_source(manifest, "csv").tracks]
    assert artists == ["Artist A", "Someone Else", "Artist C"]


def test_a_malformed_line_is_named(tmp_path):
    bad = tmp_path / "GTZANindex.txt"
    bad.write_text(INDEX + "pop.00001.wav : Artist D\n")
    with pytest.raises(DatasetError, match=r"GTZANindex.txt, line 7: expected"):
        read_index(bad)


def test_the_dev_clips_splits_keep_each_artist_on_one_side(dev_clips):
    index = SHARED / "data" / "gtzan_artists" / "GTZANindex.txt"
    if not index.is_file():
        pytest.skip(f"no GTZAN artist index at {index}")
    tracks = read_datasets([dev_clips]).tracks
    sides: dict[str, set[str]] = {}
    for t in tracks:
        sides.setdefault(t.artist, set()).add(t.split)
    assert all(len(s) == 1 for a, s in sides.items() if a)
    # Blues, classical, reggae and rock are one artist each, jazz two: none of them can be
    # tested on an artist it was not trained on, so all their tracks train.
    test_labels = Counter(t.label for t in tracks if t.split == "test")
    assert set(test_labels) == {"country", "disco", "hiphop", "metal", "pop"}
