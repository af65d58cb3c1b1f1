import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from conftest import tone, write_audio
from fakes import silent_flac, without_length
from hypothesis import given
from hypothesis import strategies as st

from wav2genre_cache.audio.decode import (
    SAMPLE_RATE,
    decode_bytes,
    decode_file,
    load_track,
    normalize_segments,
    segment_starts,
    segment_track,
)
from wav2genre_cache.audio.decode_stream import _c_stderr_named
from wav2genre_cache.errors import AudioError, AudioTooLong


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


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """Two minutes of 8-channel 96 kHz silence: ~90 KB, 369 MB once decoded to float32."""
    return silent_flac(120)


def decode_peak_mb(data: bytes, **kw) -> tuple[Exception | None, float]:
    """decode_bytes(data, **kw): what it raised, and the peak of numpy allocations in MB."""
    tracemalloc.start()  # numpy reports its array buffers to tracemalloc
    try:
        decode_bytes(data, "bomb.flac", **kw)
        raised = None
    except Exception as exc:
        raised = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return raised, peak


def test_a_long_header_is_refused_before_decoding(bomb):
    start = time.perf_counter()
    raised, peak = decode_peak_mb(bomb, max_seconds=36)
    assert isinstance(raised, AudioTooLong), raised
    assert str(raised) == "bomb.flac: 2.0 minutes of audio; the limit is 0.6 minutes"
    assert peak < 5 and time.perf_counter() - start < 1


def test_a_stream_of_unknown_length_stops_decoding_at_the_limit(bomb):
    start = time.perf_counter()
    raised, peak = decode_peak_mb(without_length(bomb), max_seconds=36)
    assert isinstance(raised, AudioTooLong), raised
    assert "more than 0.6 minutes of audio; the limit is 0.6 minutes" in str(raised)
    # One 8 MB read block, its mix-down and 36 s at 16 kHz; not the 369 MB of the whole decode.
    assert peak < 40 and time.perf_counter() - start < 2


def test_a_refused_stream_keeps_no_buffer_in_its_traceback(bomb):
    # The error's traceback holds the decoder's frames until it is collected; where something
    # keeps the error a while (a web framework's handlers, a cycle), it must not keep the
    # decoded audio too: 40 refused uploads at once once held 3 GB.
    raised, _ = decode_peak_mb(without_length(bomb), max_seconds=36)
    assert isinstance(raised, AudioTooLong), raised
    held = []
    tb = raised.__traceback__
    while tb is not None:
        held += [
            (tb.tb_frame.f_code.co_name, k, v.nbytes)
            for k, v in tb.tb_frame.f_locals.items()
            if isinstance(v, np.ndarray) and v.nbytes > 2**16
        ]
        tb = tb.tb_next
    assert held == []


def test_bytes_and_files_decode_alike_and_a_limit_above_the_length_changes_nothing(tmp_path):
    path = write_audio(tmp_path / "x.flac", 3.0, sr=44_100, channels=2)
    from_file = load_track(path).samples
    np.testing.assert_array_equal(decode_bytes(path.read_bytes(), "x.flac"), from_file)
    np.testing.assert_array_equal(decode_bytes(path.read_bytes(), "x.flac", 3.5), from_file)
    np.testing.assert_array_equal(decode_file(path, max_seconds=3.5), from_file)
    with pytest.raises(AudioTooLong, match="x.flac: 0.1 minutes of audio"):
        decode_file(path, max_seconds=2)


def test_decoder_messages_about_a_corrupt_mp3_name_the_file(tmp_path):
    data = bytearray((write_audio(tmp_path / "ok.mp3", 5.0, sr=22_050)).read_bytes())
    mid = len(data) // 2
    data[mid : mid + 400] = np.random.default_rng(0).integers(0, 256, 400, np.uint8).tobytes()
    path = tmp_path / "corrupt_song.mp3"
    path.write_bytes(bytes(data))
    code = (
        "import sys; from wav2genre_cache.audio.decode import load_track, decode_bytes\n"
        "load_track(sys.argv[1]); print('decoded', flush=True)\n"
        "decode_bytes(open(sys.argv[1], 'rb').read(), 'upload.mp3')\n"
    )
    # A subprocess: libmpg123 writes to the real fd 2, which capsys cannot see.
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "decoded" in proc.stdout, proc.stderr
    lines = proc.stderr.splitlines()
    assert any("libmpg123" in line for line in lines), proc.stderr  # the damage was seen
    assert all(line.startswith((f"{path}: ", "upload.mp3: ")) for line in lines), proc.stderr
    assert any(line.startswith("upload.mp3: decoder: [src/libmpg123") for line in lines)


def test_decoder_lines_of_a_file_that_fails_to_open_carry_its_own_name(tmp_path):
    # A text file named .mp3 makes libmpg123 complain and the open fail: its lines must not
    # wait in the capture and come out later under the next file's name.
    fake = tmp_path / "fake.mp3"
    fake.write_text("not audio at all, " * 200)
    good = write_audio(tmp_path / "tone.wav", 1.5)
    code = (
        "import sys; from wav2genre_cache.audio.decode import try_load_track\n"
        "print(try_load_track(sys.argv[1])[1], flush=True); try_load_track(sys.argv[2])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(fake), str(good)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "not a decodable audio file" in proc.stdout, proc.stderr
    assert str(good) not in proc.stderr
    assert all(line.startswith(f"{fake}: ") for line in proc.stderr.splitlines()), proc.stderr


def test_captured_stderr_keeps_lines_that_are_not_the_decoders(capfd):
    print("before", file=sys.stderr, end="")  # pending Python output is flushed, not lost
    with _c_stderr_named("song.mp3"):
        os.write(2, b"[src/libmpg123/layer3.c:1] error: boom\nNote: Trying to resync...\n")
        os.write(2, b"INFO:     a log line from another thread\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == (
        "before"
        "song.mp3: decoder: [src/libmpg123/layer3.c:1] error: boom\n"
        "song.mp3: decoder: Note: Trying to resync...\n"
        "INFO:     a log line from another thread\n"
        "after\n"
    )


def test_a_file_that_exists_but_is_not_audio_is_not_said_to_be_missing(tmp_path):
    fake = tmp_path / "notes.mp3"
    fake.write_text("not audio at all\n" * 50)
    with pytest.raises(AudioError) as error:
        load_track(fake)
    assert str(error.value) == (
        f"{fake}: not a decodable audio file (its contents are in no audio format the decoders know)"
    )
