"""predict on a long file decodes and embeds it a chunk at a time: the same answer as the whole
file at once (benchmarks/long_files.py measures the memory)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_audio

from wav2genre_cache.audio.decode import load_track
from wav2genre_cache.inference import predict as predict_module
from wav2genre_cache.inference.predict import Predictor


@pytest.fixture(scope="module")
def predictor(dev_bundle) -> Predictor:
    return Predictor(dev_bundle)


def _close(a: dict, b: dict) -> None:
    assert a["duration"] == b["duration"] and a["label"] == b["label"]
    assert [(s["start"], s["end"]) for s in a["timeline"]] == [
        (s["start"], s["end"]) for s in b["timeline"]
    ]
    pa = np.array([list(s["probabilities"].values()) for s in a["timeline"]])
    pb = np.array([list(s["probabilities"].values()) for s in b["timeline"]])
    assert np.allclose(pa, pb, atol=2e-4)
    assert np.allclose(
        [t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]], atol=2e-4
    )


@pytest.mark.parametrize("chunk_seconds", [10.0, 35.0, 1000.0])
def test_a_streamed_file_gets_the_whole_files_prediction(predictor, tmp_path, chunk_seconds):
    # 44.1 kHz: the resampler's blocks are the whole-file decode's blocks too.
    path = write_audio(tmp_path / "long.wav", 127.3, sr=44_100, freq=330.0)
    whole = predictor.predict_waveforms([load_track(path).samples], top_k=3)[0]
    streamed = predictor.predict_stream(path, top_k=3, chunk_seconds=chunk_seconds)
    assert len(streamed["timeline"]) > 5
    _close(streamed, whole)


def test_predict_paths_streams_long_files_and_names_one_over_the_limit(
    predictor, tmp_path, monkeypatch
):
    monkeypatch.setattr(predict_module, "LONG_SECONDS", 60.0)
    monkeypatch.setattr(predict_module, "CHUNK_SECONDS", 20.0)
    long_file = write_audio(tmp_path / "long.wav", 95.0, freq=500.0)
    short_file = write_audio(tmp_path / "short.wav", 12.0, freq=500.0)
    calls = []
    real = Predictor.predict_stream
    monkeypatch.setattr(
        Predictor, "predict_stream", lambda self, *a, **k: calls.append(a[0]) or real(self, *a, **k)
    )
    long_entry, short_entry, too_long = predictor.predict_paths(
        [long_file, short_file, long_file], max_seconds=None
    )[:2] + predictor.predict_paths([long_file], max_seconds=90.0)
    assert calls == [long_file, long_file, long_file] and "error" not in long_entry
    assert "error" not in short_entry and short_entry["file"] == str(short_file)
    _close(long_entry, predictor.predict_waveforms([load_track(long_file).samples])[0])
    assert "the limit is 1.5 minutes" in too_long["error"]
