"""Fine-tuning's audio: every track decoded once, each epoch's batches, scores on held-out tracks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from wav2genre_cache.audio.augment import augment_track
from wav2genre_cache.audio.decode import DecodedTrack, try_load_track
from wav2genre_cache.audio.workers import DecodeWorkers
from wav2genre_cache.data.duplicates import find_duplicates
from wav2genre_cache.data.tracks import SPLITS, Track
from wav2genre_cache.encoders.finetuned import segment_probabilities, track_windows, window_batches
from wav2genre_cache.errors import FinetuneError
from wav2genre_cache.evaluation.metrics import classification_metrics
from wav2genre_cache.finetune.options import FinetuneOptions


@dataclass
class Example:
    """One track's decoded audio and label index."""

    track: Track
    samples: np.ndarray
    label: int


def decode_tracks(tracks: list[Track], labels: list[str], opts: FinetuneOptions, log) -> dict:
    """Every track decoded once, in decode workers; a file that fails is reported and skipped."""
    index = {label: i for i, label in enumerate(labels)}
    data: dict[str, list[Example]] = {s: [] for s in SPLITS}
    workers = _workers(opts)
    failed = 0
    ok: list[tuple[Track, DecodedTrack]] = []
    with DecodeWorkers(workers) as pool:
        for t, (decoded, reason) in zip(
            tracks,
            pool.map(try_load_track, (t.path for t in tracks), window=2 * workers + 2),
            strict=True,
        ):
            if decoded is None:
                failed += 1
                log(f"skipped {reason}")
                continue
            ok.append((t, decoded))
    # Copies of one recording stay on one side of the split, as train-heads keeps them.
    rows = pd.DataFrame(
        {
            "track_id": [t.track_id for t, _ in ok],
            "split": [t.split for t, _ in ok],
            "status": "ok",
            "content_hash": [d.content_hash for _, d in ok],
        }
    )
    duplicates, notes = find_duplicates(rows)
    for note in notes:
        log(note)
    for (t, decoded), split in zip(ok, duplicates["split"], strict=True):
        data[split].append(Example(t, decoded.samples, index[t.label]))
    counts = ", ".join(f"{len(v)} {k}" for k, v in data.items())
    log(f"Decoded {sum(map(len, data.values()))} tracks ({counts}); {failed} failed")
    return data


def _workers(opts: FinetuneOptions) -> int:
    """--workers, or all cores but one (at most eight), as embed has them."""
    return opts.workers if opts.workers is not None else min(8, max(1, (os.cpu_count() or 2) - 1))


def augment_workers(opts: FinetuneOptions) -> int:
    """Processes for the on-the-fly augmentation (none when there is none)."""
    if not opts.augment or opts.augment_prob == 0:
        return 0
    return _workers(opts)


def _augment_job(item: tuple) -> np.ndarray:
    samples, kinds, track_id, copy, seed, noise_dir = item
    return augment_track(samples, kinds, track_id, copy, seed, noise_dir)[0]


def _epoch_views(train: list[Example], opts: FinetuneOptions, epoch: int, pool) -> list[np.ndarray]:
    """Each training track's audio this epoch: augmented with probability augment_prob."""
    if not opts.augment or opts.augment_prob == 0:
        return [e.samples for e in train]
    rng = np.random.default_rng([opts.seed, epoch, 7])
    chosen = rng.random(len(train)) < opts.augment_prob
    jobs = [
        (e.samples, opts.augment, e.track.track_id, epoch + 1, opts.seed, opts.noise_dir)
        for e, c in zip(train, chosen, strict=True)
        if c
    ]
    augmented = iter(pool.map(_augment_job, jobs, window=2 * max(1, pool.count) + 2))
    return [next(augmented) if c else e.samples for e, c in zip(train, chosen, strict=True)]


def training_windows(
    views, train: list[Example], frontend, width: int, opts: FinetuneOptions
) -> list:
    """(window, spans, label) of every window a batch can hold.

    A raw-waveform segment shorter than a full one (a short track's only segment) is left out:
    it cannot share a batch, and a batch of one cannot train BatchNorm. Whisper pads every
    window to its fixed length, so there nothing is left out.
    """
    out = []
    for samples, e in zip(views, train, strict=True):
        _, windows, _, _ = track_windows(frontend, samples, opts.segment_seconds, opts.hop_seconds)
        out += [(x, sp, e.label) for x, sp in windows if frontend.pads or len(x) == width]
    return out


def train_batches(train: list[Example], frontend, width: int, opts: FinetuneOptions) -> int:
    """Micro-batches in an epoch without augmentation (the schedule's length)."""
    windows = training_windows([e.samples for e in train], train, frontend, width, opts)
    segments = sum(len(sp) for _, sp, _ in windows)
    if segments < 2:
        raise FinetuneError(
            f"{segments} full segment(s) of --segment-seconds {opts.segment_seconds:g} in the "
            "training tracks; fine-tuning needs at least two (a track shorter than a segment is "
            "not trained on)"
        )
    return len(_chunks(windows, np.arange(len(windows)), opts.batch_size))


def epoch_batches(train, frontend, width: int, opts: FinetuneOptions, epoch: int, pool) -> list:
    """This epoch's micro-batches in its seeded order: ([rows, width], spans, segment labels)."""
    windows = training_windows(_epoch_views(train, opts, epoch, pool), train, frontend, width, opts)
    order = np.random.default_rng([opts.seed, epoch]).permutation(len(windows))
    return [
        _LazyBatch(windows, chunk, width, frontend.pads)
        for chunk in _chunks(windows, order, opts.batch_size)
    ]


def _chunks(windows: list, order, batch_size: int) -> list:
    """Batches of window indices in this order; one that holds a single segment is dropped,
    since BatchNorm cannot train on one row."""
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [c for c in chunks if sum(len(windows[i][1]) for i in c) >= 2]


class _LazyBatch:
    """A micro-batch stacked when it is reached: the epoch's windows are in memory (for Whisper,
    copies of the training audio), but never all its stacked batches at once."""

    def __init__(self, windows: list, rows, width: int, pads: bool):
        self.windows, self.rows, self.width, self.pads = windows, rows, width, pads

    def __iter__(self):
        return iter(stack_windows(self.windows, self.rows, self.width, self.pads))


def stack_windows(windows: list, rows, width: int, pads: bool) -> tuple:
    """([rows, width] float32, their spans, a label per segment) of these training windows."""
    picked = [windows[i] for i in rows]
    batch, spans = next(window_batches([(x, sp) for x, sp, _ in picked], width, pads, len(picked)))
    return batch, spans, np.array([label for (_, sp, label) in picked for _ in sp])


def evaluate_tracks(model, frontend, examples: list[Example], labels, opts, device, curves=False):
    """Segment- and track-level metrics of the model on these tracks (mean of segment probabilities)."""
    probas = segment_probabilities(
        model,
        frontend,
        [e.samples for e in examples],
        opts.segment_seconds,
        opts.hop_seconds,
        opts.batch_size,
        device,
    )
    y_seg = np.concatenate(
        [np.full(len(p), e.label) for p, e in zip(probas, examples, strict=True)]
    )
    track_y = np.array([e.label for e in examples])
    seg_proba = np.concatenate(probas)
    loss = float(-np.mean(np.log(np.maximum(seg_proba[np.arange(len(y_seg)), y_seg], 1e-12))))
    return {
        "loss": loss,
        "segment": classification_metrics(y_seg, seg_proba, labels),
        "track": classification_metrics(
            track_y, np.stack([p.mean(axis=0) for p in probas]), labels, curves=curves
        ),
    }, probas
