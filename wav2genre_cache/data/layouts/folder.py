"""The folder layout: one sub-folder per label, any audio files in it."""

from __future__ import annotations

from pathlib import Path

from wav2genre_cache.data.layouts.files import audio_files
from wav2genre_cache.data.layouts.layout import Layout
from wav2genre_cache.data.tracks import GTZAN_NAME, SourceTracks, Track


def detect(root: Path) -> bool:
    """Any folder: the layout of a folder that has no other."""
    return root.is_dir()


def read(data: Path, split_dir: Path | None = None) -> SourceTracks:
    """One sub-folder per label; the GTZAN layout is the special case <genre>/<genre>.NNNNN.*."""
    tracks = []
    for p in audio_files(data):
        rel = p.relative_to(data)
        if len(rel.parts) < 2:
            continue  # files at the top level have no label folder
        label = rel.parts[0]
        track_id = p.stem if GTZAN_NAME.match(p.stem) else rel.with_suffix("").as_posix()
        tracks.append(Track(track_id, str(p), label))
    return SourceTracks(tracks, "folder")


LAYOUT = Layout("folder", detect, read, detect_rank=90)
