"""Pace: how often plain progress lines may print."""

from __future__ import annotations

import time

from wav2genre_cache._io import Pace


def test_pace_is_true_first_then_at_most_once_per_interval():
    pace = Pace(seconds=0.2)
    assert pace() is True
    assert pace() is False
    assert pace(force=True) is True
    time.sleep(0.25)
    assert pace() is True


def test_pace_that_skips_its_first_call_waits_an_interval_from_construction():
    pace = Pace(seconds=0.2, first=False)
    assert pace() is False
    time.sleep(0.25)
    assert pace() is True
    assert pace() is False
