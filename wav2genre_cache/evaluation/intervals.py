"""95 % intervals for the figures a report shows: Wilson for a proportion, else a bootstrap.

With the few test tracks of a small collection one track moves accuracy by several points, so
every reported figure carries its n and an interval. A plain proportion (accuracy over n
tracks) gets Wilson's score interval, which keeps its coverage at small n and near 0 or 1 where
the normal approximation does not. Any other figure (macro-F1, macro PR-AUC) gets a seeded
percentile bootstrap over tracks, resampled within each label so every label keeps its count.

Tracks of one artist are not independent: where artists are known (`groups`), the bootstrap
resamples artists within each label, then tracks from the artists drawn (a two-stage cluster
bootstrap, Davison & Hinkley 1997, 3.8), so one artist's many tracks do not pass for many
independent tests. Wilson's interval counts tracks as independent. Where a split puts one artist
on both sides, every interval is too narrow as well as the figure too high (the report says so).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["LEVEL", "ROUNDS", "bootstrap_interval", "wilson_interval"]

LEVEL = 0.95
ROUNDS = 1000  # bootstrap resamples: the interval's ends move by about 0.005 between seeds
_Z = 1.959963984540054  # the standard normal's 97.5th percentile


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion: successes out of n (0..1 for n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + _Z**2 / (2 * n)) / (1 + _Z**2 / n)
    half = _Z * np.sqrt(p * (1 - p) / n + _Z**2 / (4 * n**2)) / (1 + _Z**2 / n)
    # At 0 or n successes one end is exactly 0 or 1: float rounding left 0.9999999999999999.
    low = 0.0 if successes == 0 else max(0.0, float(centre - half))
    high = 1.0 if successes == n else min(1.0, float(centre + half))
    return low, high


def bootstrap_interval(
    statistic: Callable[[np.ndarray], np.ndarray],
    strata: np.ndarray,
    rounds: int = ROUNDS,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[float, float]:
    """A seeded 95 % percentile bootstrap of statistic over rows resampled within each stratum
    (over all rows where a stratum has a single row, or with groups a single group); with
    groups (an artist per row), groups are drawn first and rows from the groups drawn.

    statistic takes an index matrix [rounds, n] (each row one resample of row indices) and
    returns the statistic of each resample [rounds]; non-finite values are left out.
    """
    rng = np.random.default_rng(seed)
    strata = np.asarray(strata)
    clustered = groups is not None and 1 < len(np.unique(groups)) < len(strata)
    units = np.asarray(groups) if clustered else np.arange(len(strata))
    if any(len(np.unique(units[strata == s])) < 2 for s in np.unique(strata)):
        # A stratum of one row (or one artist) would be drawn the same in every resample, and
        # an interval of zero width would claim a certainty the data do not have: resample all
        # rows (artists) together instead.
        strata = np.zeros(len(strata))
    parts = []
    for value in np.unique(strata):  # each stratum's rows drawn with replacement, count kept
        rows = np.flatnonzero(strata == value)
        if clustered:
            parts.append(_two_stage(rows, units[rows], rounds, rng))
        else:
            parts.append(rows[rng.integers(0, len(rows), size=(rounds, len(rows)))])
    values = np.asarray(statistic(np.concatenate(parts, axis=1)), dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    low, high = np.quantile(values, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def _two_stage(rows: np.ndarray, groups: np.ndarray, rounds: int, rng) -> np.ndarray:
    """[rounds, len(rows)] resamples: as many groups as there are drawn with replacement, then
    len(rows) rows drawn with replacement from the rows of the groups drawn."""
    members = [rows[groups == g] for g in np.unique(groups)]
    out = np.empty((rounds, len(rows)), dtype=np.int64)
    for r in range(rounds):
        pool = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
        out[r] = pool[rng.integers(0, len(pool), len(rows))]
    return out
