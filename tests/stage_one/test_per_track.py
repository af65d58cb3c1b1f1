import numpy as np
from conftest import tone

from wav2genre_cache.stage_one.per_track import (
    HANDCRAFTED_DIM,
    PrepareOptions,
    handcrafted_features,
    prepare_track,
)


def test_handcrafted_vector_has_every_block_and_tells_sounds_apart():
    low = handcrafted_features(tone(5.0, freq=150))
    high = handcrafted_features(tone(5.0, freq=3000))
    assert low.shape == high.shape == (HANDCRAFTED_DIM,)
    assert np.all(np.isfinite(low))
    centroid = slice(4 * 20 + 2 * 12 + 2 * 7, 4 * 20 + 2 * 12 + 2 * 7 + 1)
    assert high[centroid][0] > 1.5 * low[centroid][0]  # the spectral centroid follows the pitch


def test_silence_gives_finite_features():
    assert np.all(np.isfinite(handcrafted_features(np.zeros(16_000 * 3, np.float32))))


def test_prepare_track_augments_training_tracks_only(tmp_path):
    import soundfile as sf

    path = tmp_path / "a.wav"
    sf.write(path, tone(12.0), 16_000)
    plan = PrepareOptions(5.0, None, handcrafted=True, augment=("pitch", "noise"), copies=2, seed=0)
    train, _ = prepare_track((str(path), "a", True), plan)
    held_out, _ = prepare_track((str(path), "a", False), plan)
    assert len(train.views) == 3 and len(held_out.views) == 1
    assert [h.shape for h in train.handcrafted] == [(2, 1, HANDCRAFTED_DIM)] * 3
    again, _ = prepare_track((str(path), "a", True), plan)
    np.testing.assert_array_equal(again.views[2], train.views[2])  # seeded: reproducible
    assert not np.array_equal(train.views[1], train.views[2])  # copies differ
    failed, reason = prepare_track((str(tmp_path / "missing.wav"), "m", True), plan)
    assert failed is None and "cannot read file" in reason


def test_logmel_rows_have_the_whole_segment_shape():
    from wav2genre_cache.audio.logmel import N_MELS, logmel_frames
    from wav2genre_cache.stage_one.per_track import logmel_features

    frames = logmel_frames(2.0)
    full = logmel_features(tone(2.0), frames)
    short = logmel_features(tone(1.2), frames)  # a short track: padded, same width
    assert full.shape == short.shape == (N_MELS * frames,)
    image = full.reshape(N_MELS, frames)
    assert np.argmax(image.mean(axis=1)) < N_MELS // 3  # a 440 Hz tone lights the low bands
