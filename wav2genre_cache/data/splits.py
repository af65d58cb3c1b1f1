"""Split tracks into train, valid and test: random (stratified, groups kept apart), the GTZAN
fault-filtered lists, a dataset's own split or a CSV of track_id,split; and split digests."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from wav2genre_cache.data.tracks import (
    ARTIST,
    EXCLUDED,
    GTZAN_NAME,
    SPLITS,
    Track,
    group_of,
    tags_of,
)
from wav2genre_cache.errors import DatasetError

_GTZAN_FF_NEEDS_DIR = "--split gtzan-ff needs --split-dir DIR with *_filtered.txt lists"


def assign_splits(
    tracks: list[Track],
    method: str = "random",
    seed: int = 0,
    split_dir: str | Path | None = None,
    group_by: str = ARTIST,
) -> list[Track]:
    """Give every track a split: random|gtzan-ff|keep|a CSV file of track_id,split; a random
    split keeps each group (group_by: artist, album or another metadata name) on one side."""
    if method == "keep":
        if any(not t.split for t in tracks):
            raise DatasetError("some tracks have no split in the dataset; use --split random")
        return tracks
    if method == "random":
        if tracks and all(t.split for t in tracks):
            return tracks  # the dataset's own split (FMA, a manifest with a split column)
        return _random_split(tracks, seed, group_by)
    if method == "gtzan-ff":
        if split_dir is None:
            raise DatasetError(_GTZAN_FF_NEEDS_DIR)
        return _apply_mapping(tracks, read_gtzan_ff(split_dir), "the GTZAN fault-filtered lists")
    path = split_file(method)
    return _apply_mapping(tracks, read_split_csv(path), str(path))


def split_digest(pairs: list[tuple[str, str]]) -> str:
    """A short hash of (track id, split) pairs in a split: equal digests mean the same split."""
    text = "\n".join(f"{t},{s}" for t, s in sorted(pairs) if s in SPLITS)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_gtzan_ff(split_dir: str | Path) -> dict[str, str]:
    """Map track id (e.g. blues.00029) to split from train/valid/test_filtered.txt."""
    split_dir = Path(split_dir)
    mapping = {}
    for split in SPLITS:
        f = split_dir / f"{split}_filtered.txt"
        if not f.is_file():
            raise DatasetError(f"{f}: missing; the folder needs {split}_filtered.txt")
        for line in f.read_text().split():
            mapping[Path(line).name.rsplit(".", 1)[0]] = split
    return mapping


def read_split_csv(path: Path) -> dict[str, str]:
    """Track id -> split from a CSV with the columns track_id,split."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"track_id", "split"} <= set(df.columns):
        raise DatasetError(f"{path}: a split file needs the columns track_id,split")
    bad = set(df["split"]) - set(SPLITS)
    if bad:
        raise DatasetError(f"{path}: unknown split name(s) {sorted(bad)}; use {SPLITS}")
    return dict(zip(df["track_id"], df["split"], strict=True))


def split_file(method: str) -> Path | None:
    """The CSV of track_id,split a split method names, None for the named methods."""
    if method in ("random", "keep", "gtzan-ff"):
        return None
    path = Path(method)
    if path.is_file():
        return path
    raise DatasetError(f"unknown split {method!r}; use random, gtzan-ff or a CSV track_id,split")


def check_gtzan_ff(split_dir: str | Path | None, sources: list[list[Track]]) -> None:
    """Refuse --split gtzan-ff without its lists' folder or without any source of GTZAN tracks."""
    if split_dir is None:
        raise DatasetError(_GTZAN_FF_NEEDS_DIR)
    if not any(is_gtzan(tracks) for tracks in sources):
        raise DatasetError("--split gtzan-ff: no dataset holds GTZAN tracks (named <genre>.NNNNN)")


def split_source(
    tracks: list[Track],
    name: str,
    method: str,
    seed: int,
    split_dir: str | Path | None,
    group_by: str = ARTIST,
) -> list[Track]:
    """One source's split: its own where it has one, else random; gtzan-ff for GTZAN tracks."""
    if method == "keep" and any(not t.split for t in tracks):
        raise DatasetError(f"{name}: some tracks have no split in the dataset; use --split random")
    if method == "gtzan-ff" and is_gtzan(tracks):
        return assign_splits(tracks, "gtzan-ff", seed, split_dir)
    # Sources are split one by one, so artists of two sources never share a group.
    return assign_splits(tracks, "keep" if method == "keep" else "random", seed, None, group_by)


def is_gtzan(tracks: list[Track]) -> bool:
    """Whether any track is named as GTZAN's are (<genre>.NNNNN)."""
    # By name, not layout: a manifest listing GTZAN's files takes its fault-filtered split too
    # (as assign_splits does); a source with no GTZAN name is split as the others are.
    return any(GTZAN_NAME.match(Path(t.track_id).name) for t in tracks)


def apply_split_file(tracks: list[Track], bare_ids: list[str], path: Path) -> list[Track]:
    """Splits from a CSV track_id,split whose ids are <source>/<id>, <id> or a file's name."""
    return _apply_mapping(tracks, read_split_csv(path), str(path), bare_ids)


def _apply_mapping(
    tracks: list[Track], mapping: dict[str, str], source: str, bare_ids: list[str] | None = None
) -> list[Track]:
    """Each track's split in MAPPING by its id, its bare id or its file's name; else EXCLUDED."""
    bare_ids = [t.track_id for t in tracks] if bare_ids is None else bare_ids
    out = []
    for t, bare in zip(tracks, bare_ids, strict=True):
        key = next((k for k in (t.track_id, bare, Path(bare).name) if k in mapping), None)
        out.append(replace(t, split=EXCLUDED if key is None else mapping[key]))
    if not any(t.split in SPLITS for t in out):
        raise DatasetError(f"no track of the dataset is named in {source}")
    return out


def _random_split(
    tracks: list[Track], seed: int, group_by: str = ARTIST, fractions=(0.8, 0.1, 0.1)
) -> list[Track]:
    """Stratified by label (a multi-label track's rarest tag); whole groups (artists, albums,
    ...) go to one side."""
    rng = np.random.default_rng(seed)
    # A multi-label track is stratified on its rarest tag (ties: the first in order): the
    # common tags reach every split anyway, the rare ones only if they are spread on purpose.
    # A single label is its own only tag, so single-label splits are as they always were.
    tag_count = Counter(tag for t in tracks for tag in tags_of(t.label))
    strata = [
        min(tags_of(t.label), key=lambda tag: (tag_count[tag], tag), default=t.label)
        for t in tracks
    ]
    # A unit is one group's tracks (or one track without a group); it goes to one side,
    # stratified by its most common stratum.
    units: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(tracks):
        units[group_of(t, group_by) or f"\0track{i}"].append(i)
    by_label: dict[str, list[list[int]]] = defaultdict(list)
    for members in units.values():
        label = Counter(strata[i] for i in members).most_common(1)[0][0]
        by_label[label].append(members)
    split_of = [""] * len(tracks)
    for label in sorted(by_label):
        units = by_label[label]
        order = rng.permutation(len(units))
        n = sum(len(u) for u in units)
        # Rounded targets; every label with 3+ units keeps at least one in valid and test.
        n_test = max(1, round(fractions[2] * n)) if len(units) >= 3 else 0
        n_valid = max(1, round(fractions[1] * n)) if len(units) >= 3 else 0
        counts = {"test": 0, "valid": 0}
        for k in order:
            unit = units[k]
            if counts["test"] < n_test:
                split = "test"
            elif counts["valid"] < n_valid:
                split = "valid"
            else:
                split = "train"
            if split != "train":
                counts[split] += len(unit)
            for i in unit:
                split_of[i] = split
    return [replace(t, split=s) for t, s in zip(tracks, split_of, strict=True)]
