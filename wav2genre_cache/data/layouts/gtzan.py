"""The GTZAN layout: <genre>/<genre>.NNNNN.{wav,au,...}, read as a folder of label folders."""

from __future__ import annotations

from pathlib import Path

from wav2genre_cache.data.layouts import folder
from wav2genre_cache.data.layouts.files import audio_files
from wav2genre_cache.data.layouts.layout import Layout
from wav2genre_cache.data.tracks import GTZAN_NAME


def detect(root: Path) -> bool:
    """A folder whose audio files are all <genre>/<genre>.NNNNN.*."""
    if not root.is_dir():
        return False
    files = audio_files(root)
    return bool(files) and all(
        GTZAN_NAME.match(p.stem) and p.stem.split(".")[0] == p.parent.name for p in files
    )


LAYOUT = Layout("gtzan", detect, folder.read, detect_rank=40)
