import numpy as np
import pytest
import torch
from conftest import tone

from wav2genre_cache.encoders.backbone import BackboneError, load_backbone, resolve_dtype
from wav2genre_cache.encoders.cpu_tuning import (
    ChannelsLastFeatureEncoder,
    PackedLinear,
    onednn_available,
)
from wav2genre_cache.encoders.sources import builtin_model


def reference_pooled(model, segment: np.ndarray) -> np.ndarray:
    """What a user writes with transformers alone: feature extractor, one segment, mean over frames."""
    from transformers import Wav2Vec2FeatureExtractor

    fe = Wav2Vec2FeatureExtractor(do_normalize=True)
    x = torch.tensor(fe(segment, sampling_rate=16_000).input_values[0])[None]
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    return torch.stack([h.mean(dim=1) for h in out.hidden_states], dim=1)[0].numpy()


def max_relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest per-layer max |a - b| / max |b|."""
    return float(max(np.abs(a[i] - b[i]).max() / np.abs(b[i]).max() for i in range(b.shape[0])))


@pytest.mark.parametrize("name, layers, dim", [("random-tiny", 3, 32), ("random-base", 13, 768)])
def test_batched_path_equals_the_plain_reference(name, layers, dim):
    backbone = load_backbone(name, device="cpu", dtype="float32")
    segments = np.stack([tone(4.0, freq=f, seed=i) for i, f in enumerate((220, 440, 880))])
    # The CPU path tunes the model (attention kernel): compare with an untouched one.
    plain = builtin_model(name).eval()
    batched = backbone.embed(segments)
    assert batched.shape == (3, layers, dim)
    for i, seg in enumerate(segments):
        assert max_relative_error(batched[i], reference_pooled(plain, seg)) < 1e-5


def test_bfloat16_stays_close_to_float32():
    fast = load_backbone("random-base", device="cpu", dtype="bfloat16")
    assert isinstance(fast.model.feature_extractor, ChannelsLastFeatureEncoder)
    # Packed linear layers need torch's private oneDNN ops, which some CPUs' builds lack (on a
    # 2-core AMD EPYC without AVX-512 the op is refused): there the plain layers stay.
    dense = fast.model.encoder.layers[0].feed_forward.intermediate_dense
    assert isinstance(dense, PackedLinear) == onednn_available()
    exact = load_backbone("random-base", device="cpu", dtype="float32")
    seg = tone(3.0, freq=330)[None]
    assert max_relative_error(fast.embed(seg)[0], exact.embed(seg)[0]) < 2e-2


def test_builtins_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = builtin_model("random-tiny")
    after = torch.rand(1)
    b = builtin_model("random-tiny")
    assert torch.equal(before, after)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_local_ctc_checkpoint_loads_as_the_bare_encoder(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config = builtin_model("random-tiny").config
    ctc = Wav2Vec2ForCTC(Wav2Vec2Config(**{**config.to_dict(), "vocab_size": 32}))
    ctc.save_pretrained(tmp_path / "ctc")
    backbone = load_backbone(str(tmp_path / "ctc"), device="cpu", dtype="float32")
    assert type(backbone.model).__name__ == "Wav2Vec2Model"
    seg = tone(2.0)[None]
    ref = reference_pooled(ctc.wav2vec2.eval(), seg[0])
    assert max_relative_error(backbone.embed(seg)[0], ref) < 1e-5
    assert len(backbone.revision) == 16  # content hash of the directory


def test_hubert_loads_through_the_same_code(tmp_path):
    from transformers import HubertConfig, HubertModel

    cfg = HubertConfig(**builtin_model("random-tiny").config.to_dict())
    HubertModel(cfg).save_pretrained(tmp_path / "hubert")
    backbone = load_backbone(str(tmp_path / "hubert"), device="cpu")
    assert backbone.embed(tone(1.5)[None]).shape == (1, 3, 32)


def test_default_model_offline_gives_a_message_that_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(BackboneError) as info:
        load_backbone("facebook/wav2vec2-base-960h", device="cpu")
    message = str(info.value)
    assert "facebook/wav2vec2-base-960h" in message
    assert "internet" in message and "save_pretrained" in message and "--model DIR" in message
    assert message.count("numbers mean nothing).") == 1  # the untrained built-in, said as such
    from wav2genre_cache.encoders.ct2.whisper import PIP_MODELS, pip_model_files

    try:
        pip_model_files(PIP_MODELS["pip:whisper-base"])
    except BackboneError:
        assert "pip:whisper-base" not in message  # not installed: not offered
    else:  # the real weights that need no download are offered first
        assert "Real pretrained weights that need no download are installed: `--model " in message
        assert message.index("pip:whisper-base") < message.index("random-tiny")


def test_not_a_model_directory(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(BackboneError, match="not a loadable model directory"):
        load_backbone(str(tmp_path / "junk"), device="cpu")


def test_normalize_on_device_matches_the_numpy_path():
    from wav2genre_cache.audio.decode import normalize_segments
    from wav2genre_cache.encoders.backbone import normalize_on_device

    batch = np.stack([tone(2.0, freq=220) * 5 + 0.3, np.zeros(32_000, np.float32)])
    got = normalize_on_device(torch.from_numpy(batch)).numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, normalize_segments(batch), atol=1e-5)


# ---- reduced precision is checked against float32 before use ---------------------------------


@pytest.fixture
def precision_cache(tmp_path, monkeypatch):
    """A fresh place for the remembered precision checks."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "wav2genre" / "precision_checks.json"


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_reduced_precision_is_never_silently_wrong(dtype, precision_cache):
    # random-tiny's grouped position convolution is 0.95 off in bfloat16 on Intel AMX: before
    # the check, its embeddings under --dtype auto were 19% off float32 there.
    notes = []
    fast = load_backbone("random-tiny", device="cpu", dtype=dtype, log=notes.append)
    exact = load_backbone("random-tiny", device="cpu", dtype="float32")
    seg = tone(3.0, freq=330)[None]
    assert max_relative_error(fast.embed(seg)[0], exact.embed(seg)[0]) < 2e-2
    assert len(notes) <= 1  # a fallback is said in one line
    if fast.dtype != resolve_dtype(dtype, torch.device("cpu")):
        assert notes and notes[0].endswith("using float32 instead")


def kernel_safe_model_dir(tmp_path) -> str:
    """A tiny model whose bfloat16 kernels are right on every CPU (16 channels per group)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = {**builtin_model("random-tiny").config.to_dict(), "num_conv_pos_embedding_groups": 2}
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**config)).save_pretrained(tmp_path / "safe")
    return str(tmp_path / "safe")


def test_a_wrong_fast_path_falls_back_to_the_next_and_is_remembered(
    tmp_path, monkeypatch, precision_cache
):
    import wav2genre_cache.encoders.backbone as bb

    real_tune = bb.tune_for_cpu

    def broken_tune(model):  # a tuned bfloat16 kernel that computes the wrong thing
        real_tune(model)
        if next(model.parameters()).dtype != torch.bfloat16:
            return
        with torch.no_grad():
            model.encoder.layer_norm.bias.add_(1.0)

    probes = []
    real_probe = bb.probe_signal
    monkeypatch.setattr(bb, "tune_for_cpu", broken_tune)
    monkeypatch.setattr(bb, "probe_signal", lambda *a: probes.append(1) or real_probe(*a))
    model_dir = kernel_safe_model_dir(tmp_path)
    notes = []
    backbone = load_backbone(model_dir, device="cpu", dtype="bfloat16", log=notes.append)
    assert backbone.dtype == torch.bfloat16
    assert not isinstance(backbone.model.feature_extractor, ChannelsLastFeatureEncoder)
    assert len(notes) == 1 and "using bfloat16 (transformers' kernels) instead" in notes[0]
    assert precision_cache.is_file()
    checked = len(probes)
    assert checked == 1  # one probe, for the float32 reference and every candidate
    again = load_backbone(model_dir, device="cpu", dtype="bfloat16", log=notes.append)
    assert len(probes) == checked  # remembered: no second check for this model and machine
    assert again.dtype == torch.bfloat16 and len(notes) == 2
    exact = load_backbone(model_dir, device="cpu", dtype="float32")
    seg = tone(2.0)[None]
    assert max_relative_error(again.embed(seg)[0], exact.embed(seg)[0]) < 2e-2


def test_float32_is_the_last_resort(monkeypatch, precision_cache):
    import wav2genre_cache.encoders.backbone as bb

    monkeypatch.setattr(bb, "PRECISION_TOLERANCE", 0.0)  # no reduced precision can pass
    notes = []
    backbone = load_backbone("random-tiny", device="cpu", dtype="bfloat16", log=notes.append)
    assert backbone.dtype == torch.float32
    assert len(notes) == 1 and notes[0].endswith("using float32 instead")


def test_embeddings_do_not_depend_on_the_batch():
    # oneDNN picks bfloat16 kernels by shape: batched, a row moved by 1e-3 with its batch.
    backbone = load_backbone("random-base", device="cpu", dtype="bfloat16")
    segments = np.stack([tone(0.5, freq=f, seed=i) for i, f in enumerate((220, 440, 660))])
    together = backbone.embed(segments)
    for i in range(len(segments)):
        np.testing.assert_array_equal(backbone.embed(segments[i : i + 1])[0], together[i])
    np.testing.assert_array_equal(backbone.embed(segments[1:])[0], together[1])


def test_loading_a_model_leaves_the_allocator_alone(monkeypatch):
    # glibc's allocator settings are process-wide: the server and any importer must keep theirs.
    import wav2genre_cache.encoders.cpu_tuning as ct

    calls = []
    monkeypatch.setattr(ct, "keep_freed_memory", lambda: calls.append(1))
    load_backbone("random-tiny", device="cpu", dtype="bfloat16")
    load_backbone("random-tiny", device="cpu", dtype="float32")
    assert calls == []


# ---- messages a user can act on ----------------------------------------------------------------


def test_a_model_path_that_does_not_exist_says_so(tmp_path):
    for given in ("/nonexistent", str(tmp_path / "no" / "such" / "model"), "./missing"):
        with pytest.raises(BackboneError) as info:
            load_backbone(given, device="cpu")
        assert f"--model {given}: no such directory" in str(info.value)
        assert "internet" not in str(info.value)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(BackboneError, match="a file, not a model directory"):
        load_backbone(str(tmp_path / "weights.bin"), device="cpu")


def test_an_unreachable_hub_fails_fast_with_one_message(tmp_path, monkeypatch, capfd):
    import socket
    import time

    with socket.socket() as s:  # a local port nobody listens on: the hub "cannot be reached"
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    start = time.perf_counter()
    with pytest.raises(BackboneError) as info:
        load_backbone("facebook/wav2vec2-base-960h", device="cpu")
    assert time.perf_counter() - start < 5  # it took 27 s of retries before
    message = str(info.value)
    assert "HF_HUB_OFFLINE=1" in message and "about 360 MB" in message
    assert "--model DIR" in message
    assert "Retrying" not in capfd.readouterr().err
    with pytest.raises(BackboneError) as info:
        load_backbone("openai/whisper-base", device="cpu")
    assert "360 MB" not in str(info.value)  # a size is given only where it is known
