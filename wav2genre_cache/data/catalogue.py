"""Read datasets as the rest of the package sees them: one source's tracks (read_source), and a
run's catalogue of one or more sources, labels mapped and splits assigned (read_datasets)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from wav2genre_cache.data.gtzan_artists import with_gtzan_artists
from wav2genre_cache.data.label_maps import LabelMap, map_labels, read_label_map
from wav2genre_cache.data.layouts import LAYOUTS, detect_layout
from wav2genre_cache.data.splits import apply_split_file, check_gtzan_ff, split_file, split_source
from wav2genre_cache.data.tracks import (
    ARTIST,
    EXCLUDED,
    SPLITS,
    Catalogue,
    SourceTracks,
    Track,
    check_group_by,
)
from wav2genre_cache.errors import DatasetError

# What a reader's counts mean, as a note for the user (only counts above zero are noted).
_COUNT_NOTES = {
    "no_audio": "{n} annotated tracks have no audio, left out",
    "unannotated_audio": "{n} audio files have no annotation, ignored",
}


def read_source(
    data: str | Path, layout: str = "auto", split_dir: str | Path | None = None
) -> SourceTracks:
    """Read one dataset: its tracks in a stable order, whether it is multi-label, its counts."""
    data = Path(data)
    layout = detect_layout(data) if layout == "auto" else layout
    if layout not in LAYOUTS:
        raise DatasetError(
            f"unknown dataset layout {layout!r}; use one of auto, {', '.join(LAYOUTS)}"
        )
    read = LAYOUTS[layout].read(data, None if split_dir is None else Path(split_dir))
    read.layout = layout  # gtzan and folder share a reader
    if not read.tracks:
        raise DatasetError(f"{data}: no audio files found (layout {layout})")
    read.tracks, artist_notes = with_gtzan_artists(read.tracks)
    read.notes += artist_notes
    ids = [t.track_id for t in read.tracks]
    if len(set(ids)) != len(ids):
        dup = sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
        raise DatasetError(f"{data}: duplicate track ids {dup}")
    return read


def source_names(datas: Sequence[str | Path]) -> list[str]:
    """Each DATA's source name: its folder's name or its CSV's stem; repeats get -2, -3, ..."""
    names: list[str] = []
    for data in datas:
        path = Path(data)
        base = path.stem if path.is_file() else (path.name or path.resolve().name)
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names.append(name)
    return names


def read_datasets(
    datas: str | Path | Sequence[str | Path],
    layout: str = "auto",
    label_map: str | Path | None = None,
    split: str = "random",
    seed: int = 0,
    split_dir: str | Path | None = None,
    group_by: str = ARTIST,
) -> Catalogue:
    """Read one or more datasets as one catalogue: labels mapped, each source split (a random
    split keeps each group_by group on one side), ids unique.

    One DATA without a label map gives exactly assign_splits(read_source(DATA).tracks) (with
    .source set); several DATA prefix each track id with its source name: <source>/<track id>.
    """
    datas = [datas] if isinstance(datas, str | Path) else list(datas)
    if not datas:
        raise DatasetError("no dataset given")
    names = source_names(datas)
    reads = [read_source(d, layout, split_dir) for d in datas]
    mapping = None if label_map is None else read_label_map(Path(label_map), names)
    csv_split = split_file(split)
    if split == "gtzan-ff":
        check_gtzan_ff(split_dir, [r.tracks for r in reads])
    several = len(datas) > 1
    tracks: list[Track] = []
    bare_ids: list[str] = []
    notes: list[str] = []
    per_source: dict[str, dict] = {}
    check_group_by([t for r in reads for t in r.tracks], group_by, ", ".join(map(str, datas)))
    for name, read in zip(names, reads, strict=True):
        own, per_source[name], own_notes = _mapped_source(name, read, mapping, label_map)
        notes += own_notes
        if csv_split is None:
            own = split_source(own, name, split, seed, split_dir, group_by)
        bare_ids += [t.track_id for t in own]
        tracks += [
            replace(t, track_id=f"{name}/{t.track_id}" if several else t.track_id, source=name)
            for t in own
        ]
    if csv_split is not None:
        tracks = apply_split_file(tracks, bare_ids, csv_split)
    for name, counts in per_source.items():
        splits = Counter(t.split for t in tracks if t.source == name)
        counts["tracks"] = sum(splits.values())
        counts["splits"] = {s: splits[s] for s in (*SPLITS, EXCLUDED) if splits[s]}
    return Catalogue(
        tracks,
        any(r.multi_label for r in reads),
        names,
        notes,
        {"tracks": len(tracks), "sources": per_source},
    )


def _mapped_source(
    name: str, read: SourceTracks, mapping: LabelMap | None, label_map: str | Path | None
) -> tuple[list[Track], dict, list[str]]:
    """One source's tracks with their labels mapped, its counts and its notes for the user."""
    counts: dict = {"layout": read.layout, "multi_label": read.multi_label, **read.counts}
    notes = [f"{name}: " + _COUNT_NOTES[k].format(n=n) for k, n in read.counts.items() if n > 0]
    notes += read.notes
    if mapping is None:
        return read.tracks, counts, notes
    tracks, map_counts, map_notes = map_labels(read.tracks, name, read.multi_label, mapping)
    counts.update(map_counts)
    if not tracks:
        raise DatasetError(f"{name}: the label map {label_map} keeps none of its tracks")
    return tracks, counts, notes + map_notes
