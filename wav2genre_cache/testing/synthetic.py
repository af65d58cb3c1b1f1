"""Synthetic data with known structure: caches for tests and benchmarks, audio for the demo."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from wav2genre_cache.feature_sets import ENCODER
from wav2genre_cache.store.cache import TrackResult
from wav2genre_cache.store.cache_writer import ShardStore


@dataclass(frozen=True)
class SyntheticCacheOptions:
    """What a synthetic cache holds: its size, its labels and how plainly the features carry them."""

    n_tracks: int = 200  # a tenth of them in test, another tenth in valid, the rest in train
    segments_per_track: int = 3  # 10-second segments, back to back
    n_layers: int = 13  # the made-up encoder's layers
    dim: int = 768  # features per layer
    n_labels: int = 10  # genres (tags with multi_label); track i's genre is i % n_labels
    informative_layers: tuple[int, ...] | None = None  # the layers that carry the label; None: all
    signal: float = 1.0  # a segment is noise plus `signal` times its label's direction
    random_labels: bool = False  # labels shuffled after the features are made: no head beats chance
    seed: int = 0  # of every random draw
    multi_label: bool = False  # each track has each tag with probability tag_rate (at least one)
    tag_rate: float = 0.3  # a tag's probability on a track, with multi_label
    sources: int = 1  # tracks alternate between this many datasets (`source0`, ...)
    duplicates: int = 0  # the last k tracks copy the first k (features, content hash, labels)
    # Above 0: each label's tracks come from this many artists (a track of label k goes to its
    # label's artist (i // n_labels) % artists_per_label); 0: no artist is known.
    artists_per_label: int = 0


def write_synthetic_cache(
    path: str | Path, options: SyntheticCacheOptions | None = None, **fields
) -> Path:
    """A real cache whose features carry the label (at `informative_layers`, default all).

    Each label has a random direction; a segment is noise plus `signal` times its label's
    direction (with multi_label, the sum of its tags' directions). Options come as a
    SyntheticCacheOptions, or as its fields by keyword (which override `options`).
    """
    o = replace(options or SyntheticCacheOptions(), **fields)
    rng = np.random.default_rng(o.seed)
    y, tags, structure, splits, centres = _draw_labels(o, rng)
    names = [f"tag{k}" if o.multi_label else f"genre{k}" for k in range(o.n_labels)]
    store = ShardStore(Path(path), _config(o))
    store.open()
    informative = set(range(o.n_layers) if o.informative_layers is None else o.informative_layers)
    results: list[TrackResult] = []
    made: list[np.ndarray] = []
    for i in range(o.n_tracks):
        original = i - (o.n_tracks - o.duplicates)  # >= 0: a copy of track `original`
        if original >= 0:
            feats = made[original]
        else:
            feats = rng.standard_normal((o.segments_per_track, o.n_layers, o.dim)).astype(
                np.float32
            )
            for layer in informative:  # the structure, before any shuffling of the labels
                carried = (
                    centres[layer, structure[i]].sum(0)
                    if o.multi_label
                    else centres[layer, i % o.n_labels]
                )
                feats[:, layer] += o.signal * carried
            made.append(feats)
        label = (
            "|".join(names[k] for k in np.flatnonzero(tags[i])) if o.multi_label else names[y[i]]
        )
        content = original if original >= 0 else i
        results.append(_track(o, i, label, str(splits[i]), feats, content))
        if len(results) == 256 or i == o.n_tracks - 1:
            store.write(i, results)
            results = []
    return store.finalize([f"track{i:05d}" for i in range(o.n_tracks)])


def _draw_labels(o: SyntheticCacheOptions, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Each track's genre and tags, the tags its features carry, its split, and the directions."""
    n = o.n_tracks
    y = np.arange(n) % o.n_labels
    tags = rng.random((n, o.n_labels)) < o.tag_rate
    tags[np.arange(n), y] = True  # every track has at least one tag
    centres = rng.standard_normal((o.n_layers, o.n_labels, o.dim)).astype(np.float32)
    splits = np.array(["train"] * n, dtype=object)
    order = rng.permutation(n)
    splits[order[: n // 10]] = "test"
    splits[order[n // 10 : n // 5]] = "valid"
    copies = np.arange(n - o.duplicates, n)
    y[copies], tags[copies] = y[: len(copies)], tags[: len(copies)]  # a copy's labels are its own
    structure = tags.copy()  # what the features carry, before any shuffling
    if o.random_labels:
        shuffled = rng.permutation(n)
        y, tags = y[shuffled], tags[shuffled]
    return y, tags, structure, splits, centres


def _config(o: SyntheticCacheOptions) -> dict:
    """The embed config a synthetic cache says it was made with."""
    return {
        "backbone": "synthetic",
        "backbone_revision": f"seed{o.seed}",
        "sample_rate": 16000,
        "segment_seconds": 10.0,
        "hop_seconds": 10.0,
        "dtype": "float32",
        "features": [ENCODER],
        "multi_label": o.multi_label,
    }


def _track(
    o: SyntheticCacheOptions, i: int, label: str, split: str, feats: np.ndarray, content: int
) -> TrackResult:
    """Track i's row and segments; `content` is the track whose recording it is."""
    n = o.segments_per_track
    return TrackResult(
        f"track{i:05d}",
        f"synthetic/track{i:05d}.wav",
        label,
        split,
        _artist(o, i),
        "ok",
        duration=10.0 * n,
        content_hash=f"{content:032x}",
        starts=[10.0 * s for s in range(n)],
        views=[0] * n,
        features={ENCODER: feats},
        source=f"source{i % o.sources}" if o.sources > 1 else "",
    )


def _artist(o: SyntheticCacheOptions, i: int) -> str:
    if not o.artists_per_label or o.multi_label:
        return ""
    return f"artist{i % o.n_labels}-{(i // o.n_labels) % o.artists_per_label}"


def write_demo_audio(
    root: str | Path, per_label: int = 6, seconds: float = 12.0, seed: int = 0
) -> Path:
    """A small labelled folder of synthetic 'genres' (different pitch and rhythm) for offline demos."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    sr = 16_000
    styles = {"drone": (110, 0.0), "pulse": (220, 2.0), "chirp": (440, 4.0), "noise": (0, 8.0)}
    t = np.arange(int(seconds * sr)) / sr
    for label, (freq, rate) in styles.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            f = freq * (1 + 0.1 * rng.standard_normal()) if freq else 0
            tone = np.sin(2 * np.pi * f * t) if f else rng.standard_normal(t.size)
            env = 0.5 * (1 + np.sin(2 * np.pi * rate * t)) if rate else 1.0
            x = 0.3 * tone * env + 0.02 * rng.standard_normal(t.size)
            sf.write(root / label / f"{label}_{i:02d}.wav", x.astype(np.float32), sr)
    return root
