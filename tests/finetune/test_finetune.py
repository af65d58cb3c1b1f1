"""`finetune` end to end: it learns what can be learnt, resumes exactly after kill -9, refuses
what cannot be trained, and its bundle goes through predict and the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import run_cli, run_cli_process, write_audio
from fakes import running_server

from wav2genre_cache.errors import BackboneError, FinetuneError, OptionError
from wav2genre_cache.finetune.checkpoint import read_weights
from wav2genre_cache.finetune.loop import lr_factor
from wav2genre_cache.finetune.options import FinetuneOptions
from wav2genre_cache.finetune.run import finetune

LABELS = ("low", "mid", "high")


def pitch_set(
    root: Path, per_label: int = 10, seconds: float = 2.0, shuffled: bool = False
) -> Path:
    """Tones whose pitch band is the label (learnable), with a manifest and a fixed split:
    per label 5 train, 2 valid, the rest test. shuffled: the labels are permuted across tracks,
    so nothing in the audio tells them apart."""
    rng = np.random.default_rng(3)
    rows = []
    for li, label in enumerate(LABELS):
        for i in range(per_label):
            path = write_audio(
                root / "audio" / f"{label}_{i}.wav",
                seconds,
                freq=150.0 * 2.2**li * (1 + 0.04 * i),
                seed=li * 100 + i,
            )
            split = "train" if i < 5 else ("valid" if i < 7 else "test")
            rows.append([str(path), label, split])
    if shuffled:
        labels = rng.permutation([r[1] for r in rows])
        rows = [[p, lab, s] for (p, _, s), lab in zip(rows, labels, strict=True)]
    manifest = root / "manifest.csv"
    manifest.write_text("path,label,split\n" + "".join(",".join(r) + "\n" for r in rows))
    return manifest


def options(data: Path, out: Path, **kw) -> FinetuneOptions:
    base = dict(
        model="random-tiny",
        segment_seconds=2.0,
        unfreeze="all",
        epochs=12,
        patience=12,
        lr=1e-3,
        head_lr=3e-3,
        batch_size=4,
        workers=0,
    )
    return FinetuneOptions(data=str(data), out=str(out), **{**base, **kw})


def test_learns_the_pitch_bands_and_not_shuffled_labels(tmp_path):
    learnable = finetune(options(pitch_set(tmp_path / "a"), tmp_path / "ra"), progress=False)
    shuffled = finetune(
        options(pitch_set(tmp_path / "b", shuffled=True), tmp_path / "rb"), progress=False
    )
    acc = learnable["results"][0]["test"]["track"]["accuracy"]
    chance = shuffled["results"][0]["test"]["track"]["accuracy"]
    assert acc >= 0.9, learnable["history"]
    assert chance <= 0.6, shuffled["history"]  # 9 test tracks, 3 labels: chance is 1/3
    # The probe fitted the head before the first epoch: already far below chance's loss, ln 3.
    assert learnable["history"][0]["train_loss"] < 0.5 < np.log(3)
    # The bundle, the curve and the row compare reads.
    run = tmp_path / "ra"
    assert (run / "finetune_curve.png").stat().st_size > 1000
    meta = json.loads((run / "bundles" / "finetuned" / "bundle.json").read_text())
    assert meta["kind"] == "finetuned" and meta["labels"] == sorted(LABELS)
    assert set(meta["files"]) >= {"model.safetensors", "config.json"}
    # Calibrated on validation like the frozen heads: the map in the bundle, ECE in the row.
    row = learnable["results"][0]
    assert meta["calibration"]["method"] == row["calibration"]["method"] == "temperature"
    assert meta["calibration"]["temperature"] == row["calibration"]["temperature"]
    assert 0 <= row["calibration"]["ece_after"] <= 1 and "reliability" in row["test_detail"]


def _cli_args(data: Path, out: Path) -> list[str]:
    return [
        "finetune", str(data), "--out", str(out), "--model", "random-tiny",
        "--segment-seconds", "4", "--unfreeze", "all", "--epochs", "3", "--patience", "3",
        "--batch-size", "2", "--checkpoint-every", "1", "--workers", "0",
    ]  # fmt: skip


def test_kill_9_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    # Every run a process of its own, as the killed one must be: weights compared bit for bit
    # come from processes that start alike (in the test's process, one ran apart once).
    data = pitch_set(tmp_path / "d", per_label=8, seconds=8.0)
    run_cli_process(*_cli_args(data, tmp_path / "whole"))
    # The same command, killed with SIGKILL once a few optimizer steps are checkpointed.
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wav2genre_cache", *_cli_args(data, out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pointer = out / "finetune" / "latest.json"
    deadline = time.time() + 600  # a loaded CI machine starts slowly; the kill comes at step 3
    while time.time() < deadline and proc.poll() is None:
        step = (
            json.loads(pointer.read_text())["checkpoint"].split("-step-")[1]
            if pointer.is_file()
            else 0
        )
        if int(step) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "finetune.json").exists()
    resumed = run_cli_process(*_cli_args(data, out))
    assert "Resuming from" in resumed.stderr
    # CPU float32 with every step seeded by its place: the same weights, bit for bit.
    a = read_weights(tmp_path / "whole" / "bundles" / "finetuned" / "model.safetensors")
    b = read_weights(out / "bundles" / "finetuned" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k
    # A finished run is not trained again.
    again = run_cli(*_cli_args(data, out))
    assert "already complete" in again.stderr


def test_other_settings_on_an_existing_run_are_refused_with_the_differences(tmp_path):
    data = pitch_set(tmp_path / "d", per_label=7)
    finetune(options(data, tmp_path / "run", epochs=1), progress=False)
    with pytest.raises(FinetuneError, match=r"epochs: 1 before, 2 now.*lr: 0\.001 before"):
        finetune(options(data, tmp_path / "run", epochs=2, lr=5e-4), progress=False)


def test_inputs_that_cannot_train_are_refused_clearly(tmp_path):
    data = pitch_set(tmp_path / "d", per_label=7)
    with pytest.raises(FinetuneError, match="random-tiny has 2 transformer layers"):
        finetune(options(data, tmp_path / "r1", layer="5"), progress=False)
    with pytest.raises(FinetuneError, match="--unfreeze 3: random-tiny runs 1 transformer layers"):
        finetune(options(data, tmp_path / "r2", layer="1", unfreeze="3"), progress=False)
    one = tmp_path / "one.csv"
    one.write_text(
        "path,label,split\n"
        + "".join(f"{tmp_path}/d/audio/low_{i}.wav,low,train\n" for i in range(4))
        + f"{tmp_path}/d/audio/mid_0.wav,mid,test\n"
    )
    with pytest.raises(FinetuneError, match="single label"):
        finetune(options(one, tmp_path / "r3"), progress=False)
    none = tmp_path / "none.csv"
    none.write_text(
        "path,label,split\n"
        + "".join(f"{tmp_path}/d/audio/{lab}_0.wav,{lab},test\n" for lab in LABELS)
    )
    with pytest.raises(FinetuneError, match=r"no training tracks \(0 train, 0 valid, 3 test\)"):
        finetune(options(none, tmp_path / "r5"), progress=False)
    with pytest.raises(FinetuneError, match="0 full segment.*at least two"):
        finetune(options(data, tmp_path / "r6", segment_seconds=5.0), progress=False)
    with pytest.raises(OptionError, match="--train-feature-encoder .* needs --unfreeze all"):
        finetune(options(data, tmp_path / "r7", unfreeze="1", train_feature_encoder=True))
    # Through the command line: one line, exit 2, no traceback.
    proc = run_cli(*_cli_args(data, tmp_path / "r4"), "--batch-size", "1", check=False)
    assert proc.returncode == 2 and "--batch-size must be at least 2" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_loss_that_becomes_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    data = pitch_set(tmp_path / "d", per_label=7)
    out = tmp_path / "run"
    args = _cli_args(data, out)
    args[args.index("--segment-seconds") + 1] = "2"
    proc = run_cli(*args, "--head-lr", "1e30", "--probe-epochs", "0", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "NaN or infinite" in proc.stderr and "is kept in" in proc.stderr
    assert (out / "finetune" / "latest.json").is_file()
    assert not (out / "finetune.json").exists()


def test_a_probe_whose_loss_becomes_nan_stops_before_anything_is_written(tmp_path):
    data = pitch_set(tmp_path / "d", per_label=7)
    with pytest.raises(FinetuneError, match="probe's loss became NaN"):
        finetune(options(data, tmp_path / "run", head_lr=1e30), progress=False)
    assert not (tmp_path / "run" / "finetune" / "latest.json").exists()
    # Nothing holds the folder to the failed settings: a lower rate may use it.
    finetune(options(data, tmp_path / "run", epochs=1), progress=False)


def test_gradient_checkpointing_gives_the_same_training(tmp_path):
    data = pitch_set(tmp_path / "d", per_label=7)
    plain = finetune(options(data, tmp_path / "a", epochs=2), progress=False)
    saved = finetune(
        options(data, tmp_path / "b", epochs=2, gradient_checkpointing=True), progress=False
    )
    assert [h["train_loss"] for h in plain["history"]] == pytest.approx(
        [h["train_loss"] for h in saved["history"]], rel=1e-5
    )


def test_lr_schedule_warms_up_then_decays_to_zero():
    f = [lr_factor((s + 1) / 100, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    assert f[-1] == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0.5, 0.0) == pytest.approx(0.5)


def test_whisper_encoder_fine_tunes_on_packed_windows_and_predicts(tmp_path, whisper_dir):
    root = tmp_path / "d"
    rows = ["path,label,split"]
    for li, label in enumerate(("a", "b")):
        for i in range(4):
            p = write_audio(root / f"{label}{i}.wav", 12.0, freq=300.0 * (li + 1), seed=i)
            rows.append(f"{p},{label},{'train' if i < 3 else 'test'}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    result = finetune(
        FinetuneOptions(
            data=str(root / "m.csv"),
            out=str(tmp_path / "run"),
            model=whisper_dir,
            segment_seconds=5.0,
            layer="1",
            unfreeze="1",
            epochs=1,
            batch_size=2,
            workers=0,
        ),
        progress=False,
    )
    assert result["results"][0]["layer"] == 1
    proc = run_cli(
        "predict",
        str(root / "a0.wav"),
        "--bundle",
        str(tmp_path / "run" / "bundles" / "finetuned"),
        "--json",
    )
    (entry,) = json.loads(proc.stdout)
    assert [s["start"] for s in entry["timeline"]] == [0.0, 5.0]  # two 5 s segments of 12 s


@pytest.fixture(scope="module")
def tuned_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tuned")
    finetune(options(pitch_set(root / "d"), root / "run", epochs=4), progress=False)
    return root / "run" / "bundles" / "finetuned"


def test_the_bundle_round_trips_through_predict_and_the_server(tuned_bundle, tmp_path):
    clip = write_audio(tmp_path / "high.wav", 6.0, freq=150.0 * 2.2**2)
    cli = json.loads(run_cli("predict", str(clip), "--bundle", str(tuned_bundle), "--json").stdout)[
        0
    ]
    assert len(cli["timeline"]) == 3
    with running_server(tuned_bundle, tmp_path / "server.log") as server:
        model = httpx.get(server.url + "/api/model").json()
        assert model["fine_tuned"] is True and model["head"] == "finetuned"
        served = httpx.post(
            server.url + "/api/predict", files={"file": ("high.wav", clip.read_bytes())}, timeout=60
        ).json()
    assert served["top"] == cli["top"]
    assert [s["probabilities"] for s in served["timeline"]] == [
        s["probabilities"] for s in cli["timeline"]
    ]


def test_a_tampered_weight_file_is_refused(tuned_bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(tuned_bundle, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    clip = write_audio(tmp_path / "t.wav", 3.0)
    proc = run_cli("predict", str(clip), "--bundle", str(copy), check=False)
    assert proc.returncode == 2
    assert "model.safetensors: the file was altered after training" in proc.stderr
    # bundle.json may name only an allow-listed encoder class: nothing is imported by name.
    shutil.copy(tuned_bundle / "model.safetensors", weights)
    meta = json.loads((copy / "bundle.json").read_text())
    meta["model"]["encoder_class"] = "os.system"
    (copy / "bundle.json").write_text(json.dumps(meta))
    proc = run_cli("predict", str(clip), "--bundle", str(copy), check=False)
    assert proc.returncode == 2 and "names encoder class 'os.system'" in proc.stderr


def test_run_with_finetune_puts_both_kinds_of_row_in_one_table(tmp_path, dev_clips):
    rows = ["path,label"]
    for genre in sorted(dev_clips.iterdir()):
        rows += [f"{p},{genre.name}" for p in sorted(genre.glob("*.flac"))[:3]]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    run_cli(
        "run", str(tmp_path / "m.csv"), "--out", str(run), "--model", "random-tiny",
        "--heads", "logreg", "--layers", "best", "--finetune", "--finetune-epochs", "2",
        "--unfreeze", "1",
    )  # fmt: skip
    md = (run / "comparison.md").read_text()
    assert "same split as the frozen heads" in md
    table = json.loads((run / "comparison.json").read_text())
    kinds = {r["encoder"] for r in table}
    assert kinds == {"frozen", "fine-tuned (top 1 of 2)"}, kinds
    assert (run / "finetune_curve.png").is_file() and (run / "best" / "bundle.json").is_file()


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_the_raw_waveform_family_fine_tunes_and_its_bundle_loads(tmp_path, family):
    import transformers

    from wav2genre_cache.encoders.sources import builtin_model

    config_cls, model_cls = {
        "hubert": (transformers.HubertConfig, transformers.HubertModel),
        "wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
    }[family]
    config = config_cls(**builtin_model("random-tiny").config.to_dict())
    model_cls(config).save_pretrained(tmp_path / family)
    data = pitch_set(tmp_path / "d", per_label=7)
    result = finetune(
        options(data, tmp_path / "run", model=str(tmp_path / family), epochs=1, unfreeze="1"),
        progress=False,
    )
    assert result["results"][0]["fine_tuned"]["unfreeze"] == 1
    clip = write_audio(tmp_path / "t.wav", 4.0)
    bundle = tmp_path / "run" / "bundles" / "finetuned"
    (entry,) = json.loads(run_cli("predict", str(clip), "--bundle", str(bundle), "--json").stdout)
    assert len(entry["timeline"]) == 2


def test_augmentation_on_the_fly_and_bfloat16_autocast_on_the_cpu(tmp_path):
    data = pitch_set(tmp_path / "d", per_label=7)
    result = finetune(
        options(
            data, tmp_path / "run", epochs=2, augment=("noise",), augment_prob=1.0,
            precision="bfloat16", workers=1,
        ),
        progress=False,
    )  # fmt: skip
    assert result["precision"] == "bfloat16"
    assert all(np.isfinite(h["train_loss"]) for h in result["history"])
    assert result["results"][0]["augmented"] is True


def test_layer_0_pools_the_encoders_input(tmp_path):
    data = pitch_set(tmp_path / "d", per_label=7)
    result = finetune(
        options(data, tmp_path / "run", layer="0", unfreeze="0", epochs=1), progress=False
    )
    assert result["results"][0]["layer"] == 0
    clip = write_audio(tmp_path / "t.wav", 2.0)
    bundle = tmp_path / "run" / "bundles" / "finetuned"
    run_cli("predict", str(clip), "--bundle", str(bundle))


def test_an_encoder_a_bundle_cannot_hold_is_refused_before_training(tmp_path):
    import transformers

    from wav2genre_cache.encoders.sources import builtin_model

    config = transformers.UniSpeechSatConfig(**builtin_model("random-tiny").config.to_dict())
    transformers.UniSpeechSatModel(config).save_pretrained(tmp_path / "usat")
    data = pitch_set(tmp_path / "d", per_label=7)
    with pytest.raises(BackboneError, match="UniSpeechSatModel cannot be fine-tuned here"):
        finetune(options(data, tmp_path / "run", model=str(tmp_path / "usat")), progress=False)
    assert not (tmp_path / "run").exists()


def test_copies_of_one_recording_are_kept_on_one_side_of_the_split(tmp_path):
    import soundfile as sf

    from wav2genre_cache.data.tracks import Track
    from wav2genre_cache.finetune.data import decode_tracks

    a = write_audio(tmp_path / "a.wav", 3.0, freq=220.0, seed=1)
    b = write_audio(tmp_path / "b.wav", 3.0, freq=440.0, seed=2)
    copy = tmp_path / "a_copy.flac"  # the same audio as a.wav, in another container
    sf.write(copy, sf.read(a)[0], 16_000)
    tracks = [
        Track("a", str(a), "x", "train"),
        Track("b", str(b), "y", "train"),
        Track("a_copy", str(copy), "x", "test"),
    ]
    logged = []
    data = decode_tracks(tracks, ["x", "y"], options(tmp_path, tmp_path / "o"), logged.append)
    assert [e.track.track_id for e in data["train"]] == ["a", "b", "a_copy"]
    assert data["test"] == [] and any("appear more than once" in m for m in logged)
