"""A fitted head's scores on rows of a split: probabilities, calibrated, and their metrics.

Training scores every model through here, single- or multi-label alike: segment probabilities
from the head, their mean per track, the calibration map fitted on validation applied to both,
and the metrics of the result (per source too, when the run read several datasets).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from wav2genre_cache.evaluation.calibration import Calibrator
from wav2genre_cache.evaluation.intervals import wilson_interval
from wav2genre_cache.evaluation.metrics import (
    aggregate_tracks,
    classification_metrics,
    multilabel_metrics,
)

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator

    from wav2genre_cache.heads.registry import HeadSpec


@dataclass(frozen=True)
class Scores:
    """A head's probabilities on some rows, per segment and per track, with the truth."""

    segment: np.ndarray  # [rows, labels]
    y: np.ndarray  # per row: a label index, or a {0,1} row of tags
    tracks: np.ndarray  # the track (cache row) of each track-level row
    track: np.ndarray  # [tracks, labels]: the mean of its segments' probabilities
    y_track: np.ndarray
    multi_label: bool

    def calibrated(self, calibrator: Calibrator) -> Scores:
        """The same scores through a calibration map (segments and tracks alike)."""
        return replace(
            self, segment=calibrator.apply(self.segment), track=calibrator.apply(self.track)
        )


def head_scores(
    spec: HeadSpec,
    head: BaseEstimator,
    X: np.ndarray,
    y: np.ndarray,
    track: np.ndarray,
    n_labels: int,
    multi_label: bool,
) -> Scores:
    """The head's probabilities on rows X (of the tracks `track`), segments and tracks."""
    columns = spec.predict_proba(head, X, groups=track)
    proba = np.zeros((len(X), n_labels))
    # Heads are fitted on label indices (or tag columns): classes_ says which column is which.
    proba[:, np.asarray(head.classes_).astype(int)] = columns
    tracks, track_proba = aggregate_tracks(proba, track)
    _, first = np.unique(track, return_index=True)  # tracks are np.unique's order too
    return Scores(proba, y, tracks, track_proba, y[first], multi_label)


def metrics_of(
    scores: Scores,
    labels: list[str],
    thresholds: np.ndarray | None = None,
    curves: bool = False,
    intervals: bool = False,
    track_groups: np.ndarray | None = None,
) -> dict:
    """Segment- and track-level metrics (tags at `thresholds` for multi-label scores); the
    track level with its curves, and with the 95 % intervals of its figures, where asked
    (resampling artists where track_groups, an artist per cache track, is given)."""
    multi = scores.multi_label
    groups = None if track_groups is None else track_groups[scores.tracks]
    return {
        "segment": _metrics(scores.y, scores.segment, labels, multi, thresholds),
        "track": _metrics(
            scores.y_track, scores.track, labels, multi, thresholds, curves, intervals, groups
        ),
    }


def _metrics(
    y, proba, labels, multi_label: bool, thresholds=None, curves=False, intervals=False, groups=None
) -> dict:
    """The metrics of one level's rows: tags at their thresholds, or single labels."""
    if multi_label:
        return multilabel_metrics(y, proba, labels, thresholds, curves, intervals, groups)
    return classification_metrics(y, proba, labels, curves, intervals, groups)


# The figures each source's row of the per-source table shows.
_PER_SOURCE = ("n", "accuracy", "accuracy_ci", "macro_f1", "macro_auc", "macro_pr_auc")


def per_source(
    scores: Scores,
    track_source: np.ndarray,
    labels: list[str],
    thresholds: np.ndarray | None = None,
) -> dict[str, dict]:
    """Track-level metrics of each dataset's tracks, where the rows come from several."""
    source = track_source[scores.tracks]
    out = {}
    for name in sorted(set(source)):
        rows = source == name
        y, proba = scores.y_track[rows], scores.track[rows]
        if scores.multi_label:
            m = multilabel_metrics(y, proba, labels, thresholds)
        else:  # accuracy's interval is Wilson's: free
            m = classification_metrics(y, proba, labels)
            m["accuracy_ci"] = list(wilson_interval(round(m["accuracy"] * m["n"]), m["n"]))
        out[name] = {k: m[k] for k in _PER_SOURCE if k in m}
    return out
