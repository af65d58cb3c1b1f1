"""Whisper's windows and log-mel made in numpy, in the decode workers or on the model's side."""

import numpy as np
import pytest
from conftest import tone, write_audio

from wav2genre_cache.audio.whisper_windows import WhisperWindows


def layout(window: str = "packed") -> WhisperWindows:
    from transformers import WhisperFeatureExtractor

    e = WhisperFeatureExtractor()
    return WhisperWindows(window, 480_000, 1_500, e.n_fft, e.hop_length, e.mel_filters)


@pytest.mark.parametrize("seconds", [30.0, 10.0, 0.5])
def test_log_mel_is_the_feature_extractors(seconds):
    from transformers import WhisperFeatureExtractor

    audio = tone(seconds, freq=330, seed=3)
    want = WhisperFeatureExtractor()([audio], sampling_rate=16_000, return_tensors="np")
    got = layout().log_mel(audio)
    assert got.dtype == np.float32 and got.shape == (80, 3000)
    np.testing.assert_allclose(got, want["input_features"][0], atol=1e-4)


def test_packed_windows_hold_whole_segments_back_to_back():
    samples = np.arange(16_000 * 25, dtype=np.float32)
    starts, length = [0, 80_000, 160_000, 240_000], 160_000  # 10 s segments, 5 s hop
    windows = list(layout("packed").windows(samples, starts, length))
    assert len(windows) == 2  # floor(30 / 10) = 3 a window
    (audio, spans), (last, last_spans) = windows
    assert spans == [(0, 0, 500), (1, 500, 1000), (2, 1000, 1500)] and last_spans == [(3, 0, 500)]
    # Overlapping segments are copied whole: each one's frames hold exactly its own audio.
    np.testing.assert_array_equal(audio[length : 2 * length], samples[80_000:240_000])
    np.testing.assert_array_equal(last, samples[240_000:400_000])
    alone = [s for _, sp in layout("alone").windows(samples, starts, length) for s in sp]
    assert alone == [(i, 0, 500) for i in range(4)]


def test_the_log_mel_place_is_decided_and_checked():
    from wav2genre_cache.errors import OptionError
    from wav2genre_cache.stage_one.blocks import logmel_in_workers

    assert not logmel_in_workers(None, 4, "workers")  # no encoder, nothing to make
    with pytest.raises(OptionError, match="unknown log-mel place 'gpu'"):
        logmel_in_workers(None, 4, "gpu")


def test_log_mel_made_in_the_workers_gives_the_same_cache(tmp_path, whisper_dir):
    # Bit for bit: the workers run the model side's own numpy code, one thread each.
    from wav2genre_cache.encoders.backbone import load_backbone
    from wav2genre_cache.stage_one.blocks import logmel_in_workers
    from wav2genre_cache.stage_one.options import EmbedOptions
    from wav2genre_cache.stage_one.run import embed_dataset
    from wav2genre_cache.store.cache import EmbeddingCache

    backbone = load_backbone(whisper_dir, device="cpu", dtype="float32")
    assert logmel_in_workers(backbone, 2, "workers") and not logmel_in_workers(backbone, 0)
    assert not logmel_in_workers(backbone, 2)  # auto: on the model's side on a CPU
    assert not logmel_in_workers(backbone, 2, "model")
    for i, seconds in enumerate((25.0, 12.0, 4.0, 31.0)):
        write_audio(tmp_path / "data" / "ab"[i % 2] / f"{i}.wav", seconds, freq=200 + 50 * i)
    caches = {}
    for where, workers in (("model", 0), ("workers", 1)):
        out = tmp_path / f"{where}.h5"
        opts = EmbedOptions(
            str(tmp_path / "data"),
            str(out),
            model=whisper_dir,
            device="cpu",
            dtype="float32",
            workers=workers,
            logmel_in=where,
            window="packed",
        )
        embed_dataset(opts, progress=False)
        caches[where] = EmbeddingCache(out)
    a, b = caches["model"], caches["workers"]
    np.testing.assert_array_equal(a.features("encoder"), b.features("encoder"))
    np.testing.assert_array_equal(a.segments.start, b.segments.start)
    assert len(a.segments) == 3 + 1 + 1 + 3  # 25 s, 12 s, 4 s, 31 s in 10 s segments
