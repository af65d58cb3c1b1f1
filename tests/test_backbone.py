import numpy as np
import pytest
import torch
from conftest import tone

from wav2genre_cache.backbone import BackboneError, builtin_model, load_backbone
from wav2genre_cache.cpu_tuning import ChannelsLastFeatureEncoder, PackedLinear


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
    assert isinstance(fast.model.encoder.layers[0].feed_forward.intermediate_dense, PackedLinear)
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


def test_not_a_model_directory(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(BackboneError, match="not a loadable model directory"):
        load_backbone(str(tmp_path / "junk"), device="cpu")


def test_normalize_on_device_matches_the_numpy_path():
    from wav2genre_cache.audio import normalize_segments
    from wav2genre_cache.backbone import normalize_on_device

    batch = np.stack([tone(2.0, freq=220) * 5 + 0.3, np.zeros(32_000, np.float32)])
    got = normalize_on_device(torch.from_numpy(batch)).numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, normalize_segments(batch), atol=1e-5)
