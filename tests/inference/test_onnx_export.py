"""wav2genre export --onnx: onnxruntime gives what the torch path gives, without torch.

Bundles are real: heads fitted on random-tiny's (or a tiny random Whisper's) embeddings of
synthetic tones, written by write_bundle. Measured on a 2-core AMD EPYC: raw and calibrated
probabilities within 2.1e-6 of torch (fcnn; 4e-7 logreg, 1.2e-7 xgb); asserted at 1e-5 for
every exported head (logreg, rf, xgb, fcnn, svm, attention; multi-label logreg, svm, rf, xgb
and attention; cnn, lstm, cnn-lstm; fine-tuned). The manifests' checked_difference (probe
signal) of this file's bundles: attention 5.1e-7, cnn 6.0e-8, lstm 3.0e-8, cnn-lstm 8.9e-8,
multi-label xgb 6.4e-8, multi-label rf 0. int8 is held
to INT8_ATOL against float32; its effect on real music is in benchmarks/onnx_runtime.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli, write_audio

from wav2genre_cache.errors import BundleError
from wav2genre_cache.inference.onnx_export import export_onnx, torch_segment_probabilities
from wav2genre_cache.inference.onnx_runtime import OnnxPredictor
from wav2genre_cache.inference.predict import Predictor

ATOL = 1e-5  # float32 both ways: the largest difference measured was 2.1e-6
INT8_ATOL = 0.05  # int8 weights against float32
SECONDS, HOP = 2.0, 1.5
TEMPERATURE = {"method": "temperature", "multi_label": False, "temperature": 1.7, "isotonic": None}


def _tones(n: int = 24, seconds: float = SECONDS) -> tuple[np.ndarray, np.ndarray]:
    """n segments of three pitches with noise, and their label (0, 1, 2)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16_000)) / 16_000
    labels = np.arange(n) % 3
    waves = [
        0.3 * np.sin(2 * np.pi * (200 * (c + 1) + 7 * k) * t) + 0.05 * rng.standard_normal(t.size)
        for k, c in enumerate(labels)
    ]
    return np.stack(waves).astype(np.float32), labels


@pytest.fixture(scope="module")
def tiny_embeddings() -> np.ndarray:
    """random-tiny's per-layer embeddings [segments, layers, dim] of the tones."""
    from wav2genre_cache.encoders.backbone import load_backbone

    backbone = load_backbone("random-tiny", device="cpu", dtype="float32")
    return backbone.embed(_tones()[0])


def _bundle(
    root: Path, name: str, embeddings: np.ndarray, y, attrs: dict, layer: int = 1, **kw
) -> Path:
    """A bundle of head `name` fitted on one layer (1 unless said) of the embeddings."""
    from wav2genre_cache.heads.registry import make_head
    from wav2genre_cache.store.bundles import BundleScoring, write_bundle

    head = make_head(name).fit(embeddings[:, layer, :], y)
    labels = [f"label{i}" for i in range(3)]
    return write_bundle(root / name, head, name, params={}, layer=layer, labels=labels,
                        feature_set="encoder", cache_attrs=attrs, metrics={},
                        scoring=BundleScoring(**kw))  # fmt: skip


TINY = {
    "sample_rate": 16_000,
    "segment_seconds": SECONDS,
    "hop_seconds": HOP,
    "backbone": "random-tiny",
    "backbone_revision": "seed0",
    "frontend": "waveform",
    "window": "alone",
    "dtype": "float32",
}


def _assert_same_as_torch(bundle: Path, export: Path) -> None:
    """Raw and calibrated per-segment probabilities, and the results, as torch gives them."""
    torch_path, onnx = Predictor(bundle, device="cpu"), OnnxPredictor(export)
    song = 0.2 * np.sin(np.linspace(0, 9000, int(16_000 * 6.3))).astype(np.float32)
    for wave in (song, song[:24_000]):  # hops and an end-anchored tail; under one segment
        want = torch_segment_probabilities(torch_path, wave)
        got = onnx.head_probabilities(onnx.embed(wave)[2])
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
        np.testing.assert_allclose(
            onnx.calibrate(got), torch_path.calibrator.apply(want), atol=ATOL, rtol=0
        )
        (a,), (b,) = torch_path.predict_waveforms([wave]), onnx.predict_waveforms([wave])
        assert a["label"] == b["label"] and len(a["timeline"]) == len(b["timeline"])
        for x, y in zip(a["top"], b["top"], strict=True):
            assert x["label"] == y["label"] and abs(x["probability"] - y["probability"]) <= 1e-4


CONVERTERS = {"logreg": "skl2onnx", "rf": "skl2onnx", "fcnn": "torch.onnx",
              "xgb": "onnxmltools", "svm": None, "attention": "torch.onnx"}  # fmt: skip


@pytest.mark.parametrize("head", list(CONVERTERS))
def test_onnx_export_predicts_what_torch_predicts(tmp_path, tiny_embeddings, head):
    bundle = _bundle(tmp_path, head, tiny_embeddings, _tones()[1], TINY, calibration=TEMPERATURE)
    export = export_onnx(bundle, tmp_path / "export", log=str)
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["layer"] == 1 and manifest["labels"] == ["label0", "label1", "label2"]
    assert manifest["segment_seconds"] == SECONDS and manifest["hop_seconds"] == HOP
    assert manifest["calibration"] == TEMPERATURE and manifest["checked_difference"] <= ATOL
    assert manifest["head_runtime"]["converter"] == CONVERTERS[head]
    head_file = "head.npz" if head == "svm" else "head.onnx"  # the SVM runs in numpy
    # Every file checksummed; nothing pickled; random-tiny's layer 2 is not in the graph.
    assert set(manifest["files"]) == {"encoder.onnx", head_file}
    assert sorted(p.name for p in export.iterdir()) == ["encoder.onnx", head_file, "manifest.json"]
    import onnx

    graph = onnx.load(str(export / "encoder.onnx")).graph
    names = [init.name for init in graph.initializer]
    assert any("encoder.layers.0." in n for n in names)
    assert not any("encoder.layers.1." in n for n in names)
    _assert_same_as_torch(bundle, export)


def test_a_layer_0_bundle_exports_its_encoders_first_hidden_state(tmp_path, tiny_embeddings):
    # transformers records no hidden state of an encoder with no layer: one is kept.
    bundle = _bundle(tmp_path, "logreg", tiny_embeddings, _tones()[1], TINY, layer=0)
    export = export_onnx(bundle, tmp_path / "export", log=str)
    assert json.loads((export / "manifest.json").read_text())["layer"] == 0
    _assert_same_as_torch(bundle, export)


@pytest.mark.parametrize(
    "head,kind", [("logreg", "linear"), ("svm", "svm"), ("rf", "forest"), ("xgb", "boosted")]
)
def test_a_multi_label_head_runs_in_numpy_with_its_thresholds(
    tmp_path, tiny_embeddings, head, kind
):
    tags = np.eye(3, dtype=int)[_tones()[1]]
    tags[::4, 2] = 1  # some segments carry two tags
    bundle = _bundle(tmp_path, head, tiny_embeddings, tags, TINY, multi_label=True,
                     thresholds=[0.4, 0.5, 0.6])  # fmt: skip
    export = export_onnx(bundle, tmp_path / "export", log=str)
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["head_runtime"] == {"file": "head.npz", "runtime": "numpy", "kind": kind,
                                        "converter": None}  # fmt: skip
    _assert_same_as_torch(bundle, export)
    (result,) = OnnxPredictor(export).predict_waveforms([_tones()[0][0]])
    assert all(t["probability"] >= t["threshold"] for t in result["tags"])
    if head in ("rf", "xgb"):  # a tag no training row carries
        tags[:, 1] = 0
        bundle = _bundle(tmp_path, head, tiny_embeddings, tags, TINY, multi_label=True)
        _assert_same_as_torch(bundle, export_onnx(bundle, tmp_path / "never", log=str))


def test_a_whisper_bundle_exports_with_its_log_mel_and_packed_windows(tmp_path, whisper_dir):
    from wav2genre_cache.encoders.backbone import load_backbone

    backbone = load_backbone(whisper_dir, device="cpu", dtype="float32", window="packed")
    waves, y = _tones(12)
    attrs = TINY | {"backbone": whisper_dir, "backbone_revision": backbone.revision,
                    "frontend": "logmel", "window": "packed"}  # fmt: skip
    bundle = _bundle(tmp_path, "logreg", backbone.embed(waves), y, attrs, calibration=TEMPERATURE)
    export = export_onnx(bundle, tmp_path / "export", log=str)
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["frontend"]["kind"] == "logmel" and manifest["frontend"]["window"] == "packed"
    assert "mel_filters.npy" in manifest["files"]
    _assert_same_as_torch(bundle, export)


def test_an_export_whose_file_changed_is_refused_and_so_is_an_altered_bundle(
    tmp_path, tiny_embeddings
):
    bundle = _bundle(tmp_path, "logreg", tiny_embeddings, _tones()[1], TINY)
    export = export_onnx(bundle, tmp_path / "export", log=str)
    head = export / "head.onnx"
    head.write_bytes(head.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="head.onnx: the file was altered after export"):
        OnnxPredictor(export)
    skops = bundle / "head.skops"
    skops.write_bytes(skops.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="checksum mismatch"):
        export_onnx(bundle, tmp_path / "again", log=str)


def test_export_and_predict_runtime_onnx_on_the_command_line(tmp_path, tiny_embeddings):
    bundle = _bundle(tmp_path, "logreg", tiny_embeddings, _tones()[1], TINY)
    song = write_audio(tmp_path / "song.wav", 5.0, sr=44_100, channels=2)
    run_cli("export", str(bundle), "--onnx", str(tmp_path / "export"))
    args = ("predict", str(song), "--json", "--bundle")
    torch_run = json.loads(run_cli(*args, str(bundle)).stdout)
    onnx_run = json.loads(run_cli(*args, str(tmp_path / "export"), "--runtime", "onnx").stdout)
    assert [r["label"] for r in onnx_run] == [r["label"] for r in torch_run]
    for a, b in zip(torch_run[0]["top"], onnx_run[0]["top"], strict=True):
        assert abs(a["probability"] - b["probability"]) <= 1e-4


_WITHOUT_TORCH = """
import sys
for name in ("torch", "transformers", "sklearn", "scipy", "xgboost"):
    sys.modules[name] = None  # any import of them now fails
from wav2genre_cache.inference.onnx_runtime import OnnxPredictor
(r,) = OnnxPredictor(sys.argv[1]).predict_paths([sys.argv[2]])
print(r["label"])
"""


def test_the_onnx_runtime_labels_a_clip_without_torch_transformers_or_sklearn(
    tmp_path, tiny_embeddings
):
    bundle = _bundle(tmp_path, "logreg", tiny_embeddings, _tones()[1], TINY)
    export = export_onnx(bundle, tmp_path / "export", log=str)
    song = write_audio(tmp_path / "song.flac", 4.0)
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, str(export), str(song)],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == Predictor(bundle, device="cpu").predict_paths([song])[0]["label"]


_CLI_WITHOUT_TORCH = """
import sys
for name in ("torch", "transformers", "sklearn", "scipy", "xgboost"):
    sys.modules[name] = None  # any import of them now fails
from wav2genre_cache.cli import main
sys.argv = ["wav2genre", "predict", *sys.argv[1:], "--runtime", "onnx"]
main()
"""


def test_predict_runtime_onnx_on_the_command_line_loads_no_torch(tmp_path, tiny_embeddings):
    # The command a deployment runs, to stdout and to an output file, imports no model library.
    bundle = _bundle(tmp_path, "logreg", tiny_embeddings, _tones()[1], TINY)
    export = export_onnx(bundle, tmp_path / "export", log=str)
    song = write_audio(tmp_path / "song.flac", 4.0)
    want = Predictor(bundle, device="cpu").predict_paths([song])[0]["label"]
    labels = []
    for extra in (["--json"], ["--output", str(tmp_path / "labels.jsonl")]):
        proc = subprocess.run(
            [sys.executable, "-c", _CLI_WITHOUT_TORCH, str(song), "--bundle", str(export), *extra],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        labels += [r["label"] for r in json.loads(proc.stdout)] if "--json" in extra else []
    rows = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert labels + [r["label"] for r in rows] == [want, want]


@pytest.mark.slow
@pytest.mark.skipif(
    bool(os.environ.get("WAV2GENRE_SKIP_FRESH_VENV")),
    reason="WAV2GENRE_SKIP_FRESH_VENV is set (a CI without PyPI access sets it)",
)
def test_the_onnx_runtime_runs_in_a_fresh_venv_of_four_packages(tmp_path, tiny_embeddings):
    # A plain venv (not --system-site-packages): numpy, soundfile, soxr, onnxruntime from PyPI.
    bundle = _bundle(tmp_path, "logreg", tiny_embeddings, _tones()[1], TINY)
    export = export_onnx(bundle, tmp_path / "export", log=str)
    song = write_audio(tmp_path / "song.wav", 4.0)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    install = subprocess.run([*pip, "numpy", "soundfile", "soxr", "onnxruntime"],
                             capture_output=True, text=True)  # fmt: skip
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([python, "-c", _WITHOUT_TORCH, str(export), str(song)],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == Predictor(bundle, device="cpu").predict_paths([song])[0]["label"]


def test_export_quantize_int8_on_the_command_line(tmp_path, tiny_embeddings):
    bundle = _bundle(tmp_path, "logreg", tiny_embeddings, _tones()[1], TINY)
    run_cli("export", str(bundle), "--onnx", str(tmp_path / "f32"))
    run_cli("export", str(bundle), "--onnx", str(tmp_path / "int8"), "--quantize", "int8")
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert manifest["encoder"]["dtype"] == "int8" and manifest["quantization"]["ops"] == [
        "MatMul",
        "Gemm",
    ]
    assert manifest["checked_difference"] <= ATOL  # the float32 export, checked before quantizing
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8" / "encoder.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops
    size = (tmp_path / "int8" / "encoder.onnx").stat().st_size
    assert size < (tmp_path / "f32" / "encoder.onnx").stat().st_size  # random-tiny: mostly convs
    # int8 moves random-tiny's probabilities by up to INT8_ATOL (measured below it).
    f32, int8 = OnnxPredictor(tmp_path / "f32"), OnnxPredictor(tmp_path / "int8")
    wave = _tones()[0][0]
    a, b = f32.head_probabilities(f32.embed(wave)[2]), int8.head_probabilities(int8.embed(wave)[2])
    assert np.abs(a - b).max() <= INT8_ATOL
    assert abs(manifest["quantization"]["probe_difference"]) <= INT8_ATOL
    wrong = run_cli("export", str(bundle), "--onnx", str(tmp_path / "x"), "--quantize", "int4",
                    check=False)  # fmt: skip
    assert wrong.returncode != 0 and "unknown --quantize 'int4'" in wrong.stderr


def test_the_attention_head_exports_over_a_tracks_segments_multi_label_too(
    tmp_path, tiny_embeddings
):
    from wav2genre_cache.heads.registry import make_head
    from wav2genre_cache.store.bundles import BundleScoring, write_bundle

    y = _tones()[1]
    tracks = np.arange(len(y)) // 2  # two segments a track, one label (a tag row) each
    tags = np.eye(3, dtype=int)[y]
    attention = make_head("attention", max_epochs=2).fit(tiny_embeddings[:, 1, :], tags,
                                                         groups=tracks)  # fmt: skip
    bundle = write_bundle(tmp_path / "attention", attention, "attention", params={}, layer=1,
                          labels=["a", "b", "c"], feature_set="encoder", cache_attrs=TINY,
                          metrics={}, scoring=BundleScoring(multi_label=True))  # fmt: skip
    export = export_onnx(bundle, tmp_path / "export", log=str)
    assert json.loads((export / "manifest.json").read_text())["head_runtime"]["rows"] == "one track"
    _assert_same_as_torch(bundle, export)


@pytest.mark.parametrize("head", ["cnn", "lstm", "cnn-lstm"])
def test_a_spectrogram_head_exports_with_its_log_mel_front_end_and_no_encoder(tmp_path, head):
    from wav2genre_cache.audio.logmel import log_mel_image, logmel_frames, mel_filters
    from wav2genre_cache.heads.registry import make_head
    from wav2genre_cache.inference.onnx_spectrogram import SpectrogramReference
    from wav2genre_cache.store.bundles import BundleScoring, write_bundle

    waves, y = _tones(12)
    frames = logmel_frames(SECONDS)
    rows = np.stack([log_mel_image(w, frames, mel_filters()) for w in waves])  # stage one's
    fitted = make_head(head, max_epochs=1, channels=8, hidden=8).fit(rows, y)
    bundle = write_bundle(tmp_path / head, fitted, head, params={}, layer=0,
                          labels=["a", "b", "c"], feature_set="logmel", cache_attrs=TINY,
                          metrics={}, scoring=BundleScoring(calibration=TEMPERATURE))  # fmt: skip
    export = export_onnx(bundle, tmp_path / "export", log=str)
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["encoder"] is None and manifest["frontend"]["kind"] == "spectrogram"
    assert sorted(manifest["files"]) == ["head.onnx", "logmel_filters.npy"]
    torch_path, onnx = SpectrogramReference(bundle), OnnxPredictor(export)
    song = 0.2 * np.sin(np.linspace(0, 9000, int(16_000 * 6.3))).astype(np.float32)
    for wave in (song, song[:24_000]):  # hops and an end-anchored tail; under one segment
        want = torch_segment_probabilities(torch_path, wave)
        got = onnx.head_probabilities(onnx.embed(wave)[2])
        assert got.shape == (len(onnx.embed(wave)[0]), 3)
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
        np.testing.assert_allclose(
            onnx.calibrate(got), torch_path.calibrator.apply(want), atol=ATOL, rtol=0
        )
    with pytest.raises(Exception, match="no encoder to quantize"):
        export_onnx(bundle, tmp_path / "int8", log=str, quantize="int8")
    if head == "cnn":  # the log-mel front end needs no librosa (nor scipy, torch, sklearn)
        song = write_audio(tmp_path / "song.wav", 4.0)
        proc = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, str(export), str(song)],
                              capture_output=True, text=True, cwd=ROOT)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == onnx.predict_paths([song])[0]["label"]


def test_heads_without_an_export_are_refused_naming_the_head_and_what_exports(
    tmp_path, tiny_embeddings
):
    from wav2genre_cache.errors import ExportError
    from wav2genre_cache.heads.registry import make_head
    from wav2genre_cache.store.bundles import write_bundle

    y = _tones()[1]
    handcrafted = make_head("logreg").fit(tiny_embeddings[:, 1, :], y)
    bundle = write_bundle(tmp_path / "hand", handcrafted, "logreg", params={}, layer=0,
                          labels=["a", "b", "c"], feature_set="handcrafted", cache_attrs=TINY,
                          metrics={})  # fmt: skip
    with pytest.raises(
        ExportError, match="the logreg head reads the handcrafted feature set; .*svm"
    ):
        export_onnx(bundle, tmp_path / "x", log=str)


def test_fine_tuned_bundles_export_their_own_encoder_and_head(tmp_path, whisper_dir):
    from wav2genre_cache.finetune.options import FinetuneOptions
    from wav2genre_cache.finetune.run import finetune

    # A waveform encoder mixing every layer by learned weights (a fixture of version 0.1.0)...
    mixed = ROOT / "tests" / "fixtures" / "v0.1.0" / "run" / "bundles" / "finetuned"
    export = export_onnx(mixed, tmp_path / "mixed", log=str)
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["layer"] == -1 and manifest["head_runtime"]["converter"] == "torch.onnx"
    _assert_same_as_torch(mixed, export)
    # ...and a Whisper encoder pooled on one layer over packed windows, fine-tuned here.
    rows = ["path,label,split"]
    for li, label in enumerate(("a", "b")):
        for i in range(3):
            p = write_audio(tmp_path / "d" / f"{label}{i}.wav", 6.0, freq=300.0 * (li + 1), seed=i)
            rows.append(f"{p},{label},{'train' if i < 2 else 'test'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    options = FinetuneOptions(data=str(tmp_path / "m.csv"), out=str(tmp_path / "run"),
                              model=whisper_dir, segment_seconds=2.0, layer="1", unfreeze="1",
                              epochs=1, batch_size=2, workers=0)  # fmt: skip
    finetune(options, progress=False)
    bundle = tmp_path / "run" / "bundles" / "finetuned"
    export = export_onnx(bundle, tmp_path / "whisper", log=str)
    assert json.loads((export / "manifest.json").read_text())["frontend"]["kind"] == "logmel"
    _assert_same_as_torch(bundle, export)
