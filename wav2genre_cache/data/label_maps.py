"""Label maps: a MAP.csv of source,label,target read, and applied to one source's tracks."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

from wav2genre_cache.data.csv_rows import checked_label, read_rows
from wav2genre_cache.data.tracks import TAG_SEPARATOR, Track, join_tags, tags_of
from wav2genre_cache.errors import DatasetError

# A label map as read: {(source or "*", label): target}; the target "" drops the label.
LabelMap = dict[tuple[str, str], str]


def read_label_map(path: Path, sources: list[str]) -> LabelMap:
    """MAP.csv (source,label,target) as {(source or "*", label): target}; "" drops the label."""
    mapping: LabelMap = {}
    where: dict[tuple[str, str], int] = {}
    unknown = set()
    for line, row in read_rows(path, "label map", {"source", "label", "target"}):
        source = row["source"].strip() or "*"
        label, target = row["label"].strip(), row["target"].strip()
        if not label:
            raise DatasetError(f"{path}, line {line}: no label")
        if target:
            checked_label(target, f"{path}, line {line}")
        if TAG_SEPARATOR in target:
            raise DatasetError(
                f"{path}, line {line}: target {target!r} holds {TAG_SEPARATOR!r}; "
                "a label maps to one target"
            )
        if source != "*" and source not in sources:
            unknown.add(source)
        key = (source, label)
        if key in mapping and mapping[key] != target:
            raise DatasetError(
                f"{path}, line {line}: label {label!r} of source {source!r} maps to "
                f"{target!r} here and to {mapping[key]!r} on line {where[key]}"
            )
        mapping[key] = target
        where.setdefault(key, line)
    if unknown:
        raise DatasetError(
            f"{path}: unknown source(s) {sorted(unknown)}; the sources are {', '.join(sources)}"
        )
    return mapping


def map_labels(
    tracks: list[Track], source: str, multi_label: bool, mapping: LabelMap
) -> tuple[list[Track], dict, list[str]]:
    """Labels (each tag of a multi-label track) mapped; tracks left with none dropped."""
    dropped: Counter[str] = Counter()  # a row maps the label to nothing
    unmapped: Counter[str] = Counter()  # no row for the label
    out = []
    for t in tracks:
        targets = set()
        for label in tags_of(t.label) if multi_label else [t.label]:
            # A row for this source wins over a row for any source ("*").
            target = mapping.get((source, label), mapping.get(("*", label)))
            if target is None:
                unmapped[label] += 1
            elif not target:
                dropped[label] += 1
            else:
                targets.add(target)
        if targets:
            out.append(replace(t, label=join_tags(targets)))
    lost = len(tracks) - len(out)
    notes = [
        f"{source}: {n} tracks with label {k!r} mapped to nothing, dropped"
        for k, n in sorted(dropped.items())
    ]
    notes += [
        f"{source}: {n} tracks with label {k!r} not in the label map, dropped"
        for k, n in sorted(unmapped.items())
    ]
    if lost:
        notes.append(f"{source}: {lost} tracks left with no label, left out")
    counts = {
        "labels_dropped": dict(sorted(dropped.items())),
        "labels_unmapped": dict(sorted(unmapped.items())),
        "tracks_without_label": lost,
    }
    return out, counts, notes
