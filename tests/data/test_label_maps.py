"""Label maps: read, applied to each source, their errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from fakes import (
    write_labelled_folder,
)

from wav2genre_cache.data.catalogue import read_datasets
from wav2genre_cache.errors import DatasetError


def _two_sources(tmp_path: Path) -> tuple[Path, Path]:
    a = write_labelled_folder(tmp_path / "a", {"Hip-Hop": 3, "Rock": 3, "Disco": 2, "Noise": 1})
    b = write_labelled_folder(tmp_path / "b", {"hiphop": 3, "rock": 3})
    return a, b


def test_label_map_maps_drops_and_counts(tmp_path):
    a, b = _two_sources(tmp_path)
    label_map = tmp_path / "map.csv"
    label_map.write_text(
        "source,label,target\n"
        "a,Hip-Hop,hiphop\n"
        "a,Disco,\n"  # dropped on purpose
        "*,rock,rock\n"
        "*,Rock,rock\n"
        ",hiphop,hiphop\n"
        "a,Rock,rock\n"  # the same again: not a conflict
    )
    cat = read_datasets([a, b], label_map=label_map, seed=0)
    assert Counter((t.source, t.label) for t in cat.tracks) == {
        ("a", "hiphop"): 3,
        ("a", "rock"): 3,
        ("b", "hiphop"): 3,
        ("b", "rock"): 3,
    }
    assert cat.notes == [
        "a: 2 tracks with label 'Disco' mapped to nothing, dropped",
        "a: 1 tracks with label 'Noise' not in the label map, dropped",
        "a: 3 tracks left with no label, left out",
    ]
    counts = cat.counts["sources"]["a"]
    assert counts["labels_dropped"] == {"Disco": 2}
    assert counts["labels_unmapped"] == {"Noise": 1}
    assert (counts["tracks_without_label"], counts["tracks"]) == (3, 6)
    assert cat.counts["tracks"] == 12


def test_label_map_maps_each_tag_of_a_multi_label_track(tmp_path):
    manifest = tmp_path / "tags.csv"
    manifest.write_text("path,labels\na.wav,rock|pop|noise\nb.wav,noise\nc.wav,pop|indie\n")
    label_map = tmp_path / "map.csv"
    label_map.write_text("source,label,target\ntags,rock,guitar\n*,indie,guitar\n,pop,pop\n")
    cat = read_datasets([manifest], label_map=label_map)
    assert [(t.track_id, t.label) for t in cat.tracks] == [("a", "guitar|pop"), ("c", "guitar|pop")]
    assert cat.counts["sources"]["tags"]["labels_unmapped"] == {"noise": 2}
    assert cat.notes[-1] == "tags: 1 tracks left with no label, left out"


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ("a,Rock,rock\n*,hiphop,x\na,Rock,pop\n", r"map.csv, line 4: label 'Rock' of source 'a'"),
        ("c,Rock,rock\nd,Rock,rock\n", r"unknown source\(s\) \['c', 'd'\]; the sources are a, b"),
        ("a,Rock,rock|pop\n", r"map.csv, line 2: target 'rock\|pop'"),
    ],
)
def test_label_map_errors_name_the_file_and_row(tmp_path, rows, problem):
    a, b = _two_sources(tmp_path)
    label_map = tmp_path / "map.csv"
    label_map.write_text("source,label,target\n" + rows)
    with pytest.raises(DatasetError, match=problem):
        read_datasets([a, b], label_map=label_map)


def test_label_map_without_its_columns_is_refused(tmp_path):
    a, _ = _two_sources(tmp_path)
    (tmp_path / "map.csv").write_text("label,genre\nRock,rock\n")
    with pytest.raises(DatasetError, match=r"map.csv: missing column\(s\) \['source', 'target'\]"):
        read_datasets([a], label_map=tmp_path / "map.csv")
