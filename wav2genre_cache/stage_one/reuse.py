"""Encoder features reused from an earlier cache: the same decoded audio, cut and embedded with the
same settings, is copied instead of run through the model again (`embed --reuse CACHE`).

Relabelling a collection, joining it with another under a label map, or reading it as tags
changes the labels, not the audio: the encoder, the costly part of stage one, need not run
again. A track is matched by the hash of its decoded audio (the cache's content_hash), never by
path or id, and only its original view is reused (augmented copies depend on the split).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wav2genre_cache.errors import OptionError
from wav2genre_cache.feature_sets import ENCODER
from wav2genre_cache.store.cache import EmbeddingCache, config_differences

# The settings that decide an encoder feature of given audio; every other one (labels, split,
# data paths, other feature sets, augmentation) may differ.
ENCODER_SETTINGS = (
    "sample_rate",
    "segment_seconds",
    "hop_seconds",
    "backbone",
    "backbone_revision",
    "frontend",
    "window",
    "layers",
    "dim",
    "dtype",
)


class ReusedFeatures:
    """The original-view encoder features of an earlier cache, by the hash of the decoded audio."""

    def __init__(self, path: str | Path, config: dict):
        self.path = Path(path)
        cache = EmbeddingCache(self.path)
        if ENCODER not in cache.feature_names:
            raise OptionError(f"--reuse {self.path}: the cache has no encoder features to reuse")
        # As resuming compares them: a setting an older cache lacks counts as its implied value.
        differ = config_differences(
            {k: v for k, v in cache.config.items() if k in ENCODER_SETTINGS},
            {k: config.get(k) for k in ENCODER_SETTINGS},
        )
        if differ:
            raise OptionError(
                f"--reuse {self.path}: its encoder features were made with other settings:\n  "
                + "\n  ".join(differ)
                + "\nReuse a cache of the same model and segments, or leave out --reuse."
            )
        tracks, seg = cache.tracks, cache.segments
        self._cache = cache
        self._rows = np.flatnonzero(seg.view.to_numpy() == 0)  # original views, by track
        self._starts = seg.start.to_numpy()[self._rows]
        bounds = np.searchsorted(seg.track.to_numpy()[self._rows], np.arange(len(tracks) + 1))
        ok = (tracks.status.to_numpy() == "ok") & (tracks.content_hash.to_numpy() != "")
        self._span: dict[str, tuple[int, int]] = {}  # content hash -> its positions in _rows
        for i in np.flatnonzero(ok):
            self._span.setdefault(tracks.content_hash.iat[i], (bounds[i], bounds[i + 1]))
        self.reused = 0  # tracks whose features were copied so far

    def encoder_features(self, content_hash: str, starts: list[float]) -> np.ndarray | None:
        """[segments, layers, dim] float32 of this audio cut at `starts`, or None if not there."""
        lo, hi = self._span.get(content_hash, (0, 0))
        if hi - lo != len(starts) or not len(starts):
            return None
        if not np.allclose(self._starts[lo:hi], starts, rtol=0, atol=1e-6):
            return None
        first, last = int(self._rows[lo]), int(self._rows[hi - 1])
        if last - first + 1 != hi - lo:  # a track's original segments are stored together
            return None
        self.reused += 1
        return self._cache.feature_rows(ENCODER, first, last + 1)
