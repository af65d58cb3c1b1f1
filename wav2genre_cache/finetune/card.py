"""What a fine-tuned bundle's model card says of its data: the tracks by label and split, and
what is known of their artists."""

from __future__ import annotations

from wav2genre_cache.data.tracks import SPLITS
from wav2genre_cache.evaluation.result_row import ResultRow
from wav2genre_cache.finetune.options import FinetuneOptions
from wav2genre_cache.store.model_card import command_line, label_split_counts

# How finish chose the epoch whose weights the bundle holds.
_EPOCH_CHOICE = {
    "valid": "the epoch with the best validation score",
    "last epoch": "the last epoch (no validation tracks)",
}


def card_of(data: dict, labels: list[str], opts: FinetuneOptions, row: ResultRow) -> dict:
    """The model card's facts (store.model_card's keys) for the run's bundle.

    data is decode_tracks' tracks by split, as the run trained and scored on them.
    """
    tracks = [(e.track, split) for split in SPLITS for e in data[split]]
    calibration = row.calibration or {}
    return {
        "command": command_line(),
        "data": opts.data,
        "sources": sorted({t.source for t, _ in tracks if t.source}),
        "counts": {split: len(data[split]) for split in SPLITS},
        "label_counts": label_split_counts(([t.label], split) for t, split in tracks),
        "per_label_test": row.test["track"].get("per_class"),
        "grouping": _grouping(tracks, labels, row.test_split or "test"),
        "selection": {"rule": row.selected_on, "reason": _EPOCH_CHOICE.get(row.selected_on)},
        "test_split": row.test_split,
        "calibration_fitted_on": calibration.get("fitted_on"),
    }


def _grouping(tracks: list, labels: list[str], scored_on: str) -> dict:
    """What is known of the artists (stage two's grouping, for the card): how many, whether
    test artists were heard in training, and the labels no test track measures."""
    artists = {split: {t.artist for t, s in tracks if s == split and t.artist} for split in SPLITS}
    known = set().union(*artists.values())
    heard = artists["test"] & (artists["train"] | artists["valid"])
    tested = {t.label for t, s in tracks if s == scored_on}
    return {
        "by": "artist" if known else None,
        "artists": len(known),
        "test_artists_heard": len(heard),
        "tracks_without_artist": sum(1 for t, _ in tracks if not t.artist),
        "unmeasured_labels": {label: "" for label in labels if label not in tested},
    }
