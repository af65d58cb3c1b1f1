"""Layout detection and the gtzan, folder, csv and fma readers."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
from conftest import make_label_folder, write_audio

from wav2genre_cache.data.catalogue import read_source
from wav2genre_cache.data.layouts import LAYOUTS, detect_layout
from wav2genre_cache.data.splits import assign_splits
from wav2genre_cache.errors import DatasetError


def test_gtzan_layout_is_detected_on_the_dev_clips(dev_clips):
    assert detect_layout(dev_clips) == "gtzan"
    tracks = read_source(dev_clips).tracks
    assert len(tracks) == 60
    assert Counter(t.label for t in tracks) == {g: 6 for g in Counter(t.label for t in tracks)}
    assert tracks[0].track_id == "blues.00000" and tracks[0].label == "blues"


def test_folder_layout_uses_sub_folders_as_labels(tmp_path):
    make_label_folder(tmp_path / "d", per_label=2)
    write_audio(tmp_path / "d" / "stray.wav", 1.0)  # no label folder: ignored
    assert detect_layout(tmp_path / "d") == "folder"
    tracks = read_source(tmp_path / "d").tracks
    assert {t.label for t in tracks} == {"low", "high"} and len(tracks) == 4
    assert tracks[0].track_id == "high/high_0"


def test_csv_manifest_paths_are_relative_to_the_csv(tmp_path):
    write_audio(tmp_path / "audio" / "a.wav", 1.0)
    write_audio(tmp_path / "audio" / "b.wav", 1.0)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split,artist\naudio/a.wav,x,train,A\naudio/b.wav,y,test,B\n")
    assert detect_layout(manifest) == "csv"
    tracks = read_source(manifest).tracks
    assert tracks[0].path == str(tmp_path / "audio" / "a.wav")
    assert (tracks[0].split, tracks[0].artist) == ("train", "A")
    # The manifest's own split is kept by the default split method.
    assert [t.split for t in assign_splits(tracks)] == ["train", "test"]


def test_csv_errors_name_the_file_and_problem(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,genre\na.wav,x\n")
    with pytest.raises(DatasetError, match="bad.csv: missing column"):
        read_source(bad)


def test_csv_labels_column_makes_the_manifest_multi_label(tmp_path):
    manifest = tmp_path / "tags.csv"
    manifest.write_text(
        "path,label,labels\na.wav,x,rock| pop |rock\nb.wav,jazz,\nc.wav,,electronic\n"
    )
    read = read_source(manifest)
    assert read.multi_label and read.layout == "csv"
    assert [t.label for t in read.tracks] == ["pop|rock", "jazz", "electronic"]
    manifest.write_text("path,labels\na.wav,rock|pop\nb.wav, | \n")
    with pytest.raises(DatasetError, match=r"tags.csv, line 3: 'b.wav' has no label or labels"):
        read_source(manifest)
    manifest.write_text("path,label\na.wav,rock\n")
    assert not read_source(manifest).multi_label
    manifest.write_text("file,labels\na.wav,rock\n")
    with pytest.raises(DatasetError, match=r"tags.csv: missing column\(s\) \['path'\]"):
        read_source(manifest)


def test_fma_reads_tracks_csv_with_two_header_rows(tmp_path):
    root = tmp_path / "fma"
    cols = pd.MultiIndex.from_tuples(
        [("set", "split"), ("set", "subset"), ("track", "genre_top"), ("artist", "id")]
    )
    df = pd.DataFrame(
        [
            ["training", "small", "Rock", 1],
            ["test", "small", "Pop", 2],
            ["validation", "medium", "Pop", 3],
            ["training", "small", None, 4],
        ],
        index=pd.Index([2, 140, 1500, 7], name="track_id"),
        columns=cols,
    )
    (root / "fma_metadata").mkdir(parents=True)
    df.to_csv(root / "fma_metadata" / "tracks.csv")
    write_audio(root / "fma_small" / "000" / "000002.mp3", 1.5)
    write_audio(root / "fma_small" / "000" / "000140.mp3", 1.5)
    assert detect_layout(root) == "fma"
    tracks = read_source(root).tracks
    # fma_small holds only the small subset, and tracks without genre_top are left out.
    assert [(t.track_id, t.label, t.split) for t in tracks] == [
        ("000002", "Rock", "train"),
        ("000140", "Pop", "test"),
    ]
    assert tracks[0].path.endswith("fma_small/000/000002.mp3") and tracks[0].artist == "1"


def test_layouts_are_named_in_one_order_and_detected_in_another(tmp_path):
    assert list(LAYOUTS) == ["gtzan", "folder", "csv", "fma", "msd", "mtg-jamendo"]
    tried = sorted(LAYOUTS.values(), key=lambda layout: layout.detect_rank)
    assert [layout.name for layout in tried] == [
        "csv",
        "fma",
        "mtg-jamendo",
        "msd",
        "gtzan",
        "folder",
    ]
    # A folder that holds both MTG-Jamendo's tsv and tagtraum's genre file is MTG-Jamendo.
    (tmp_path / "both").mkdir()
    (tmp_path / "both" / "msd_tagtraum_cd2.cls").write_text("")
    (tmp_path / "both" / "autotagging.tsv").write_text("")
    assert detect_layout(tmp_path / "both") == "mtg-jamendo"
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(DatasetError, match=r"notes.txt: a dataset is a folder or a .csv manifest"):
        detect_layout(tmp_path / "notes.txt")
    with pytest.raises(DatasetError, match="missing: no such file or folder"):
        detect_layout(tmp_path / "missing")
    with pytest.raises(
        DatasetError,
        match="unknown dataset layout 'mp3'; use one of auto, gtzan, folder, csv, fma, msd, mtg",
    ):
        read_source(tmp_path, "mp3")
