"""The Python API: the README's session runs as written, and the API answers as the command does."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT, run_cli

import wav2genre_cache as w2g
from wav2genre_cache.audio.decode import SAMPLE_RATE, waveform_from_array
from wav2genre_cache.errors import AudioError


def readme_python_blocks() -> list[str]:
    """The ```python blocks of the README's "From Python" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### From Python", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.slow
def test_the_readme_python_session_runs_as_written(dev_clips, tmp_path, capsys):
    blocks = readme_python_blocks()
    assert len(blocks) == 1 and "w2g.load_bundle" in blocks[0]
    (tmp_path / "music").symlink_to(dev_clips, target_is_directory=True)
    # The real weights take a minute to embed 60 clips; the untrained model is the same code.
    code = blocks[0].replace('"pip:whisper-base"', '"random-tiny"')
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("60 tracks;") and out[0].endswith("report.html")
    assert out[1].split()[0] in {p.name for p in dev_clips.iterdir()}  # a genre
    assert "'score':" in out[1] and "'scores':" in out[2]
    rock = sorted((dev_clips / "rock").glob("*"))
    rock_lines = [line.split() for line in out[-1 - len(rock) : -1]]
    assert [f for f, _ in rock_lines] == [f"music/rock/{p.name}" for p in rock]
    assert {label for _, label in rock_lines} <= {p.name for p in dev_clips.iterdir()}
    assert out[-1].startswith("not-a-song.mp3 not-a-song.mp3: does not exist")


def test_the_api_answers_as_predict_does(dev_bundle, dev_clips):
    clip = sorted(dev_clips.glob("reggae/*.flac"))[0]
    expected = json.loads(
        run_cli("predict", str(clip), "--bundle", str(dev_bundle), "--json").stdout
    )
    classifier = w2g.load_bundle(dev_bundle)
    song = classifier.classify(clip)
    assert song.file == str(clip) and song.error is None
    assert song.labels == [
        {"label": t["label"], "score": t["probability"]} for t in expected[0]["top"]
    ]
    assert [s["scores"] for s in song.timeline] == [
        s["probabilities"] for s in expected[0]["timeline"]
    ]
    # The same song as an array at its own rate, stereo: the decoder's answer.
    samples, rate = sf.read(clip, dtype="float32")
    stereo = np.stack([samples, samples], axis=1)
    from_array = classifier.classify(stereo, sample_rate=rate)
    assert from_array.label == song.label
    np.testing.assert_allclose(
        [x["score"] for x in from_array.labels], [x["score"] for x in song.labels], atol=2e-3
    )
    assert classifier.describe()["labels"] == classifier.labels


def test_a_folder_is_labelled_file_by_file_and_bad_files_do_not_stop_it(
    dev_bundle, dev_clips, tmp_path
):
    bad = tmp_path / "broken.mp3"
    bad.write_text("not audio")
    classifier = w2g.load_bundle(dev_bundle.parent)  # a run folder: its best/
    results = list(classifier.classify_many([dev_clips / "blues", bad], batch=4))
    assert [r.file for r in results[:-1]] == [
        str(p) for p in sorted((dev_clips / "blues").glob("*"))
    ]
    assert all(r.label in classifier.labels for r in results[:-1])
    assert results[-1].label is None and "not a decodable audio file" in results[-1].error


def test_arrays_are_checked_and_converted_like_decoded_files():
    tone = np.sin(np.arange(44_100) / 44_100 * 2 * np.pi * 440).astype(np.float32)
    assert len(waveform_from_array(tone, 44_100)) == SAMPLE_RATE
    assert waveform_from_array(np.stack([tone, tone]), 44_100).shape == (SAMPLE_RATE,)
    with pytest.raises(AudioError, match="sample_rate"):
        waveform_from_array(tone, 0)
    with pytest.raises(AudioError, match="NaN"):
        waveform_from_array(np.full(100, np.nan), 16_000)
    with pytest.raises(AudioError, match="shape"):
        waveform_from_array(np.zeros((2, 2, 2)), 16_000)


def test_importing_the_package_loads_no_torch():
    code = "import sys, wav2genre_cache as w; w.__version__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert set(w2g.__all__) <= set(dir(w2g))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        w2g.nope  # noqa: B018
