"""Memory of the spectrogram heads and stage two's layer probe on log-mel rows (issue 25).

Fits run in a subprocess under an address-space limit: the process's own size when the data is
ready plus a margin that the bounded code stays well inside (it passes at 500 MB) and the old
code overran (a CNN's validation pass over 500 rows at once: over 2 GB; the probe's
[40,065 x 40,065] ridge system: 6 GB per copy).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch

from wav2genre_cache.heads.spectrogram import SpectrogramClassifier
from wav2genre_cache.stage_two.data import _ridge, _ridge_dual

MARGIN_MB = 1100

_LIMITED = """
import json, resource, numpy as np, torch
torch.set_num_threads(1)
rng = np.random.default_rng(0)
{setup}
vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
limit = vm + {margin} * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
{run}
print(json.dumps({{"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run_limited(setup: str, run: str) -> dict:
    """Run `setup`, then `run` under an address-space limit of the process's size + MARGIN_MB."""
    code = _LIMITED.format(setup=textwrap.dedent(setup), run=textwrap.dedent(run), margin=MARGIN_MB)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_cnn_fit_with_many_validation_rows_stays_within_a_bounded_size():
    setup = """
    from wav2genre_cache.heads.spectrogram import SpectrogramClassifier
    X = rng.standard_normal((516, 128 * 313), dtype=np.float32)
    y = np.arange(516) % 4
    head = SpectrogramClassifier(kind="cnn", max_epochs=1)
    """
    run = "head.fit(X[:16], y[:16], X_val=X[16:], y_val=y[16:]).predict_proba(X[:4])"
    run_limited(setup, run)


def test_layer_probe_on_a_log_mel_wide_set_stays_within_a_bounded_size():
    setup = """
    from types import SimpleNamespace
    from wav2genre_cache.stage_two.data import probe_best_layer
    X = rng.standard_normal((60, 128 * 313), dtype=np.float32)
    y = np.arange(60) % 4
    train = np.arange(60) % 5 > 0
    data = SimpleNamespace(
        valid=~train, train=train, y=y, labels=list("abcd"), multi_label=False, n_layers=1
    )
    data.layer = lambda i: X
    """
    run_limited(setup, "probe_best_layer(data)")


def test_batched_validation_loss_equals_the_row_at_a_time_loss():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((45, 16 * 24), dtype=np.float32)
    y = np.arange(45) % 3
    for kind in ("cnn", "lstm", "cnn-lstm"):
        head = SpectrogramClassifier(kind=kind, n_mels=16, channels=8, batch_size=8, max_epochs=2)
        head.fit(X, y)
        x, y_idx = torch.from_numpy(head._scale(X)), torch.from_numpy(y.astype(np.int64))
        batched = head._validation_loss(head.net_, (x,), y_idx)
        with torch.no_grad():
            one_by_one = [
                torch.nn.functional.cross_entropy(head.net_(x[i : i + 1]), y_idx[i : i + 1])
                for i in range(len(x))
            ]
        assert abs(batched - float(np.mean(one_by_one))) < 1e-6, kind


def test_scale_and_band_statistics_do_not_depend_on_the_chunking():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((600, 8 * 5), dtype=np.float32) * 3 + 1
    head = SpectrogramClassifier(n_mels=8)
    head._fit_scaler(X)
    bands = X.reshape(600, 8, 5).astype(np.float64)
    np.testing.assert_allclose(head.mean_, np.repeat(bands.mean(axis=(0, 2)), 5), rtol=1e-6)
    np.testing.assert_allclose(head.scale_, np.repeat(bands.std(axis=(0, 2)), 5), rtol=1e-5)
    scaled = head._scale(X)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, (X - head.mean_) / head.scale_, rtol=1e-6, atol=1e-6)


def test_the_probe_solved_over_rows_equals_the_one_solved_over_features():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((40, 200)).astype(np.float32)
    A = (A - A.mean(0)) / A.std(0)
    Y = (np.eye(4)[np.arange(40) % 4] * 2 - 1).astype(np.float32)
    B = rng.standard_normal((10, 200)).astype(np.float32)
    np.testing.assert_allclose(_ridge_dual(A, Y, B, 10.0), _ridge(A, Y, B, 10.0), atol=1e-4)


def test_training_reads_rows_in_batches_without_copying_them_whole():
    # The rows are standardised batch by batch, and the hold-out is a list of rows: before, a
    # hold-out copy and a standardised copy of the training rows took twice the rows' size
    # (12.6 MB here; now 4.2 MB: a chunk of the scaler's statistics).
    import tracemalloc

    X = np.random.default_rng(0).standard_normal((2000, 16 * 50), dtype=np.float32)
    y = np.arange(len(X)) % 3
    head = SpectrogramClassifier(kind="lstm", n_mels=16, hidden=4, max_epochs=1, batch_size=256)
    head.fit(X[:40], y[:40])  # what the first fit imports is not the fit's memory
    tracemalloc.start()
    try:
        head.fit(X, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes, f"{peak / 2**20:.1f} MB for {X.nbytes / 2**20:.1f} MB of rows"
