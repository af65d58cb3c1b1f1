import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_audio

from wav2genre_cache._io import sha256_file
from wav2genre_cache.errors import AudioError
from wav2genre_cache.inference.predict import Predictor, check_duration


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
    # Hugging Face's [{label, score}]; the deprecated "top" says the same for one more version.
    assert full["labels"] == [{"label": t["label"], "score": t["probability"]} for t in full["top"]]
    assert full["timeline"][1]["start"] == 10.0 and full["timeline"][1]["end"] == 20.0
    for seg in full["timeline"]:
        assert set(seg["probabilities"]) == set(labels)
        assert sum(seg["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    # A 4 s file is shorter than a segment: one segment of its own length.
    assert len(tiny["timeline"]) == 1 and tiny["timeline"][0]["end"] == 4.0
    # Each entry says which model made it and what its test figures are, with n and interval.
    meta = json.loads((dev_bundle / "bundle.json").read_text())
    model = full["model"]
    assert model == tiny["model"]
    assert model["bundle_sha256"] == sha256_file(dev_bundle / "bundle.json")
    assert (model["head"], model["layer"]) == (meta["head"], meta["layer"])
    assert model["test_tracks"] == meta["metrics"]["test_tracks"] > 0
    low, high = model["test_track_accuracy_ci"]
    assert low <= model["test_track_accuracy"] <= high


def test_batched_predictions_equal_one_at_a_time(dev_bundle, dev_clips):
    from wav2genre_cache.audio.decode import load_track

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


def unusable_inputs(root):
    """Inputs predict cannot use, named explicitly and found inside a folder walk."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "loop_a").symlink_to("loop_b")  # a two-link loop
    (root / "loop_b").symlink_to("loop_a")
    (root / "self.wav").symlink_to("self.wav")  # a link to itself
    (root / "x.wav").mkdir()  # a folder named like audio, with no audio in it
    (root / "fake.mp3").write_text("not audio")
    (root / "broken.ogg").symlink_to("nowhere.ogg")
    songs = root / "songs"
    write_audio(songs / "tone.wav", 2.0)
    (songs / "notes.txt").write_text("no audio extension: skipped without a word")
    (songs / "loop").symlink_to("loop")  # no audio extension either: skipped without a word
    (songs / "inner.flac").symlink_to("inner.flac")
    (songs / "sub.wav").mkdir()
    explicit = ["loop_a", "loop_b", "self.wav", "x.wav", "gone.flac", "fake.mp3", "broken.ogg"]
    return [root / n for n in explicit] + [songs]


def test_expand_inputs_names_every_input_it_cannot_use(tmp_path):
    from wav2genre_cache.inference.inputs import expand_inputs

    inputs = unusable_inputs(tmp_path)
    entries = expand_inputs(inputs)
    paths = [e for e in entries if isinstance(e, Path)]
    skipped = {e.path.name: e.reason for e in entries if not isinstance(e, Path)}
    # The text file is a file: the decoder names its problem (tested through the CLI below).
    assert paths == [tmp_path / "fake.mp3", tmp_path / "songs" / "tone.wav"]
    assert skipped["loop_a"] == skipped["loop_b"] == skipped["self.wav"] == "a symlink loop"
    assert skipped["inner.flac"] == "a symlink loop"
    assert skipped["gone.flac"] == "does not exist"
    assert skipped["broken.ogg"].startswith("a broken symlink")
    assert "folder" in skipped["x.wav"] and "no audio files" in skipped["x.wav"]
    assert "folder" in skipped["sub.wav"]
    assert "notes.txt" not in skipped and "loop" not in skipped
    # In input order, so every input's line appears where the user put it.
    assert [getattr(e, "path", e).name for e in entries][:4] == [
        "loop_a",
        "loop_b",
        "self.wav",
        "x.wav",
    ]


def test_predict_reports_every_unusable_input_and_strict_fails(tmp_path, dev_bundle, dev_clips):
    from typer.testing import CliRunner

    from wav2genre_cache.cli.app import app

    def predict(*args):  # in this process: the backbone loads in a fraction of a subprocess
        return CliRunner().invoke(app, ["predict", *args, "--bundle", str(dev_bundle)])

    clip = sorted(dev_clips.glob("*/*.flac"))[0]
    inputs = [str(p) for p in [clip, *unusable_inputs(tmp_path / "in")]]
    proc = predict(*inputs)
    assert proc.exit_code == 0, proc.output  # some inputs were predicted
    assert len(proc.stdout.strip().splitlines()) == 2  # the clip and songs/tone.wav
    for name, reason in [
        ("loop_a", "a symlink loop"),
        ("loop_b", "a symlink loop"),
        ("self.wav", "a symlink loop"),
        ("songs/inner.flac", "a symlink loop"),
        ("x.wav", "a folder"),
        ("songs/sub.wav", "a folder"),
        ("gone.flac", "does not exist"),
        ("broken.ogg", "a broken symlink"),
        ("fake.mp3", "not a decodable audio file"),
    ]:
        assert f"{tmp_path / 'in' / name}: {reason}" in proc.stderr, name
    assert "notes.txt" not in proc.stderr and "songs/loop:" not in proc.stderr
    assert "9 of 11 inputs could not be used" in proc.stderr

    proc = predict(*inputs, "--json")
    results = json.loads(proc.stdout)
    errors = {r["file"]: r["error"] for r in results if "error" in r}
    assert len(errors) == 9 and len(results) == 11 and proc.exit_code == 0
    assert errors[str(tmp_path / "in" / "self.wav")].endswith("self.wav: a symlink loop")
    assert results[0]["file"] == str(clip) and "top" in results[0]

    strict = predict(*inputs, "--strict")
    assert strict.exit_code == 1 and len(strict.stdout.strip().splitlines()) == 2
    # Every input unusable: exit 1 with or without --strict.
    none = predict(*inputs[2:5])
    assert none.exit_code == 1 and "a symlink loop" in none.stderr


def test_predictions_do_not_depend_on_the_batch_size(dev_bundle, dev_clips):
    # On Intel AMX, bfloat16 gave 0.52 with --batch-size 1 and 0.53 with 2 for one clip.
    clips = sorted(dev_clips.glob("*/*.flac"))[:2]
    results = [
        Predictor(dev_bundle, device="auto", batch_size=b).predict_paths(clips, top_k=10)
        for b in (1, 2, 5)
    ]
    assert results[0] == results[1] == results[2]


def test_a_bundle_from_an_earlier_version_naming_wav2vec2_still_predicts(tmp_path, dev_bundle):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(dev_bundle, old)
    meta = json.loads((old / "bundle.json").read_text())
    assert meta["feature_set"] == "encoder"
    (old / "bundle.json").write_text(json.dumps(meta | {"feature_set": "wav2vec2"}))
    wave = np.sin(np.linspace(0, 2000, 16_000 * 12)).astype(np.float32)
    new_top = Predictor(dev_bundle, device="cpu").predict_waveforms([wave])[0]["top"]
    old_top = Predictor(old, device="cpu").predict_waveforms([wave])[0]["top"]
    assert old_top == new_top


def test_predict_and_serve_need_neither_training_stage_nor_its_libraries(dev_bundle):
    # Inference reads audio, a backbone, a bundle and its head: not the HDF5 cache (h5py,
    # pandas), nor the code of embed or train-heads. Who imports pandas or h5py is recorded:
    # scikit-learn imports pandas whenever it is installed (sklearn.utils.fixes), our code never.
    import subprocess
    import sys

    code = f"""
import sys

importers = []

class WhoImports:
    def find_spec(self, name, path=None, target=None):
        if name in ("pandas", "h5py"):
            frame = sys._getframe(1)
            while frame.f_code.co_filename.startswith("<frozen"):
                frame = frame.f_back
            importers.append((name, frame.f_globals.get("__name__", "?")))
        return None  # the usual finders find it

sys.meta_path.insert(0, WhoImports())
import numpy as np
import wav2genre_cache.inference.server
from wav2genre_cache.inference.predict import Predictor
wave = np.sin(np.linspace(0, 2000, 16_000 * 12)).astype(np.float32)
print(Predictor({str(dev_bundle)!r}, device="cpu").predict_waveforms([wave])[0]["label"])
stages = ("train", "embed", "cache", "features", "datasets", "report")
print(sorted(m for m in sys.modules if m.removeprefix("wav2genre_cache.") in stages))
print(sorted({{f"{{name}} by {{by.partition('.')[0]}}" for name, by in importers}}))
print("h5py" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    label, stages, importers, h5py = proc.stdout.strip().splitlines()
    assert label in json.loads((dev_bundle / "bundle.json").read_text())["labels"]
    assert stages == "[]"
    assert importers == "['pandas by sklearn']" and h5py == "False"


def test_heads_over_all_layers_and_over_a_tracks_segments_predict_songs(tmp_path, dev_bundle):
    # The registry tells predict what a head reads: every layer at once (fcnn-weighted) or one
    # layer of all the track's segments (attention, one answer for the whole track).
    from wav2genre_cache.stage_two.train import train_heads

    cache = dev_bundle.parent / "cache.h5"
    train_heads(cache, tmp_path, heads=["fcnn-weighted", "attention"], layers="1", log=str)
    wave = np.sin(np.linspace(0, 3000, 16_000 * 25)).astype(np.float32)
    for head in ("fcnn-weighted", "attention"):
        predictor = Predictor(tmp_path / "bundles" / head, device="cpu")
        (r,) = predictor.predict_waveforms([wave], top_k=2)
        assert r["label"] in predictor.labels and len(r["timeline"]) >= 2
        probabilities = [t["probabilities"] for t in r["timeline"]]
        assert all(abs(sum(p.values()) - 1) < 1e-3 for p in probabilities)
        if head == "attention":
            assert all(p == probabilities[0] for p in probabilities)


def test_max_minutes_skips_a_longer_file_by_name_and_bounds_its_decode(tmp_path, dev_bundle):
    import tracemalloc

    from wav2genre_cache.inference.predict import Predictor

    long = write_audio(tmp_path / "long.flac", 180.0)  # 3 minutes
    short = write_audio(tmp_path / "short.flac", 12.0)
    predictor = Predictor(dev_bundle, device="cpu")
    tracemalloc.start()
    results = predictor.predict_paths([long, short], max_seconds=60)
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    # Refused from its header, before any of it is decoded.
    assert results[0] == {
        "file": str(long),
        "error": f"{long}: 3.0 minutes of audio; the limit is 1 minutes",
    }
    assert "top" in results[1]
    assert peak_mb < 40  # the long file's decode stopped at the limit (3 min at 16 kHz: 11 MB)
    refused = run_cli("predict", str(short), "--bundle", str(dev_bundle), "--max-minutes", "0",
                      check=False)  # fmt: skip
    assert refused.returncode == 2 and "--max-minutes must be positive" in refused.stderr
