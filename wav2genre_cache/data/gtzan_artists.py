"""GTZAN's artists from Sturm's index, so that splits and folds keep an artist on one side.

GTZAN names no artists, but runs of consecutive ids are one artist (Sturm, "An Analysis of the
GTZAN Music Genre Dataset", 2012; "The GTZAN dataset: its contents, its faults", 2013): a random
split of its clips tests on artists it trained on. Sturm's `GTZANindex.txt` lists each excerpt as
`genre.NNNNN.wav ::: artist ::: title` (some artists blank). It is looked for in the GTZAN folder
(the one holding the genre folders), beside it, and in the folders beside it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from wav2genre_cache.data.tracks import GTZAN_NAME, Track
from wav2genre_cache.errors import DatasetError

INDEX_NAME = "GTZANindex.txt"
_FIELDS = " ::: "


def find_index(gtzan_root: Path) -> Path | None:
    """Sturm's GTZANindex.txt in the GTZAN folder, beside it or in a folder beside it."""
    beside = gtzan_root.resolve().parent
    for candidate in (
        gtzan_root / INDEX_NAME,
        beside / INDEX_NAME,
        *sorted(beside.glob(f"*/{INDEX_NAME}")),
    ):
        if candidate.is_file():
            return candidate
    return None


def read_index(path: Path) -> dict[str, str]:
    """Each excerpt's artist by its name (blues.00000); excerpts with a blank artist are left out."""
    artists = {}
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the GTZAN artist index ({exc.strerror})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(_FIELDS.strip())]
        name = Path(fields[0]).stem
        if len(fields) != 3 or not GTZAN_NAME.match(name):
            raise DatasetError(
                f"{path}, line {number}: expected 'genre.NNNNN.wav ::: artist ::: title', "
                f"got {line[:80]!r}"
            )
        if fields[1]:
            artists[name] = fields[1]
    return artists


def with_gtzan_artists(tracks: list[Track]) -> tuple[list[Track], list[str]]:
    """Tracks whose files are GTZAN excerpts (<genre>/<genre>.NNNNN.*) get their artist from the
    index found for their GTZAN folder, where they have none; a note for each folder."""
    roots: dict[Path, list[int]] = {}
    for i, t in enumerate(tracks):
        path = Path(t.path)
        if not t.artist and GTZAN_NAME.match(path.stem) and path.parent.name == path.stem[:-6]:
            roots.setdefault(path.parent.parent, []).append(i)
    out, notes = list(tracks), []
    for root, members in roots.items():
        index = find_index(root)
        if index is None:
            notes.append(
                f"{root}: no GTZAN artist index ({INDEX_NAME}) in or beside it, so splits cannot "
                "keep artists apart; consecutive GTZAN ids share artists, and figures of such "
                "splits are inflated by artists heard in training (Sturm 2013)."
            )
            continue
        artists = read_index(index)
        for i in members:
            out[i] = replace(tracks[i], artist=artists.get(Path(tracks[i].path).stem, ""))
        found = [out[i].artist for i in members if out[i].artist]
        notes.append(
            f"GTZAN artists from {index} (Sturm 2012): {len(set(found))} artists for "
            f"{len(members)} tracks ({len(members) - len(found)} unknown); splits keep each "
            "artist on one side."
        )
    return out, notes
