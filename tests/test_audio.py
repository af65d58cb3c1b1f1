import numpy as np
import pytest
import soundfile as sf
from conftest import tone, write_audio
from hypothesis import given
from hypothesis import strategies as st

from wav2genre_cache.audio import (
    SAMPLE_RATE,
    AudioError,
    load_track,
    normalize_segments,
    segment_starts,
    segment_track,
)


@given(
    n=st.integers(0, 2_000_000),
    segment=st.integers(1_000, 200_000),
    hop_frac=st.sampled_from([0.25, 0.5, 1.0]),
)
def test_segments_are_equal_inside_the_track_and_cover_it(n, segment, hop_frac):
    hop = max(1, int(segment * hop_frac))
    starts = segment_starts(n, segment, hop)
    if n == 0:
        assert starts == []
        return
    if n < segment:
        assert starts == [0]  # one segment of the whole (short) track
        return
    assert starts[0] == 0
    assert all(0 <= s and s + segment <= n for s in starts)
    assert starts == sorted(set(starts))
    # Regular hops, except possibly the last one, which is anchored to the end.
    assert all(b - a == hop for a, b in zip(starts[:-2], starts[1:-1], strict=True))
    # What is left uncovered at the end is less than half a segment.
    assert n - (starts[-1] + segment) < segment / 2


def test_thirty_second_clips_give_three_ten_second_segments():
    for seconds in (29.96, 30.0, 30.37):
        n = int(seconds * SAMPLE_RATE)
        starts = segment_starts(n, 10 * SAMPLE_RATE, 10 * SAMPLE_RATE)
        assert len(starts) == 3, seconds
    # A 24 s track: 2 full segments, and a 4 s tail (< half a segment) is dropped.
    assert segment_starts(24 * SAMPLE_RATE, 160_000, 160_000) == [0, 160_000]
    # A 26 s track: the 6 s tail gets a segment anchored to the end.
    assert segment_starts(26 * SAMPLE_RATE, 160_000, 160_000) == [0, 160_000, 256_000]


def test_short_track_gives_one_whole_segment():
    starts, length = segment_track(np.zeros(3 * SAMPLE_RATE, np.float32), 10)
    assert starts == [0] and length == 3 * SAMPLE_RATE


def test_decodes_stereo_44k_to_16k_mono(tmp_path):
    path = write_audio(tmp_path / "stereo.wav", 2.0, sr=44_100, channels=2)
    track = load_track(path)
    assert track.samples.dtype == np.float32 and track.samples.ndim == 1
    assert abs(len(track.samples) - 2 * SAMPLE_RATE) <= 1
    assert track.duration == pytest.approx(2.0, abs=1e-3)
    assert len(track.content_hash) == 32


@pytest.mark.parametrize("ext", ["flac", "ogg", "mp3", "au"])
def test_decodes_every_container(tmp_path, ext):
    path = write_audio(tmp_path / f"x.{ext}", 2.0, sr=22_050)
    track = load_track(path)
    # MP3 adds encoder delay/padding: allow a frame or two.
    assert abs(track.duration - 2.0) < 0.1
    # The 440 Hz tone survives: it is the strongest frequency.
    spec = np.abs(np.fft.rfft(track.samples))
    assert abs(np.argmax(spec) * SAMPLE_RATE / len(track.samples) - 440) < 5


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.wav", b"", "empty file"),
        ("text.mp3", b"this is not audio, just text\n" * 20, "not a decodable audio file"),
        (
            "corrupt.flac",
            b"fLaC\x00\x00\x00\x22" + bytes(range(256)) * 4,
            "not a decodable audio file",
        ),
    ],
)
def test_bad_files_raise_a_clear_error_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioError, match=message) as info:
        load_track(path)
    assert name in str(info.value)


def test_short_clip_and_unreadable_file(tmp_path):
    short = write_audio(tmp_path / "short.wav", 0.5)
    with pytest.raises(AudioError, match="too short"):
        load_track(short)
    link = tmp_path / "gone.wav"
    link.symlink_to(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="cannot read file"):
        load_track(link)


def test_silence_normalises_to_zeros_not_nan(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(2 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    out = normalize_segments(load_track(path).samples[None])
    assert np.all(np.isfinite(out)) and np.all(out == 0)


def test_normalisation_matches_the_feature_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    x = np.stack([tone(1.0, seed=1), 3 * tone(1.0, freq=100, seed=2) + 0.5])
    fe = Wav2Vec2FeatureExtractor(do_normalize=True)
    ref = np.stack([fe(row, sampling_rate=SAMPLE_RATE).input_values[0] for row in x])
    np.testing.assert_allclose(normalize_segments(x), ref, rtol=1e-5, atol=1e-5)
