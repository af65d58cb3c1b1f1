"""The data model of datasets: tracks, what one dataset's reader found, a run's catalogue, tags."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

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
