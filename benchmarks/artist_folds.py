"""The artist-grouped folds the few-examples benchmarks share (few_examples.py,
segments_and_augmentation.py, calibration_dev_clips.py): the embedded tracks, their labels, the
labels of one artist (which only train), the tracks that are tested, and the folds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ArtistFolds:
    """A cache's tracks and its repeated stratified folds, an artist on one side of each."""

    ok: np.ndarray  # cache positions of the embedded tracks
    labels: list[str]
    y_track: np.ndarray  # each embedded track's label index
    groups: np.ndarray  # each embedded track's fold group
    alone: dict  # the labels of one artist, each with its artist: they only train
    tested: np.ndarray  # which embedded tracks a fold may hold out
    folds: list  # (train, held out) positions into ok, per fold of every repeat

    def segment_labels(self, seg_track: np.ndarray, tracks: pd.DataFrame) -> np.ndarray:
        """The label index of each segment, from its track."""
        return np.array([self.labels.index(x) for x in tracks.label.to_numpy()[seg_track]])


def artist_folds(tracks: pd.DataFrame, repeats: int, folds: int = 5, seed: int = 0) -> ArtistFolds:
    """The folds of a cache's tracks, grouped by artist, as the benchmarks cross-validate."""
    from wav2genre_cache.stage_two.folds import fold_groups, grouped_folds, one_group_labels

    ok = np.flatnonzero(tracks.status.to_numpy() == "ok")
    labels = sorted(set(tracks.label.to_numpy()[ok]))
    y_track = np.array([labels.index(x) for x in tracks.label.to_numpy()[ok]])
    groups, _ = fold_groups(tracks, ok, "artist")
    alone = one_group_labels(y_track, groups, labels, "artist")
    tested = ~np.isin(y_track, [labels.index(x) for x in alone])
    split = grouped_folds(y_track, groups, tested, folds, repeats, seed)
    return ArtistFolds(ok, labels, y_track, groups, alone, tested, split)
