"""audio.logmel: the spectrogram heads' log-mel rows in numpy are librosa's, value for value."""

from __future__ import annotations

import numpy as np
import pytest

from wav2genre_cache.audio.logmel import log_mel_image, logmel_frames, mel_filters


def _librosa_logmel(segment: np.ndarray, frames: int) -> np.ndarray:
    """librosa's melspectrogram and power_to_db, as stage one called them before audio.logmel."""
    import librosa

    mel = librosa.feature.melspectrogram(
        y=np.asarray(segment, np.float32), sr=16_000, n_fft=1024, hop_length=512, n_mels=128
    )
    db = librosa.power_to_db(mel, ref=1.0, top_db=80.0)[:, :frames]
    if db.shape[1] < frames:
        db = np.pad(db, ((0, 0), (0, frames - db.shape[1])), constant_values=float(db.min()))
    return db.astype(np.float32).reshape(-1)


@pytest.mark.filterwarnings("ignore:n_fft=1024 is too large")
@pytest.mark.parametrize("samples", [32_000, 24_000, 300, 1_500])
def test_log_mel_rows_are_librosas(samples):
    rng = np.random.default_rng(samples)
    t = np.arange(samples) / 16_000
    segment = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(samples)).astype(
        np.float32
    )
    frames = logmel_frames(2.0)
    got = log_mel_image(segment, frames, mel_filters())
    assert got.shape == (128 * frames,) and got.dtype == np.float32
    np.testing.assert_allclose(got, _librosa_logmel(segment, frames), atol=1e-4, rtol=0)
