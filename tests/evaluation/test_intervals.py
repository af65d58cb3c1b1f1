"""The 95 % intervals every reported figure carries: coverage, reproducibility, width."""

import numpy as np
import pytest

from wav2genre_cache.evaluation.intervals import bootstrap_interval, wilson_interval
from wav2genre_cache.evaluation.metrics import classification_metrics, multilabel_metrics

LABELS = [f"g{k}" for k in range(10)]


def predictions(rng, n: int, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    """n tracks of ten labels, each classified right with probability `accuracy`."""
    y = rng.integers(0, 10, n)
    right = rng.random(n) < accuracy
    guess = np.where(right, y, (y + rng.integers(1, 10, n)) % 10)
    proba = np.full((n, 10), 0.05)
    proba[np.arange(n), guess] = 0.55
    return y, proba


def test_the_accuracy_interval_covers_a_known_accuracy_95_times_in_100():
    # A classifier right 80 % of the time, tested on 20 tracks, 400 times: the nominal 95 %
    # interval must hold the true 0.8 in 93-97 % of them (Wilson's exact coverage here: 0.956).
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(400):
        m = classification_metrics(*predictions(rng, 20, 0.8), LABELS, intervals=True)
        low, high = m["accuracy_ci"]
        covered.append(low <= 0.8 <= high)
        assert low <= m["accuracy"] <= high
    assert 0.93 <= np.mean(covered) <= 0.97, np.mean(covered)


def test_wilson_matches_its_formula_and_stays_inside_0_1():
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=5e-4)  # "10 of 10"
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=5e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(20, 20)[1] == 1.0 and wilson_interval(0, 20)[0] == 0.0


def test_bootstrap_intervals_are_seeded_and_narrow_with_more_tracks():
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 200):
        y, proba = predictions(rng, n, 0.7)
        a = classification_metrics(y, proba, LABELS, intervals=True)
        b = classification_metrics(y, proba, LABELS, intervals=True)
        assert a["macro_f1_ci"] == b["macro_f1_ci"]  # the same figures give the same interval
        low, high = a["macro_f1_ci"]
        assert low <= a["macro_f1"] <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_a_stratified_bootstrap_keeps_every_labels_count():
    strata = np.array([0] * 3 + [1] * 7)
    seen = []
    bootstrap_interval(lambda i: seen.append(i) or np.zeros(len(i)), strata, rounds=50)
    assert all((strata[i] == 1).sum(axis=1).tolist() == [7] * 50 for i in seen)


def test_tags_carry_an_interval_on_macro_pr_auc():
    rng = np.random.default_rng(2)
    Y = rng.random((40, 4)) < 0.4
    proba = np.clip(Y * 0.6 + rng.random((40, 4)) * 0.5, 0, 1)
    m = multilabel_metrics(Y, proba, list("abcd"), intervals=True)
    low, high = m["macro_pr_auc_ci"]
    assert 0 <= low <= m["macro_pr_auc"] <= high <= 1
    assert 0 <= m["accuracy_ci"][0] <= m["accuracy"] <= m["accuracy_ci"][1]


def test_one_track_per_label_still_gets_an_interval_of_some_width():
    # Ten test tracks, one per label (the dev clips' random split): resampled within labels,
    # every resample would be the same ten tracks and the interval a single point.
    y = np.arange(10)
    guess = np.where(np.arange(10) < 4, y, (y + 1) % 10)
    proba = np.full((10, 10), 0.05)
    proba[np.arange(10), guess] = 0.55
    m = classification_metrics(y, proba, LABELS, intervals=True)
    low, high = m["macro_f1_ci"]
    assert high - low > 0.2 and low <= m["macro_f1"] <= high


def artist_data(rng, artists_per_label: int = 4, tracks_per_artist: int = 10):
    """Two labels; whether an artist's tracks are right depends mostly on the artist."""
    y, right, groups = [], [], []
    for label in range(2):
        for a in range(artists_per_label):
            p = rng.choice([0.2, 0.95])  # some artists the model gets, some it does not
            y += [label] * tracks_per_artist
            right += list(rng.random(tracks_per_artist) < p)
            groups += [f"{label}-{a}"] * tracks_per_artist
    return np.array(y), np.array(right), np.array(groups)


def macro_f1_rows(y, right):
    pred = np.where(right, y, 1 - y)
    return classification_metrics(y, np.eye(2)[pred], ["a", "b"], intervals=True), pred


def test_resampling_artists_widens_the_interval_where_an_artists_tracks_go_together():
    y, right, groups = artist_data(np.random.default_rng(3))
    plain, pred = macro_f1_rows(y, right)
    grouped = classification_metrics(y, np.eye(2)[pred], ["a", "b"], intervals=True, groups=groups)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(grouped["macro_f1_ci"]) > 1.5 * width(plain["macro_f1_ci"])
    assert grouped["accuracy_ci"] == plain["accuracy_ci"]  # Wilson's: counts tracks
    # Seeded: the same interval twice.
    again = classification_metrics(y, np.eye(2)[pred], ["a", "b"], intervals=True, groups=groups)
    assert again["macro_f1_ci"] == grouped["macro_f1_ci"]


def test_groups_of_one_track_each_give_the_plain_bootstrap():
    y, right, _ = artist_data(np.random.default_rng(4))
    plain, pred = macro_f1_rows(y, right)
    alone = classification_metrics(
        y, np.eye(2)[pred], ["a", "b"], intervals=True, groups=np.arange(len(y)).astype(str)
    )
    assert alone["macro_f1_ci"] == plain["macro_f1_ci"]


def test_a_label_of_one_artist_resamples_artists_across_labels():
    # One test artist per label (the dev clips' case): within-label resampling of artists would
    # draw the same artist every time; artists are drawn across labels instead.
    y, right, groups = artist_data(np.random.default_rng(5), artists_per_label=1)
    grouped = classification_metrics(
        y, np.eye(2)[np.where(right, y, 1 - y)], ["a", "b"], intervals=True, groups=groups
    )
    low, high = grouped["macro_f1_ci"]
    assert high - low > 0.05
