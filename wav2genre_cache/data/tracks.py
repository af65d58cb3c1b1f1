"""The data model of datasets: tracks, what one dataset's reader found, a run's catalogue, tags."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from wav2genre_cache.errors import DatasetError

SPLITS = ("train", "valid", "test")
EXCLUDED = "excluded"  # in the data but outside the chosen split (e.g. faults in GTZAN-ff)
TAG_SEPARATOR = "|"  # a multi-label track's label is its tags, sorted and joined by this
# A GTZAN track's name (its file's stem, its track id): <genre>.NNNNN.
GTZAN_NAME = re.compile(r"^(?P<genre>[a-z]+)\.\d{5}$")


@dataclass(frozen=True)
class Track:
    """One labelled audio file of a dataset."""

    track_id: str
    path: str
    label: str  # a multi-label track's tags, sorted and joined by TAG_SEPARATOR
    split: str = ""
    artist: str = ""
    source: str = ""  # the source name of the dataset it comes from (see read_datasets)
    # What else the dataset says of the track, as (name, value) pairs: FMA's and MTG-Jamendo's
    # album, a manifest's own columns. A split or a fold can keep one value's tracks together.
    metadata: tuple[tuple[str, str], ...] = ()


# What a split and a cross-validation can keep on one side: an artist's tracks, nothing but
# copies of one recording, or the tracks sharing a metadata value (album, a manifest's column).
ARTIST, NO_GROUP = "artist", "none"


def group_of(track: Track, group_by: str) -> str:
    """The track's group under --group-by: its artist, a metadata value, or "" (none known)."""
    if group_by == NO_GROUP:
        return ""
    if group_by == ARTIST:
        return track.artist
    return dict(track.metadata).get(group_by, "")


def metadata_text(track: Track) -> str:
    """A track's metadata as a cache stores it: a JSON object, or "" when there is none."""
    return json.dumps(dict(track.metadata), sort_keys=True) if track.metadata else ""


def check_group_by(tracks: list[Track], group_by: str, where: str) -> None:
    """Refuse a --group-by naming metadata that no track has, saying what the tracks have."""
    if group_by in (ARTIST, NO_GROUP) or any(group_of(t, group_by) for t in tracks):
        return
    names = sorted({name for t in tracks for name, _ in t.metadata})
    raise DatasetError(
        f"{where}: --group-by {group_by!r}: no track has a {group_by!r} value; use artist, none"
        + (f" or one of {', '.join(names)}" if names else "")
        + " (a CSV manifest's own columns, FMA's and MTG-Jamendo's album)"
    )


@dataclass
class SourceTracks:
    """One dataset as its reader found it: tracks, whether they are tagged, what was left out."""

    tracks: list[Track]
    layout: str
    multi_label: bool = False
    # What was left out, by kind: "no_audio" (annotated tracks without audio) and
    # "unannotated_audio" (audio files without annotation); read_datasets words them as notes.
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # for the user, as read_datasets logs them


@dataclass
class Catalogue:
    """The tracks of a run's datasets: labels mapped, splits assigned, what was left out."""

    tracks: list[Track]  # splits assigned; .source set; multi-label tracks "|"-joined
    multi_label: bool  # any source is multi-label (then single-label tracks are one-tag tracks)
    sources: list[str]  # source names in DATA order
    notes: list[str] = field(default_factory=list)  # counts for the user, one line each
    counts: dict = field(default_factory=dict)  # the same as numbers, JSON-able

    @property
    def layouts(self) -> list[str]:
        """Each dataset's layout (as detected where it was auto), in DATA order."""
        return [self.counts["sources"][name]["layout"] for name in self.sources]


def tags_of(label: str) -> list[str]:
    """A label's tags: the "|"-joined tags of a multi-label track, or a single label alone."""
    return [t for t in label.split(TAG_SEPARATOR) if t]


def join_tags(tags: Iterable[str]) -> str:
    """Tags as one label: stripped, deduplicated, sorted and joined by TAG_SEPARATOR."""
    return TAG_SEPARATOR.join(sorted({t.strip() for t in tags} - {""}))
