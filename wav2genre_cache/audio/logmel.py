"""The `logmel` feature set's image of a segment (what cnn, lstm and cnn-lstm read), in numpy.

librosa's melspectrogram (centred Hann STFT, zero padding, power, Slaney mel filters) and
power_to_db (ref 1, floor 80 dB below the maximum), step for step, from the filter bank as an
array: stage one passes librosa's filters (mel_filters), an ONNX export the same filters
saved beside it, so predicting with onnxruntime needs numpy alone. The same float32 values as librosa
(a test).
"""

from __future__ import annotations

import functools

import numpy as np

from wav2genre_cache.audio.decode import SAMPLE_RATE

N_MELS = 128
N_FFT = 1024
LOGMEL_HOP = 512
TOP_DB = 80.0


def logmel_frames(segment_seconds: float) -> int:
    """Frames of a whole segment's log-mel spectrogram (every stored row has this many)."""
    return 1 + int(round(segment_seconds * SAMPLE_RATE)) // LOGMEL_HOP


def log_mel_image(segment: np.ndarray, frames: int, filters: np.ndarray) -> np.ndarray:
    """A segment's log-mel spectrogram (dB), N_MELS x frames flattened to one float32 row.

    filters: the mel filter bank [N_MELS, N_FFT // 2 + 1] (librosa.filters.mel's, float32).
    A segment shorter than a whole one (a short track) is padded with the lowest level.
    """
    y = np.pad(np.asarray(segment, np.float32), N_FFT // 2)
    windows = np.lib.stride_tricks.sliding_window_view(y, N_FFT)[::LOGMEL_HOP]
    spectrum = np.fft.rfft(windows * _hann(N_FFT), axis=-1).astype(np.complex64)
    power = np.abs(spectrum) ** 2  # [frames, bins], float32 as librosa's
    mel = np.einsum("tf,mf->mt", power, np.asarray(filters, np.float32), optimize=True)
    db = 10.0 * np.log10(np.maximum(1e-10, mel))
    db = np.maximum(db, db.max() - TOP_DB)[:, :frames]
    if db.shape[1] < frames:
        db = np.pad(db, ((0, 0), (0, frames - db.shape[1])), constant_values=float(db.min()))
    return db.astype(np.float32).reshape(-1)


@functools.cache
def mel_filters(sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """librosa's Slaney mel filter bank [N_MELS, N_FFT // 2 + 1] (float32): stage one and export."""
    import librosa

    return librosa.filters.mel(sr=sample_rate, n_fft=N_FFT, n_mels=N_MELS)


def _hann(n: int) -> np.ndarray:
    """scipy.signal.get_window("hann", n) (periodic), float64 as librosa uses it."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
