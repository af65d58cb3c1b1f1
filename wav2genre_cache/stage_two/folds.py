"""Cross-validation folds over tracks: stratified by label, a group (an artist, an album, a
manifest column's value, or at least a recording) on one side."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd

from wav2genre_cache.errors import TrainError

RECORDING = "recording"  # the groups when none is known: copies of one decoded audio


def group_values(tracks: pd.DataFrame, group_by: str) -> np.ndarray:
    """Each cache track's value of group_by (artist, or a name in its metadata); "" if none."""
    if group_by == "artist":
        return tracks.artist.to_numpy().astype(str)
    return np.array(
        [json.loads(m).get(group_by, "") if m else "" for m in tracks.metadata], dtype=str
    )


def metadata_names(tracks: pd.DataFrame) -> list[str]:
    """The metadata names any track of a cache has (album, a manifest's own columns)."""
    return sorted({name for m in tracks.metadata if m for name in json.loads(m)})


def check_group_by(tracks: pd.DataFrame, group_by: str) -> None:
    """Refuse a group_by naming metadata no track of the cache has, naming what they have (a
    typo must not pass as "no groups known")."""
    if group_by in ("artist", "none") or (group_values(tracks, group_by) != "").any():
        return
    names = ["artist", "none", *metadata_names(tracks)]
    raise TrainError(
        f"--group-by {group_by!r}: no track of the cache has a {group_by!r} value; use one of "
        f"{', '.join(names)}"
    )


def fold_groups(tracks: pd.DataFrame, rows: np.ndarray, group_by: str) -> tuple[np.ndarray, str]:
    """Each track's fold group: its group_by value where known (artist, album, ...), else its
    recording (equal hashes of the decoded audio), else itself; and what the groups are."""
    hashes = tracks.content_hash.to_numpy()[rows].astype(str)
    recording = np.where(hashes != "", np.char.add("\0rec:", hashes), [f"\0{i}" for i in rows])
    if group_by == "none":
        return recording, RECORDING
    check_group_by(tracks, group_by)
    values = group_values(tracks, group_by)[rows]
    if not (values != "").any():
        return recording, RECORDING
    return np.where(values != "", np.char.add(f"{group_by}:", values), recording), group_by


def one_group_labels(
    y_track: np.ndarray, groups: np.ndarray, labels: list[str], grouped_by: str
) -> dict:
    """The labels whose tracks are all one group (one artist, one album), each with it."""
    alone: dict[str, str] = {}
    if grouped_by == RECORDING:
        return alone
    for k, label in enumerate(labels):
        own = set(groups[y_track == k])
        if len(own) == 1 and next(iter(own)).startswith(f"{grouped_by}:"):
            alone[label] = f"one {grouped_by}: {next(iter(own)).removeprefix(grouped_by + ':')}"
    return alone


def grouped_folds(
    y_track: np.ndarray,
    groups: np.ndarray,
    tested: np.ndarray,
    folds: int,
    repeats: int,
    seed: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Repeated stratified group k-fold over track positions: (train, held out) per fold.

    Only `tested` tracks are ever held out; the others (a label of one artist) always train.
    A label with fewer tracks than folds is held out in fewer folds (sklearn warns; it is meant).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    tested_at, always = np.flatnonzero(tested), np.flatnonzero(~tested)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        return [
            (np.concatenate([tested_at[train], always]), tested_at[held])
            for r in range(repeats)
            for train, held in StratifiedGroupKFold(
                folds, shuffle=True, random_state=seed + r
            ).split(tested_at, y_track[tested], groups[tested])
        ]
