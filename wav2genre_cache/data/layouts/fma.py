"""The fma layout: fma_metadata/tracks.csv (two header rows) and fma_<subset>/NNN/NNNNNN.mp3."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from wav2genre_cache.data.layouts.layout import Layout
from wav2genre_cache.data.tracks import SourceTracks, Track
from wav2genre_cache.errors import DatasetError

_SPLIT_NAMES = {"training": "train", "validation": "valid", "test": "test"}


def detect(root: Path) -> bool:
    """A folder with fma_metadata/tracks.csv."""
    return (root / "fma_metadata" / "tracks.csv").is_file()


def read(root: Path, split_dir: Path | None = None) -> SourceTracks:
    """FMA: labels from ('track','genre_top'), split from ('set','split'), audio fma_<subset>/."""
    meta = root / "fma_metadata" / "tracks.csv"
    try:
        df = pd.read_csv(meta, header=[0, 1], index_col=0)
    except Exception as exc:
        raise DatasetError(f"{meta}: cannot read FMA metadata ({exc})") from None
    audio_dirs = sorted(p for p in root.glob("fma_*") if p.is_dir() and p.name != "fma_metadata")
    if not audio_dirs:
        raise DatasetError(f"{root}: no fma_small|medium|large audio folder beside fma_metadata")
    subsets = {"fma_small": {"small"}, "fma_medium": {"small", "medium"}}
    tracks = []
    for audio_dir in audio_dirs:
        wanted = subsets.get(audio_dir.name, {"small", "medium", "large"})
        for tid, row in df.iterrows():
            genre = row[("track", "genre_top")]
            if pd.isna(genre) or row[("set", "subset")] not in wanted:
                continue
            path = audio_dir / f"{int(tid):06d}"[:3] / f"{int(tid):06d}.mp3"
            split = _SPLIT_NAMES.get(row[("set", "split")], "")
            artist = row.get(("artist", "id"), "")
            artist = "" if pd.isna(artist) else str(artist)
            album = row.get(("album", "id"), "")
            album = () if pd.isna(album) or album == "" else (("album", str(album)),)
            tracks.append(
                Track(f"{int(tid):06d}", str(path), str(genre), split, artist, metadata=album)
            )
        break  # the largest subset present wins; the others are contained in it
    return SourceTracks(tracks, "fma")


LAYOUT = Layout("fma", detect, read, detect_rank=10)
