"""The mtg-jamendo layout: an autotagging*.tsv, its audio and its official splits."""

from __future__ import annotations

from pathlib import Path

from wav2genre_cache.data.layouts.files import read_lines
from wav2genre_cache.data.layouts.layout import Layout
from wav2genre_cache.data.tracks import EXCLUDED, SourceTracks, Track, join_tags
from wav2genre_cache.errors import DatasetError

# The first of these found is read: the mtg-jamendo-dataset repository holds them all.
_TSVS = (
    "autotagging_moodtheme.tsv",
    "autotagging_genre.tsv",
    "autotagging_instrument.tsv",
    "autotagging_top50tags.tsv",
    "autotagging.tsv",
)
_HEADER = ["TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION", "TAGS"]
_SPLIT_NAMES = {"train": "train", "validation": "valid", "test": "test"}
_CATEGORY = "---"  # mood/theme---happy: category, then tag


def detect(root: Path) -> bool:
    """A folder with an autotagging*.tsv at its top level or in its data/ folder."""
    return _find_tsv(root) is not None


def _find_tsv(data: Path) -> Path | None:
    """The first of _TSVS at DATA's top level or in DATA/data."""
    if not data.is_dir():
        return None
    candidates = (folder / name for name in _TSVS for folder in (data, data / "data"))
    return next((path for path in candidates if path.is_file()), None)


def read(data: Path, split_dir: Path | None = None) -> SourceTracks:
    """MTG-Jamendo: autotagging*.tsv (tags from the 6th field on), audio, official splits."""
    tsv = _find_tsv(data)
    if tsv is None:
        raise DatasetError(f"{data}: none of {', '.join(_TSVS)} at its top level or in data/")
    rows = _read_tsv(tsv)
    # A file of one category (mood/theme---happy, mood/theme---sad) keeps the tag alone; one
    # that mixes categories keeps them, since a name may be in two (genre---x, mood/theme---x).
    categories = {
        tag.split(_CATEGORY, 1)[0] if _CATEGORY in tag else None
        for *_, tags in rows
        for tag in tags
    }
    strip = len(categories) == 1 and None not in categories
    split_of = _read_splits(tsv, split_dir)
    tracks, no_audio = [], 0
    for track_id, artist, album, rel, tags in rows:
        path = _audio_of(data, rel)
        if path is None:
            no_audio += 1
            continue
        if strip:
            tags = [t.split(_CATEGORY, 1)[1] for t in tags]
        split = "" if split_of is None else split_of.get(track_id, EXCLUDED)
        metadata = (("album", album),) if album else ()
        tracks.append(Track(track_id, str(path), join_tags(tags), split, artist, metadata=metadata))
    if not tracks and rows:
        raise DatasetError(
            f"{data}: none of the {len(rows)} tracks of {tsv.name} has audio in "
            f"{data / 'audio'} or {data} (PATH as in the tsv, e.g. {rows[0][3]})"
        )
    return SourceTracks(tracks, "mtg-jamendo", True, {"no_audio": no_audio})


def _read_tsv(path: Path) -> list[tuple[str, str, str, str, list[str]]]:
    """(track id, artist id, album id, PATH, tags) rows; tags are the 6th and following fields."""
    lines = read_lines(path)
    if not lines or lines[0].split("\t")[:6] != _HEADER:
        raise DatasetError(f"{path}: line 1 is not the header {' '.join(_HEADER)} (tabs)")
    rows = []
    seen: set[str] = set()
    for line_no, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        # Not pandas: a row has as many fields as it has tags, one tag per field.
        fields = line.split("\t")
        tags = [t.strip() for t in fields[5:] if t.strip()]
        if len(fields) < 6 or not fields[0] or not fields[3] or not tags:
            raise DatasetError(
                f"{path}, line {line_no}: expected TRACK_ID, ARTIST_ID, ALBUM_ID, PATH, "
                f"DURATION and at least one tag, tab-separated; got {line[:80]!r}"
            )
        if fields[0] in seen:
            raise DatasetError(f"{path}, line {line_no}: track {fields[0]} is listed twice")
        seen.add(fields[0])
        rows.append((fields[0], fields[1], fields[2], fields[3], tags))
    return rows


def _audio_of(data: Path, rel: str) -> Path | None:
    """Where PATH's audio is: under DATA/audio or DATA, as downloaded or as the .low.mp3 copy."""
    path = Path(rel)
    low = path.with_name(f"{path.stem}.low{path.suffix}")
    for root in (data / "audio", data):
        for candidate in (root / path, root / low):
            if candidate.is_file():
                return candidate
    return None


def _read_splits(tsv: Path, split_dir: Path | None) -> dict[str, str] | None:
    """Track id -> split from splits/split-N/<stem>-{train,validation,test}.tsv; None if none.

    split-0 beside the tsv by default; --split-dir names another split-N folder.
    """
    stem = tsv.stem
    folder = tsv.parent / "splits" / "split-0"
    if split_dir is not None:
        if (split_dir / f"{stem}-train.tsv").is_file():
            folder = split_dir
        elif any(split_dir.glob("autotagging*-train.tsv")):
            # An MTG-Jamendo split folder for other tsvs: the user meant it, for another file.
            raise DatasetError(f"{split_dir}: no {stem}-train.tsv for {tsv}")
    if not (folder / f"{stem}-train.tsv").is_file():
        return None
    split_of: dict[str, str] = {}
    for name, split in _SPLIT_NAMES.items():
        f = folder / f"{stem}-{name}.tsv"
        if not f.is_file():
            raise DatasetError(
                f"{f}: missing; a split folder holds {stem}-train|validation|test.tsv"
            )
        for line in read_lines(f):
            track_id = line.split("\t", 1)[0].strip()
            if not track_id or track_id == _HEADER[0]:
                continue
            if split_of.get(track_id, split) != split:
                raise DatasetError(
                    f"{f}: track {track_id} is also in the {split_of[track_id]} split"
                )
            split_of[track_id] = split
    return split_of


LAYOUT = Layout("mtg-jamendo", detect, read, detect_rank=20)
