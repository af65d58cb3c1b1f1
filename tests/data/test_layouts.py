"""MSD, MTG-Jamendo, multi-label manifests, label maps and several datasets in one run.

Every dataset here is a tiny fake copy written into tmp_path. The writers are public so that
other tests (end to end) can reuse them: `write_fake_msd(root)` and `write_fake_mtg_jamendo(root)`
write real audio (1.5 s, 16 kHz, a tone per label plus noise, so heads can learn it; 1.5 s since
decoding refuses tracks under 1 s) and return root.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from fakes import (
    FAKE_MSD_GENRES,
    FAKE_MTG_AT_ROOT,
    FAKE_MTG_LOW,
    FAKE_MTG_NO_AUDIO,
    MTG_HEADER,
    fake_msd_id,
    fake_mtg_id,
    mtg_row,
    write_audio_file,
    write_fake_msd,
    write_fake_mtg_jamendo,
    write_labelled_folder,
)

from wav2genre_cache.data.datasets import (
    EXCLUDED,
    TAG_SEPARATOR,
    Track,
    assign_splits,
    detect_layout,
    discover,
    join_tags,
    read_datasets,
    read_source,
    source_names,
    tags_of,
)
from wav2genre_cache.errors import DatasetError

# ---- fake copies -------------------------------------------------------------------------------


# ---- tags --------------------------------------------------------------------------------------


def test_tags_are_sorted_and_joined_by_the_separator():
    assert TAG_SEPARATOR == "|"
    assert join_tags([" sad", "happy", "sad", ""]) == "happy|sad"
    assert tags_of("happy|sad") == ["happy", "sad"]
    assert tags_of("rock") == ["rock"] and tags_of("") == [] and tags_of("a||b|") == ["a", "b"]


def test_track_source_is_the_last_field():
    t = Track("id", "a.wav", "rock", "train", "someone")
    assert (t.split, t.artist, t.source) == ("train", "someone", "")


# ---- MSD ---------------------------------------------------------------------------------------


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
    assert len(discover(root)) == 24
    # A CD2C beside it wins: here it annotates a single track.
    (root / "msd_tagtraum_cd2c.cls").write_text(f"# cd2c\n{fake_msd_id(1, 0)}\tBlues\n")
    assert [(t.track_id, t.label) for t in discover(root)] == [(fake_msd_id(1, 0), "Blues")]
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
        discover(root)


def test_msd_two_previews_of_one_track_are_refused(tmp_path):
    root = write_fake_msd(tmp_path / "msd", per_genre=1)
    write_audio_file(root / "elsewhere" / f"{fake_msd_id(2, 0)}.flac")
    with pytest.raises(DatasetError, match=f"two audio files for track {fake_msd_id(2, 0)}"):
        discover(root)


def test_msd_without_any_preview_says_so(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "msd_tagtraum_cd2.cls").write_text(f"{fake_msd_id(0, 0)}\tRock\n")
    with pytest.raises(DatasetError, match="none of the 1 tracks of msd_tagtraum_cd2.cls"):
        discover(tmp_path / "m", "msd")


# ---- MTG-Jamendo -------------------------------------------------------------------------------


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
    tracks = discover(root, split_dir=split_1)
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
        discover(root, split_dir=other)
    # A split folder short of a file names it.
    (split_1 / "autotagging_moodtheme-test.tsv").unlink()
    with pytest.raises(DatasetError, match="autotagging_moodtheme-test.tsv: missing"):
        discover(root, split_dir=split_1)


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
    tracks = discover(root)
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
    assert [(t.track_id, t.label) for t in discover(root)] == [(fake_mtg_id(3), "jazz|pop")]


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
        discover(tmp_path / "j")


# ---- CSV with labels ---------------------------------------------------------------------------


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
        discover(manifest)
    manifest.write_text("path,label\na.wav,rock\n")
    assert not read_source(manifest).multi_label
    manifest.write_text("file,labels\na.wav,rock\n")
    with pytest.raises(DatasetError, match=r"tags.csv: missing column\(s\) \['path'\]"):
        discover(manifest)


# ---- label maps --------------------------------------------------------------------------------


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


# ---- several datasets --------------------------------------------------------------------------


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
    alone = assign_splits(discover(folder), "random", seed=2)
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


def test_multi_label_random_split_stratifies_on_the_rarest_tag():
    # Each rare track has its own tag combination: stratifying on the combination would put all
    # three in train; on the rarest tag they go one to each split.
    tracks = [
        Track(f"t{i}", f"{i}.wav", join_tags(["common", f"x{i % 4}", *(["rare"] if i < 3 else [])]))
        for i in range(40)
    ]
    split = assign_splits(tracks, "random", seed=0)
    assert sorted(t.split for t in split[:3]) == ["test", "train", "valid"]


# ---- one dataset as before ---------------------------------------------------------------------


def _with_source(t: Track, name: str) -> Track:
    """The track as read_datasets gives it: the same, with its source set."""
    return Track(t.track_id, t.path, t.label, t.split, t.artist, name)


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
        before = assign_splits(discover(data), "random", seed)
        assert cat.tracks == [_with_source(t, source_names([data])[0]) for t in before]
        assert cat.sources == source_names([data])


def test_one_gtzan_dataset_is_read_as_before(dev_clips, split_lists):
    for split, split_dir in (("random", None), ("gtzan-ff", split_lists)):
        cat = read_datasets(dev_clips, split=split, seed=3, split_dir=split_dir)
        before = assign_splits(discover(dev_clips), split, 3, split_dir)
        assert cat.tracks == [_with_source(t, "gtzan_dev") for t in before]
        assert cat.counts["sources"]["gtzan_dev"]["layout"] == "gtzan" and cat.notes == []
