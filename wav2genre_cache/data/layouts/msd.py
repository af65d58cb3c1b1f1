"""The msd layout: tagtraum genre annotations and previews named by MSD track id."""

from __future__ import annotations

import re
from pathlib import Path

from wav2genre_cache.audio.decode import AUDIO_EXTENSIONS
from wav2genre_cache.data.layouts.files import read_lines
from wav2genre_cache.data.layouts.layout import Layout
from wav2genre_cache.data.tracks import SourceTracks, Track
from wav2genre_cache.errors import DatasetError

_MSD_ID = re.compile(r"TR[A-Z0-9]{16}")
# tagtraum's CD2C (the cleaned variant) is preferred over CD2 when both are there.
_ANNOTATIONS = ("msd_tagtraum_cd2c.cls", "msd_tagtraum_cd2.cls")
_ARTISTS_FILE = "unique_tracks.txt"


def detect(root: Path) -> bool:
    """A folder with tagtraum's genre file at its top level or one folder down."""
    return _find_annotations(root) is not None


def _find_annotations(data: Path) -> Path | None:
    """tagtraum's genre file at DATA's top level or one folder down, CD2C before CD2."""
    if not data.is_dir():
        return None
    for name in _ANNOTATIONS:
        found = sorted(data.glob(name)) + sorted(data.glob(f"*/{name}"))
        if found:
            return found[0]
    return None


def read(data: Path, split_dir: Path | None = None) -> SourceTracks:
    """MSD: tagtraum genres (the majority one), previews named by MSD track id anywhere under DATA."""
    cls = _find_annotations(data)
    if cls is None:
        raise DatasetError(
            f"{data}: no {' or '.join(_ANNOTATIONS)} at its top level or one folder down"
        )
    genres = _read_tagtraum(cls)
    audio: dict[str, Path] = {}
    artist_files = []
    # One walk finds both the previews and unique_tracks.txt: the MSD tree can be large.
    for p in sorted(data.rglob("*")):
        if p.name == _ARTISTS_FILE:
            artist_files.append(p)
        elif p.suffix.lower() in AUDIO_EXTENSIONS and _MSD_ID.fullmatch(p.stem) and not p.is_dir():
            if p.stem in audio:
                raise DatasetError(
                    f"{data}: two audio files for track {p.stem}: {audio[p.stem]}, {p}"
                )
            audio[p.stem] = p
    artists = _read_artists(artist_files[0]) if artist_files else {}
    tracks = [
        Track(tid, str(audio[tid]), genre, artist=artists.get(tid, ""))
        for tid, genre in sorted(genres.items())
        if tid in audio
    ]
    if not tracks:
        raise DatasetError(
            f"{data}: none of the {len(genres)} tracks of {cls.name} has audio under it "
            "(previews named by MSD track id, e.g. TRAAAAK128F9318786.mp3)"
        )
    counts = {
        "no_audio": len(genres) - len(tracks),
        "unannotated_audio": len(audio.keys() - genres.keys()),
    }
    return SourceTracks(tracks, "msd", False, counts)


def _read_tagtraum(path: Path) -> dict[str, str]:
    """TRACKID<TAB>majority genre[<TAB>minority genre] lines; # starts a comment."""
    genres: dict[str, str] = {}
    for line_no, line in enumerate(read_lines(path), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if not 2 <= len(fields) <= 3 or not _MSD_ID.fullmatch(fields[0]) or not fields[1]:
            raise DatasetError(
                f"{path}, line {line_no}: expected TRACKID<TAB>genre[<TAB>minority genre], "
                f"got {line[:80]!r}"
            )
        if fields[0] in genres:
            raise DatasetError(f"{path}, line {line_no}: track {fields[0]} is annotated twice")
        genres[fields[0]] = fields[1]
    return genres


def _read_artists(path: Path) -> dict[str, str]:
    """Artist of each MSD track from TRACKID<SEP>SONGID<SEP>artist<SEP>title lines."""
    artists = {}
    # Only grouping needs the names, so a stray byte is replaced rather than refused.
    for line_no, line in enumerate(read_lines(path, errors="replace"), 1):
        if not line.strip():
            continue
        fields = line.split("<SEP>")
        if len(fields) < 4:
            raise DatasetError(
                f"{path}, line {line_no}: expected TRACKID<SEP>SONGID<SEP>artist<SEP>title"
            )
        artists[fields[0]] = fields[2]
    return artists


LAYOUT = Layout("msd", detect, read, detect_rank=30)
