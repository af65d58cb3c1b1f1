"""What a person watching `finetune` sees: sensible rates, and plain lines in a log."""

import io

from rich.console import Console

import wav2genre_cache._io as io_helpers
from wav2genre_cache.finetune.progress import EpochBar


def test_rates_start_after_an_epochs_first_step_and_a_log_gets_lines(monkeypatch):
    monkeypatch.setattr(io_helpers, "PLAIN_PROGRESS_SECONDS", 0.0)
    log = io.StringIO()
    with EpochBar(Console(file=log, markup=False), epochs=2, total=4, done=0) as bar:
        for epoch, segments in ((0, 4), (0, 8), (1, 4), (1, 8)):
            bar.step(epoch, loss=0.5, segments=segments)
    lines = [line for line in log.getvalue().splitlines() if line.startswith("fine-tune: ")]
    assert len(lines) == 4
    # The first step of an epoch has no rate (the bar never saw it start): "-", not millions.
    assert lines[0].endswith(", - segments/s") and lines[2].endswith(", - segments/s")
    rate = float(lines[1].split(", ")[-1].split()[0])
    assert rate > 0 and lines[3].startswith("fine-tune: epoch 2/2, step 4/4")
