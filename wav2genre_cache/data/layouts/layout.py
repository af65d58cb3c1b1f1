"""What a dataset layout is to the table of layouts: a name, a test for it, a reader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wav2genre_cache.data.tracks import SourceTracks


@dataclass(frozen=True)
class Layout:
    """One dataset layout: how to recognise a DATA of it and how to read its tracks."""

    name: str  # as --layout spells it
    detect: Callable[[Path], bool]  # whether DATA (a folder or a file) has this layout
    read: Callable[[Path, Path | None], SourceTracks]  # (DATA, --split-dir) -> its tracks
    # detect_layout tries layouts by rank, lowest first: a look at one file before listing
    # audio (a large tree takes long to list), and last the folder layout, which takes any.
    # Ranks are spaced by 10 so that a new layout slots in between without renumbering.
    detect_rank: int
