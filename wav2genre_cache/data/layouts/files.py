"""Files as the layout readers read them: a tree's audio files, a text file's lines."""

from __future__ import annotations

from pathlib import Path

from wav2genre_cache.audio.decode import AUDIO_EXTENSIONS
from wav2genre_cache.errors import DatasetError


def audio_files(root: Path) -> list[Path]:
    """Every file under ROOT named as audio is (by extension), sorted."""
    # Unreadable files and broken links are listed too, so that they get reported, not ignored.
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and not p.is_dir()
    )


def read_lines(path: Path, errors: str = "strict") -> list[str]:
    """A text file's lines (UTF-8); a file that cannot be read is a DatasetError."""
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first line.
        return path.read_text(encoding="utf-8-sig", errors=errors).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
