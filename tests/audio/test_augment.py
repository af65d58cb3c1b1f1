import numpy as np
import pytest
from conftest import tone

from wav2genre_cache.audio.augment import (
    add_noise,
    augment_track,
    pink_noise,
    pitch_shift,
    time_stretch,
)


def peak_hz(y: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.argmax(spec) * 16_000 / len(y))


def test_pitch_shift_moves_a_tone_by_the_semitones_asked():
    y = tone(2.0, freq=440.0)
    shifted = pitch_shift(y, 2.0)
    assert len(shifted) == len(y)
    assert peak_hz(shifted) == pytest.approx(440 * 2 ** (2 / 12), rel=0.01)
    assert peak_hz(pitch_shift(y, -1.5)) == pytest.approx(440 * 2 ** (-1.5 / 12), rel=0.01)


def test_time_stretch_changes_length_not_pitch():
    y = tone(3.0, freq=440.0)
    slower = time_stretch(y, 0.9)
    assert len(slower) == pytest.approx(len(y) / 0.9, rel=0.01)
    assert peak_hz(slower) == pytest.approx(440, rel=0.01)


@pytest.mark.parametrize("snr", [10.0, 20.0, 30.0])
def test_noise_is_added_at_the_snr_asked(snr):
    y = tone(2.0)
    rng = np.random.default_rng(0)
    for noise in (rng.standard_normal(len(y)), pink_noise(len(y), rng)):
        noisy = add_noise(y, snr, noise)
        measured = 10 * np.log10(np.mean(y**2) / np.mean((noisy - y) ** 2))
        assert measured == pytest.approx(snr, abs=0.01)


def test_pink_noise_falls_with_frequency():
    spec = np.abs(np.fft.rfft(pink_noise(2**16, np.random.default_rng(1)))) ** 2
    low, high = spec[10:100].mean(), spec[10_000:20_000].mean()
    assert low > 50 * high


def test_copies_are_seeded_per_track_and_copy():
    y = tone(2.0)
    a, pa = augment_track(y, ("pitch", "stretch", "noise"), "t1", 1, seed=0)
    b, pb = augment_track(y, ("pitch", "stretch", "noise"), "t1", 1, seed=0)
    c, pc = augment_track(y, ("pitch", "stretch", "noise"), "t1", 2, seed=0)
    assert pa == pb and pa != pc
    np.testing.assert_array_equal(a, b)
    assert (
        -2 <= pa["pitch_semitones"] <= 2
        and 0.9 <= pa["stretch_rate"] <= 1.1
        and 10 <= pa["snr_db"] <= 30
    )
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_track(y, ("reverb",), "t1", 1)
