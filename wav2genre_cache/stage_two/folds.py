"""Cross-validation folds over tracks: stratified by label, an artist (or a recording) on one side."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

# The fold groups a cross-validation can keep to one side.
GROUP_BY = ("artist", "none")


def fold_groups(tracks: pd.DataFrame, rows: np.ndarray, group_by: str) -> tuple[np.ndarray, str]:
    """Each track's fold group: its artist where known (group_by artist), else its recording
    (equal hashes of the decoded audio), else itself; and what the groups are."""
    hashes = tracks.content_hash.to_numpy()[rows].astype(str)
    recording = np.where(hashes != "", np.char.add("\0rec:", hashes), [f"\0{i}" for i in rows])
    artists = tracks.artist.to_numpy()[rows].astype(str)
    if group_by == "none" or not (artists != "").any():
        return recording, "recording"
    return np.where(artists != "", np.char.add("artist:", artists), recording), "artist"


def one_group_labels(y_track: np.ndarray, groups: np.ndarray, labels: list[str]) -> dict:
    """The labels whose tracks are all one artist, each with that artist."""
    alone = {}
    for k, label in enumerate(labels):
        own = set(groups[y_track == k])
        if len(own) == 1 and next(iter(own)).startswith("artist:"):
            alone[label] = f"one artist: {next(iter(own)).removeprefix('artist:')}"
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
