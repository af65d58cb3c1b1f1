"""Training-audio augmentation: pitch shift, time stretch and additive noise, seeded per track.

Each augmented copy applies every requested kind once with random parameters drawn from a
generator seeded by (seed, track id, copy), so copies are reproducible and a resumed run makes
the same ones. The audio stays 16 kHz; segments are cut from it as from the original.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from wav2genre_cache.audio.decode import AUDIO_EXTENSIONS, SAMPLE_RATE, load_track

AUGMENTATIONS = ("pitch", "stretch", "noise")
PITCH_SEMITONES = 2.0  # shifts are drawn from [-2, 2]
STRETCH_RATES = (0.9, 1.1)
NOISE_SNR_DB = (10.0, 30.0)


def pitch_shift(y: np.ndarray, n_steps: float) -> np.ndarray:
    """Shift pitch by n_steps semitones, keeping the duration."""
    import librosa

    return librosa.effects.pitch_shift(y, sr=SAMPLE_RATE, n_steps=n_steps).astype(np.float32)


def time_stretch(y: np.ndarray, rate: float) -> np.ndarray:
    """Play `rate` times as fast (0.9 = 11% longer), keeping the pitch."""
    import librosa

    return librosa.effects.time_stretch(y, rate=rate).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with power falling as 1/f (white noise shaped in the frequency domain)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    return np.fft.irfft(spectrum / np.sqrt(f), n).astype(np.float32)


def add_noise(y: np.ndarray, snr_db: float, noise: np.ndarray) -> np.ndarray:
    """Add `noise` scaled so that the signal-to-noise ratio is snr_db (silence stays silence)."""
    noise = np.resize(noise, len(y)).astype(np.float32)
    p_signal, p_noise = float(np.mean(y**2)), float(np.mean(noise**2))
    if p_signal == 0 or p_noise == 0:
        return y.copy()
    scale = np.sqrt(p_signal / (p_noise * 10 ** (snr_db / 10)))
    return (y + scale * noise).astype(np.float32)


def augment_track(
    y: np.ndarray,
    kinds: tuple[str, ...],
    track_id: str,
    copy: int,
    seed: int = 0,
    noise_dir: str | None = None,
) -> tuple[np.ndarray, dict]:
    """One augmented copy of a track and the parameters drawn for it."""
    unknown = set(kinds) - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(
            f"unknown augmentation(s) {sorted(unknown)}; use {', '.join(AUGMENTATIONS)}"
        )
    key = int.from_bytes(hashlib.blake2b(track_id.encode(), digest_size=8).digest(), "little")
    rng = np.random.default_rng([seed, key, copy])
    params: dict = {}
    out = y
    if "pitch" in kinds:
        params["pitch_semitones"] = float(rng.uniform(-PITCH_SEMITONES, PITCH_SEMITONES))
        out = pitch_shift(out, params["pitch_semitones"])
    if "stretch" in kinds:
        params["stretch_rate"] = float(rng.uniform(*STRETCH_RATES))
        out = time_stretch(out, params["stretch_rate"])
    if "noise" in kinds:
        params["snr_db"] = float(rng.uniform(*NOISE_SNR_DB))
        noise, params["noise"] = _noise(len(out), rng, noise_dir)
        out = add_noise(out, params["snr_db"], noise)
    return out, params


def _noise(n: int, rng: np.random.Generator, noise_dir: str | None) -> tuple[np.ndarray, str]:
    if noise_dir:
        files = sorted(
            p for p in Path(noise_dir).rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS
        )
        if files:
            pick = files[int(rng.integers(len(files)))]
            return load_track(pick).samples, pick.name
    if rng.random() < 0.5:
        return rng.standard_normal(n).astype(np.float32), "white"
    return pink_noise(n, rng), "pink"
