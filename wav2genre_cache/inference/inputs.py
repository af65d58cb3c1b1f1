"""What `predict` is asked to label: files as given and the audio files inside folders, each
input that cannot be used named with its reason. Light (no model library), so that an ONNX
deployment's `predict` loads none."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import NamedTuple

from wav2genre_cache.audio.decode import AUDIO_EXTENSIONS


class SkippedInput(NamedTuple):
    """An input that cannot be predicted, and why (e.g. 'a symlink loop')."""

    path: Path
    reason: str


def expand_inputs(items: list[Path]) -> list[Path | SkippedInput]:
    """Files as given and the audio files inside any folder (sorted), in input order.

    Every input named on the command line that cannot be used comes back as a SkippedInput
    naming the reason; inside a folder only entries named like audio files are reported, the
    rest (notes, cover art) are not meant for us. Folders are not entered through symlinks,
    so a symlink loop is reported, never followed.
    """
    entries: list[Path | SkippedInput] = []
    for item in items:
        reason = _unusable(item)
        if reason:
            entries.append(SkippedInput(item, reason))
        elif item.is_dir():
            found = _walk(item)
            entries += found or [SkippedInput(item, "a folder with no audio files in it")]
        elif not item.is_file():
            # A pipe or a device: reading it could block forever.
            entries.append(SkippedInput(item, "not a regular file"))
        else:
            entries.append(item)  # any name: the decoder says if it is not audio
    return entries


def _unusable(path: Path) -> str | None:
    """Why a path cannot be opened at all (loop, dangling link, absent), or None if it can."""
    try:
        path.stat()
    except OSError as exc:
        # Path.exists()/is_dir() answer False for all of these alike; stat tells them apart.
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        if path.is_symlink():
            return f"a broken symlink (its target {os.readlink(path)} does not exist)"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "does not exist"
        return f"cannot be read ({exc.strerror or exc})"
    return None


def _walk(folder: Path) -> list[Path | SkippedInput]:
    """The audio files under a folder, and every entry named like audio that is not one, sorted."""
    found: list[Path | SkippedInput] = []
    audio_dirs: list[Path] = []

    def unreadable(exc: OSError) -> None:
        found.append(SkippedInput(Path(exc.filename), f"cannot read the folder ({exc.strerror})"))

    # followlinks=False: a symlinked folder (or a loop) is listed but never entered.
    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=False):
        dirs.sort()
        for name in dirs + files:
            p = Path(root) / name
            if p.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            reason = _unusable(p)
            if reason:
                found.append(SkippedInput(p, reason))
            elif p.is_dir() and p.is_symlink():
                found.append(SkippedInput(p, "a symlink to a folder, which is not followed"))
            elif p.is_dir():
                audio_dirs.append(p)  # walked like any folder; reported if nothing is in it
            elif p.is_file():
                found.append(p)
            else:
                found.append(SkippedInput(p, "not a regular file"))
    paths = [p for p in found if isinstance(p, Path)]
    found += [
        SkippedInput(d, "a folder named like an audio file, with no audio files in it")
        for d in audio_dirs
        if not any(p.is_relative_to(d) for p in paths)
    ]
    return sorted(found, key=lambda e: e.path if isinstance(e, SkippedInput) else e)
