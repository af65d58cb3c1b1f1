import json

import numpy as np
import pytest
from conftest import run_cli, write_audio

from wav2genre_cache.audio import AudioError
from wav2genre_cache.predict import Predictor, check_duration


def test_predict_prints_top_k_per_file_and_skips_bad_ones(tmp_path, dev_bundle, dev_clips):
    clips = sorted(dev_clips.glob("*/*.flac"))[:2]
    bad = tmp_path / "bad.mp3"
    bad.write_text("not audio")
    proc = run_cli(
        "predict", *map(str, clips), str(bad), "--bundle", str(dev_bundle), "--top-k", "2"
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.count(".") >= 3 for line in lines)
    assert "bad.mp3: not a decodable audio file" in proc.stderr


def test_predict_json_has_a_timeline_per_segment(tmp_path, dev_bundle, dev_clips):
    short = write_audio(tmp_path / "songs" / "short.wav", 4.0, sr=44_100, channels=2)
    clip = sorted(dev_clips.glob("jazz/*.flac"))[0]
    proc = run_cli(
        "predict", str(clip), str(short.parent), "--bundle", str(dev_bundle.parent), "--json"
    )
    results = json.loads(proc.stdout)
    assert [r["file"] for r in results] == [str(clip), str(short)]
    full, tiny = results
    labels = json.loads((dev_bundle / "bundle.json").read_text())["labels"]
    assert len(full["timeline"]) == 3 and len(full["top"]) == 3
    assert full["timeline"][1]["start"] == 10.0 and full["timeline"][1]["end"] == 20.0
    for seg in full["timeline"]:
        assert set(seg["probabilities"]) == set(labels)
        assert sum(seg["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    # A 4 s file is shorter than a segment: one segment of its own length.
    assert len(tiny["timeline"]) == 1 and tiny["timeline"][0]["end"] == 4.0


def test_batched_predictions_equal_one_at_a_time(dev_bundle, dev_clips):
    from wav2genre_cache.audio import load_track

    predictor = Predictor(dev_bundle, device="cpu")
    waves = [load_track(p).samples for p in sorted(dev_clips.glob("*/*.flac"))[:3]]
    together = predictor.predict_waveforms(waves)
    alone = [predictor.predict_waveforms([w])[0] for w in waves]
    for a, b in zip(together, alone, strict=True):
        assert a["label"] == b["label"]
        np.testing.assert_allclose(
            [t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]], atol=1e-3
        )


def test_duration_limits():
    with pytest.raises(AudioError, match="the limit is 1 minutes"):
        check_duration(np.zeros(16_000 * 61, np.float32), "long.wav", 60)
    with pytest.raises(AudioError, match="too short"):
        check_duration(np.zeros(8_000, np.float32), "short.wav", 60)
