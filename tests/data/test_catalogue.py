"""read_datasets: several datasets in one run, and one dataset read as assign_splits reads it."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from fakes import (
    write_audio_file,
    write_fake_msd,
    write_fake_mtg_jamendo,
    write_labelled_folder,
)

from wav2genre_cache.data.catalogue import read_datasets, read_source, source_names
from wav2genre_cache.data.splits import assign_splits
from wav2genre_cache.data.tracks import EXCLUDED, Track
from wav2genre_cache.errors import DatasetError


def test_several_datasets_prefix_ids_and_keep_each_sources_split(tmp_path):
    folder = write_labelled_folder(tmp_path / "x" / "songs", {"lo": 10, "hi": 10})
    twin = write_labelled_folder(tmp_path / "y" / "songs", {"lo": 1})
    write_audio_file(tmp_path / "m" / "a.wav")
    write_audio_file(tmp_path / "m" / "b.wav")
    manifest = tmp_path / "m" / "own.csv"
    manifest.write_text("path,label,split\na.wav,lo,test\nb.wav,hi,train\n")
    assert source_names([folder, twin, manifest]) == ["songs", "songs-2", "own"]
    cat = read_datasets([folder, twin, manifest], seed=2)
    assert cat.sources == ["songs", "songs-2", "own"] and not cat.multi_label
    ids = [t.track_id for t in cat.tracks]
    assert ids[0] == "songs/hi/hi_0" and ids[20] == "songs-2/lo/lo_0"
    assert [(t.track_id, t.split, t.source) for t in cat.tracks[21:]] == [
        ("own/a", "test", "own"),
        ("own/b", "train", "own"),
    ]
    # The folder is split at random, as alone (same seed): its ids just gain the prefix.
    alone = assign_splits(read_source(folder).tracks, "random", seed=2)
    assert [t.split for t in cat.tracks[:20]] == [t.split for t in alone]
    assert Counter(t.split for t in cat.tracks[:20]) == {"train": 16, "valid": 2, "test": 2}
    # A split file names tracks by <source>/<id> or by the bare id.
    split = tmp_path / "split.csv"
    split.write_text("track_id,split\nsongs/hi/hi_0,valid\nlo/lo_0,test\na,train\n")
    cat = read_datasets([folder, twin, manifest], split=str(split))
    named = {t.track_id: t.split for t in cat.tracks if t.split != EXCLUDED}
    assert named == {
        "songs/hi/hi_0": "valid",
        "songs/lo/lo_0": "test",
        "songs-2/lo/lo_0": "test",
        "own/a": "train",
    }


def test_gtzan_ff_applies_to_the_gtzan_source_only(tmp_path, dev_clips, split_lists):
    folder = write_labelled_folder(tmp_path / "other", {"lo": 10, "hi": 10})
    cat = read_datasets([dev_clips, folder], split="gtzan-ff", split_dir=split_lists)
    gtzan = [t for t in cat.tracks if t.source == "gtzan_dev"]
    assert Counter(t.split for t in gtzan) == {"valid": 28, "train": 24, "test": 4, EXCLUDED: 4}
    assert gtzan[0].track_id == "gtzan_dev/blues.00000"
    other = [t for t in cat.tracks if t.source == "other"]
    assert Counter(t.split for t in other) == {"train": 16, "valid": 2, "test": 2}
    with pytest.raises(DatasetError, match="no dataset holds GTZAN tracks"):
        read_datasets([folder], split="gtzan-ff", split_dir=split_lists)


def _with_source(t: Track, name: str) -> Track:
    """The track as read_datasets gives it: the same, with its source set."""
    return replace(t, source=name)


@pytest.mark.parametrize("kind", ["folder", "csv", "msd", "mtg-jamendo", "mtg-random"])
def test_one_dataset_without_a_map_is_read_as_before(tmp_path, kind):
    if kind == "folder":
        data = write_labelled_folder(tmp_path / "f", {"lo": 7, "hi": 5, "mid": 3})
    elif kind == "csv":
        for n in "abcdef":
            write_audio_file(tmp_path / "c" / f"{n}.wav")
        data = tmp_path / "c" / "m.csv"
        data.write_text(
            "path,label,artist\na.wav,x,A\nb.wav,x,A\nc.wav,y,B\nd.wav,y,C\ne.wav,x,D\nf.wav,y,\n"
        )
    elif kind == "msd":
        data = write_fake_msd(tmp_path / "msd", per_genre=4)
    else:
        data = write_fake_mtg_jamendo(tmp_path / "jamendo")
        if kind == "mtg-random":
            for f in sorted((data / "data" / "splits").rglob("*.tsv")):
                f.unlink()
    for seed in (0, 5):
        cat = read_datasets([data], seed=seed)
        before = assign_splits(read_source(data).tracks, "random", seed)
        assert cat.tracks == [_with_source(t, source_names([data])[0]) for t in before]
        assert cat.sources == source_names([data])


def test_one_gtzan_dataset_is_read_as_before(dev_clips, split_lists):
    for split, split_dir in (("random", None), ("gtzan-ff", split_lists)):
        cat = read_datasets(dev_clips, split=split, seed=3, split_dir=split_dir)
        before = assign_splits(read_source(dev_clips).tracks, split, 3, split_dir)
        assert cat.tracks == [_with_source(t, "gtzan_dev") for t in before]
        assert cat.counts["sources"]["gtzan_dev"]["layout"] == "gtzan"
        assert len(cat.notes) <= 1 and all("GTZAN artists from" in n for n in cat.notes)
