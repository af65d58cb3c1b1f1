from collections import Counter

import pandas as pd
import pytest
from conftest import make_label_folder, write_audio

from wav2genre_cache.data.datasets import (
    Track,
    assign_splits,
    detect_layout,
    discover,
    read_gtzan_ff,
)
from wav2genre_cache.errors import DatasetError


def test_gtzan_layout_is_detected_on_the_dev_clips(dev_clips):
    assert detect_layout(dev_clips) == "gtzan"
    tracks = discover(dev_clips)
    assert len(tracks) == 60
    assert Counter(t.label for t in tracks) == {g: 6 for g in Counter(t.label for t in tracks)}
    assert tracks[0].track_id == "blues.00000" and tracks[0].label == "blues"


def test_folder_layout_uses_sub_folders_as_labels(tmp_path):
    make_label_folder(tmp_path / "d", per_label=2)
    write_audio(tmp_path / "d" / "stray.wav", 1.0)  # no label folder: ignored
    assert detect_layout(tmp_path / "d") == "folder"
    tracks = discover(tmp_path / "d")
    assert {t.label for t in tracks} == {"low", "high"} and len(tracks) == 4
    assert tracks[0].track_id == "high/high_0"


def test_csv_manifest_paths_are_relative_to_the_csv(tmp_path):
    write_audio(tmp_path / "audio" / "a.wav", 1.0)
    write_audio(tmp_path / "audio" / "b.wav", 1.0)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split,artist\naudio/a.wav,x,train,A\naudio/b.wav,y,test,B\n")
    assert detect_layout(manifest) == "csv"
    tracks = discover(manifest)
    assert tracks[0].path == str(tmp_path / "audio" / "a.wav")
    assert (tracks[0].split, tracks[0].artist) == ("train", "A")
    # The manifest's own split is kept by the default split method.
    assert [t.split for t in assign_splits(tracks)] == ["train", "test"]


def test_csv_errors_name_the_file_and_problem(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,genre\na.wav,x\n")
    with pytest.raises(DatasetError, match="bad.csv: missing column"):
        discover(bad)


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
    tracks = discover(root)
    # fma_small holds only the small subset, and tracks without genre_top are left out.
    assert [(t.track_id, t.label, t.split) for t in tracks] == [
        ("000002", "Rock", "train"),
        ("000140", "Pop", "test"),
    ]
    assert tracks[0].path.endswith("fma_small/000/000002.mp3") and tracks[0].artist == "1"


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


def test_gtzan_ff_assigns_the_dev_clips_their_published_splits(dev_clips, split_lists):
    mapping = read_gtzan_ff(split_lists)
    assert len(mapping) == 930 and mapping["blues.00029"] == "train"
    tracks = assign_splits(discover(dev_clips), "gtzan-ff", split_dir=split_lists)
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
