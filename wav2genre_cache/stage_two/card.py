"""What a stage-two bundle's model card says of its data: the run's facts that bundle.json lacks."""

from __future__ import annotations

import numpy as np

from wav2genre_cache.evaluation.result_row import ResultRow
from wav2genre_cache.stage_two.data import TrainingData
from wav2genre_cache.store.model_card import command_line, label_split_counts


def card_of(data: TrainingData, row: ResultRow, run: dict) -> dict:
    """The model card's facts (store.model_card's keys) for a bundle of this run.

    run is metrics.json's header as train_heads built it (cache, sources, counts, grouping,
    selection, notes).
    """
    selection = run.get("selection") or {}
    return {
        "command": command_line(),
        "data": run.get("cache"),
        "sources": run.get("sources"),
        "counts": run.get("counts"),
        "label_counts": label_split_counts(_track_labels(data)),
        "per_label_test": row.test["track"].get("per_class"),
        "grouping": run.get("grouping"),
        "selection": {"rule": selection.get("rule"), "reason": selection.get("reason")},
        "notes": run.get("notes"),
        "calibration_fitted_on": (row.calibration or {}).get("fitted_on"),
    }


def _track_labels(data: TrainingData):
    """Each track's labels (a tagger's tags) and split, once per track (not per segment or view)."""
    for split in ("train", "valid", "test"):
        rows = np.flatnonzero(getattr(data, split))
        _, first = np.unique(data.track[rows], return_index=True)
        for segment in rows[first]:
            y = data.y[segment]
            names = (
                [data.labels[k] for k in np.flatnonzero(y)]
                if data.multi_label
                else [data.labels[int(y)]]
            )
            yield names, split
