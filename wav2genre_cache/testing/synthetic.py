"""Synthetic data with known structure: caches for tests and benchmarks, audio for the demo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from wav2genre_cache.feature_sets import ENCODER
from wav2genre_cache.store.cache import TrackResult
from wav2genre_cache.store.cache_writer import ShardStore


def write_synthetic_cache(
    path: str | Path,
    n_tracks: int = 200,
    segments_per_track: int = 3,
    n_layers: int = 13,
    dim: int = 768,
    n_labels: int = 10,
    informative_layers: tuple[int, ...] | None = None,
    signal: float = 1.0,
    random_labels: bool = False,
    seed: int = 0,
    multi_label: bool = False,
    tag_rate: float = 0.3,
    sources: int = 1,
    duplicates: int = 0,
) -> Path:
    """A real cache whose features carry the label (at `informative_layers`, default all).

    Each label has a random direction; a segment is noise plus `signal` times its label's
    direction. With random_labels the labels are shuffled after the features are made, so no
    head can beat chance.

    multi_label: each track has each of the n_labels tags with probability `tag_rate` (at least
    one), and its segments carry the sum of its tags' directions. sources: tracks alternate
    between that many datasets (`source0`, ...). duplicates: the last k tracks are copies of the
    first k (same features and content hash), whatever their splits.
    """
    rng = np.random.default_rng(seed)
    labels = [f"tag{k}" if multi_label else f"genre{k}" for k in range(n_labels)]
    y = np.arange(n_tracks) % n_labels
    tags = rng.random((n_tracks, n_labels)) < tag_rate
    tags[np.arange(n_tracks), y] = True  # every track has at least one tag
    centres = rng.standard_normal((n_layers, n_labels, dim)).astype(np.float32)
    informative = set(range(n_layers) if informative_layers is None else informative_layers)
    splits = np.array(["train"] * n_tracks, dtype=object)
    order = rng.permutation(n_tracks)
    splits[order[: n_tracks // 10]] = "test"
    splits[order[n_tracks // 10 : n_tracks // 5]] = "valid"
    copies = np.arange(n_tracks - duplicates, n_tracks)
    y[copies], tags[copies] = y[: len(copies)], tags[: len(copies)]  # a copy's labels are its own
    structure = tags.copy()  # what the features carry, before any shuffling
    if random_labels:
        order_shuffled = rng.permutation(n_tracks)
        y, tags = y[order_shuffled], tags[order_shuffled]
    config = {
        "backbone": "synthetic",
        "backbone_revision": f"seed{seed}",
        "sample_rate": 16000,
        "segment_seconds": 10.0,
        "hop_seconds": 10.0,
        "dtype": "float32",
        "features": [ENCODER],
        "multi_label": multi_label,
    }
    path = Path(path)
    store = ShardStore(path, config)
    store.open()
    track_feature_label = np.arange(n_tracks) % n_labels  # the structure, before any shuffling
    results = []
    made: list[np.ndarray] = []
    for i in range(n_tracks):
        original = i - (n_tracks - duplicates)  # >= 0: a copy of track `original`
        if original >= 0:
            feats = made[original]
        else:
            feats = rng.standard_normal((segments_per_track, n_layers, dim)).astype(np.float32)
            for layer in informative:
                carried = (
                    centres[layer, structure[i]].sum(0)
                    if multi_label
                    else centres[layer, track_feature_label[i]]
                )
                feats[:, layer] += signal * carried
            made.append(feats)
        label = (
            "|".join(labels[k] for k in np.flatnonzero(tags[i])) if multi_label else labels[y[i]]
        )
        results.append(
            TrackResult(
                f"track{i:05d}",
                f"synthetic/track{i:05d}.wav",
                label,
                str(splits[i]),
                "",
                "ok",
                duration=10.0 * segments_per_track,
                content_hash=f"{original if original >= 0 else i:032x}",
                starts=[10.0 * s for s in range(segments_per_track)],
                views=[0] * segments_per_track,
                features={ENCODER: feats},
                source=f"source{i % sources}" if sources > 1 else "",
            )
        )
        if len(results) == 256 or i == n_tracks - 1:
            store.write(i, results)
            results = []
    return store.finalize([f"track{i:05d}" for i in range(n_tracks)])


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
