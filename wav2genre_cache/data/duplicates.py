"""Copies of one recording among a cache's tracks: found by content hash, kept on one side."""

from __future__ import annotations

import numpy as np
import pandas as pd

from wav2genre_cache.data.tracks import SPLITS


def find_duplicates(tracks: pd.DataFrame) -> tuple[dict, list[str]]:
    """Tracks whose decoded audio is the same (equal content hashes): reported, and kept on one
    side of the split (copies in train, valid and test all go to train; in valid and test, to
    valid), so no test score is a copy of a training example.

    Returns a JSON-able report with the corrected splits under "split", and notes for the user.
    """
    split = tracks.split.to_numpy().astype(object).copy()
    ok = (tracks.status.to_numpy() == "ok") & (tracks.content_hash.to_numpy() != "")
    groups: dict[str, list[int]] = {}
    for i in np.flatnonzero(ok):
        groups.setdefault(tracks.content_hash.iat[i], []).append(int(i))
    groups = {h: rows for h, rows in groups.items() if len(rows) > 1}
    moved = []
    for rows in groups.values():
        sides = [split[i] for i in rows if split[i] in SPLITS]
        if len(set(sides)) < 2:
            continue
        keep = min(sides, key=SPLITS.index)  # the first in SPLITS order: train, valid, test
        for i in rows:
            if split[i] in SPLITS and split[i] != keep:
                moved.append({"track_id": tracks.track_id.iat[i], "from": split[i], "to": keep})
                split[i] = keep
    ids = tracks.track_id.to_numpy()
    report = {
        "groups": [sorted(ids[rows].tolist()) for rows in groups.values()],
        "tracks": sum(len(rows) for rows in groups.values()),
        "moved": moved,
        "split": split,
    }
    notes = []
    if groups:
        notes.append(
            f"{len(groups)} recording(s) appear more than once ({report['tracks']} tracks with "
            f"the same decoded audio); {len(moved)} copies moved so that none straddles a split"
        )
    return report, notes
