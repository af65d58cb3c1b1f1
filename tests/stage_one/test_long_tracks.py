"""embed streams a long track (local engine): a chunk of segments at a time in the decode worker
and on the model's side, into a cache bit-identical to the whole file's
(benchmarks/long_files.py measures the memory on hours of audio)."""

from __future__ import annotations

import pickle
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import write_audio

from wav2genre_cache import api
from wav2genre_cache.stage_one.per_track import PrepareOptions, prepare_track
from wav2genre_cache.store.cache import EmbeddingCache

LONG = 30.0  # seconds: the threshold these tests lower embed's 10 minutes to
SECONDS = 156.1  # the long track: 10 s segments every 7 s leave a tail of 6.1 s (a segment)
WAVEFORM_BYTES = int(SECONDS * 16_000) * 4  # its decoded float32 waveform


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two labels; one long track, at 22.05 kHz in stereo (resampled as it decodes)."""
    root = tmp_path_factory.mktemp("long_tracks")
    write_audio(root / "a" / "long.wav", SECONDS, sr=22_050, freq=330.0, channels=2)
    write_audio(root / "a" / "short.wav", 25.0, freq=500.0, seed=1)
    write_audio(root / "b" / "short2.wav", 33.0, freq=700.0, seed=2)
    write_audio(root / "b" / "short3.wav", 21.0, freq=900.0, seed=3)
    return root


def assert_same_cache(a: Path, b: Path) -> None:
    ca, cb = EmbeddingCache(a), EmbeddingCache(b)
    assert ca.config == cb.config
    assert ca.tracks.equals(cb.tracks) and ca.segments.equals(cb.segments)
    assert ca.feature_names == cb.feature_names
    for name in ca.feature_names:
        np.testing.assert_array_equal(ca.features(name), cb.features(name))


@pytest.mark.parametrize("model", ["random-tiny", "whisper"])
def test_a_streamed_long_track_is_cached_as_the_whole_file_is(data, tmp_path, model, whisper_dir):
    if model == "whisper":  # packed 30 s windows; the short tracks' log-mel made in the worker
        kw = {"model": whisper_dir, "logmel_in": "workers"}
    else:
        kw = {"model": model, "features": ("encoder", "handcrafted", "logmel")}
    kw |= {"workers": 1, "hop_seconds": 7.0}
    whole = api.embed(data, tmp_path / "whole.h5", long_track_seconds=None, **kw)
    streamed = api.embed(data, tmp_path / "streamed.h5", long_track_seconds=LONG, **kw)
    assert whole.tracks_ok == streamed.tracks_ok == 4 and streamed.segments > 25
    assert_same_cache(tmp_path / "whole.h5", tmp_path / "streamed.h5")
    starts = EmbeddingCache(tmp_path / "streamed.h5").segments.start.to_numpy()
    assert np.isclose(starts, SECONDS - 10.0, atol=1e-3).any()  # the tail, anchored to the end
    if model == "random-tiny":  # --reuse finds the streamed track by the hash of its audio
        reused = api.embed(data, tmp_path / "reused.h5", long_track_seconds=LONG,
                           reuse=str(tmp_path / "whole.h5"), **kw)  # fmt: skip
        assert reused.tracks_reused == 4
        assert_same_cache(tmp_path / "whole.h5", tmp_path / "reused.h5")


def prepared(path: Path, plan: PrepareOptions, is_train: bool = False):
    """prepare_track (a decode worker's job) in this process: its result and its numpy peak."""
    prepare_track((str(path.parent / "short.wav"), "a/short", False), plan)  # imports, JIT: once
    tracemalloc.start()  # numpy reports its array buffers to tracemalloc
    try:
        track, reason = prepare_track((str(path), "a/long", is_train), plan)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert track is not None, reason
    return track, peak


def test_the_decode_worker_neither_holds_nor_sends_a_long_tracks_waveform(data, tmp_path):
    write_audio(tmp_path / "a" / "short.wav", 3.0)
    plan = PrepareOptions(10.0, 7.0, stream_seconds=LONG)
    peaks = {}
    for minutes in (3, 6):
        path = write_audio(tmp_path / "a" / f"{minutes}.wav", 60 * minutes, sr=22_050, channels=2)
        streamed, peaks[minutes] = prepared(path, plan)
    whole, whole_peak = prepared(path, replace(plan, stream_seconds=None))
    # Three minutes more audio are 11.5 MB more waveform, and no more memory here (a chunk's).
    more = 3 * 60 * 16_000 * 4
    assert abs(peaks[6] - peaks[3]) < more / 20 and peaks[6] < more < 2 * more < whole_peak, (
        peaks,
        whole_peak,
    )
    # The result goes to the main process pickled: segments and hash, no audio.
    assert streamed.streamed and streamed.views == []
    assert len(pickle.dumps(streamed)) < more / 100
    assert (streamed.duration, streamed.content_hash) == (whole.duration, whole.content_hash)
    assert streamed.segments == whole.segments


def test_an_augmented_training_track_is_prepared_whole(data):
    # Pitch shift, time stretch and noise work on a whole waveform (README: what streams).
    plan = PrepareOptions(10.0, None, augment=("noise",), copies=1, stream_seconds=LONG)
    track, _ = prepared(data / "a" / "long.wav", plan, is_train=True)
    assert not track.streamed and len(track.views) == 2
    test_track, _ = prepared(data / "a" / "long.wav", plan, is_train=False)
    assert test_track.streamed  # not augmented: a validation or test track streams


def test_the_model_side_holds_a_chunk_of_a_long_track_not_all_of_it(tmp_path):
    # No worker processes: decoding, preparing and embedding all run here, under tracemalloc.
    warm = write_audio(tmp_path / "warm" / "b" / "short.wav", 3.0).parent.parent
    api.embed(warm, tmp_path / "warm.h5", model="random-tiny", workers=0)  # imports: once
    peaks = {}
    for seconds in (80.0, 160.0):
        folder = tmp_path / f"{seconds:g}"
        write_audio(folder / "a" / "long.wav", seconds, freq=440.0)
        write_audio(folder / "b" / "short.wav", 12.0, freq=880.0)
        tracemalloc.start()
        try:
            api.embed(folder, tmp_path / f"{seconds:g}.h5", model="random-tiny", workers=0,
                      long_track_seconds=LONG)  # fmt: skip
            peaks[seconds] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    more = 80 * 16_000 * 4  # 80 s more audio: 5.1 MB more waveform, and no more memory
    assert abs(peaks[160.0] - peaks[80.0]) < more / 10 and peaks[160.0] < 2 * more, peaks
