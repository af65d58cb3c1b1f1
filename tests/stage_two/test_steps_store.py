"""The store of a job's finished steps: what it says while a long job runs."""

from __future__ import annotations

import wav2genre_cache._io as io_helpers
from wav2genre_cache.stage_two.steps_store import StepStore


def test_a_long_job_says_how_far_it_is_between_its_job_lines(tmp_path, monkeypatch):
    # A search cross-validated on every fold is one job of hundreds of fits: its one line comes
    # when it ends, an hour later on a loaded two-core machine. Kept steps say how far it is,
    # at most every PLAIN_PROGRESS_SECONDS (0 here: at each step after the first).
    monkeypatch.setattr(io_helpers, "PLAIN_PROGRESS_SECONDS", 0.0)
    lines: list[str] = []
    store = StepStore(tmp_path / "fcnn-layer1.steps", {"job": 1}, lines.append,
                      label="fcnn encoder layer 1 (original views only)")  # fmt: skip
    for k in range(3):
        store.save(f"point-{k:03d}", {"k": k}, {"score": k / 10})
    assert lines == [
        f"  fcnn encoder layer 1 (original views only): {n} kept so far (trials, grid points or "
        f"folds; {n[0]} fitted by this run)"
        for n in ("1 fit", "2 fits", "3 fits")
    ]
    again = StepStore(tmp_path / "fcnn-layer1.steps", {"job": 1}, lines.append, label="fcnn")
    assert again.load("point-000", {"k": 0}).record == {"score": 0.0}
    again.total = 4  # where the caller knows how many steps the job takes
    again.save("point-003", {"k": 3}, {"score": 0.3})
    assert lines[-1] == (
        "  fcnn: 2 of 4 fits kept so far (trials, grid points or folds; 1 fitted by this run)"
    )


def test_a_short_job_says_nothing_more(tmp_path):
    lines: list[str] = []
    store = StepStore(tmp_path / "svm-layer0.steps", {"job": 2}, lines.append)
    for k in range(5):
        store.save(f"point-{k:03d}", {"k": k}, {"score": 0.5})
    assert lines == []  # five fits in well under 10 s: the job's own line is enough
