import json
import os

import pytest
from conftest import make_label_folder, run_cli


@pytest.mark.slow
def test_run_end_to_end_on_the_dev_clips(tmp_path, dev_clips):
    run = tmp_path / "run"
    proc = run_cli("run", str(dev_clips), "--out", str(run), "--model", "random-tiny")
    assert "Embedded 60 tracks (180 segments" in proc.stderr
    assert "untrained (random) backbone" in proc.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    # With GTZAN's artist index beside the clips, the split keeps each artist on one side: the
    # five genres of one or two artists only train, and the report says so.
    if metrics["grouping"]["by"] == "artist":
        assert metrics["counts"] == {"train": 46, "valid": 7, "test": 7}
        assert set(metrics["grouping"]["unmeasured_labels"]) == {
            "blues", "classical", "jazz", "reggae", "rock"
        }  # fmt: skip
        assert (
            "Not measured on test (no test track): blues (one artist: John Lee Hooker)"
            in (run / "comparison.md").read_text()
        )
    else:
        assert metrics["counts"] == {"train": 40, "valid": 10, "test": 10}
    assert len(metrics["results"]) == 5 * 3 and metrics["untrained_backbone"] is True
    assert (run / "best" / "bundle.json").is_file()
    md = (run / "comparison.md").read_text()
    assert (run / "roc_curves.png").is_file() or "No label AUC figure" in md
    info = run_cli("info", str(run / "cache.h5"), "--json")
    assert json.loads(info.stdout)["tracks"]["ok"] == 60


def test_help_lists_every_command():
    out = run_cli("--help").stdout
    for cmd in ("embed", "info", "train-heads", "compare", "run"):
        assert cmd in out


def test_errors_are_one_clear_line_and_exit_2(tmp_path):
    proc = run_cli(
        "embed",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path / "x.h5"),
        "--model",
        "random-tiny",
        check=False,
    )
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr
    proc = run_cli("train-heads", str(tmp_path / "x.h5"), "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "no such cache file" in proc.stderr


SPLITS_OF_FOUR = ("train", "train", "valid", "test")


@pytest.mark.slow
def test_run_with_every_feature_set_and_augmentation(tmp_path, dev_clips):
    # 4 genres x 4 real clips, split in the manifest: every path of the pipeline, in a third of
    # the time 30 clips took.
    rows = ["path,label,split"]
    for genre in sorted(dev_clips.iterdir())[:4]:
        clips = sorted(genre.glob("*.flac"))[:4]
        rows += [f"{p},{genre.name},{s}" for p, s in zip(clips, SPLITS_OF_FOUR, strict=True)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    run_cli(
        "run",
        str(tmp_path / "m.csv"),
        "--out",
        str(run),
        "--model",
        "random-tiny",
        "--features",
        "encoder,handcrafted,logmel",
        "--augment",
        "pitch,stretch,noise",
        "--heads",
        "logreg,svm,cnn,lstm,cnn-lstm",
        "--segment-seconds",
        "10",
    )
    info = json.loads(run_cli("info", str(run / "cache.h5"), "--json").stdout)
    assert info["features"]["handcrafted"]["layers"] == 1 and info["views"] == [0, 1]
    from wav2genre_cache.store.cache import EmbeddingCache

    cache = EmbeddingCache(run / "cache.h5")
    split = cache.tracks.split.to_numpy()[cache.segments.track.to_numpy()]
    augmented = cache.segments.view.to_numpy() > 0
    assert augmented.any() and set(split[augmented]) == {"train"}  # never valid or test
    metrics = json.loads((run / "metrics.json").read_text())
    combos = {(r["feature_set"], r["augmented"]) for r in metrics["results"]}
    assert combos == {(f, a) for f in ("encoder", "handcrafted", "logmel") for a in (True, False)}
    spectro = {r["head"] for r in metrics["results"] if r["feature_set"] == "logmel"}
    assert spectro == {"cnn", "lstm", "cnn-lstm"}
    assert {r["head"] for r in metrics["results"] if r["feature_set"] != "logmel"} == {
        "logreg",
        "svm",
    }
    assert (run / "bundles" / "cnn-lstm-logmel" / "head.safetensors").is_file()
    table = (run / "comparison.md").read_text()
    assert "handcrafted" in table and "| no |" in table
    assert (run / "bundles" / "svm-handcrafted" / "bundle.json").is_file()
    assert json.loads((run / "best" / "bundle.json").read_text())["feature_set"] == "encoder"


def test_only_embed_and_run_change_the_allocator_and_only_when_asked(tmp_path, monkeypatch):
    # glibc's allocator settings are process-wide: a command that owns its process may change
    # them (embed, run), by an option; loading a model (serve, predict, importers) never does.
    from conftest import make_label_folder
    from typer.testing import CliRunner

    import wav2genre_cache.encoders.cpu_tuning as ct
    from wav2genre_cache.cli.app import app

    calls = []
    monkeypatch.setattr(ct, "keep_freed_memory", lambda: calls.append(1))
    data = make_label_folder(tmp_path / "data", per_label=2, seconds=1.5)
    common = ["--model", "random-tiny", "--workers", "0", "--device", "cpu"]
    runner = CliRunner()
    result = runner.invoke(app, ["embed", str(data), "--out", str(tmp_path / "a.h5"), *common])
    assert result.exit_code == 0, result.output
    assert calls == [1]
    result = runner.invoke(
        app,
        ["embed", str(data), "--out", str(tmp_path / "b.h5"), *common, "--release-freed-memory"],
    )
    assert result.exit_code == 0, result.output
    assert calls == [1]


def test_predict_refuses_a_bundle_naming_a_file_outside_it(tmp_path, dev_bundle):
    import shutil

    from typer.testing import CliRunner

    from wav2genre_cache.cli.app import app

    bundle = tmp_path / "bundle"
    shutil.copytree(dev_bundle, bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps({**meta, "head_file": "../../etc/passwd"}))
    result = CliRunner().invoke(app, ["predict", str(tmp_path), "--bundle", str(bundle)])
    assert result.exit_code == 2
    assert (
        "names head file '../../etc/passwd', which is outside the bundle folder; refusing it"
        in result.stderr
    )


def test_file_names_with_square_brackets_print_as_they_are(tmp_path):
    # "[Live]", "[Remastered]": common in song files, and rich markup would eat them.
    info = run_cli("info", str(tmp_path / "nope[abc]" / "cache.h5"), check=False)
    assert f"{tmp_path}/nope[abc]/cache.h5: no such cache file" in info.stderr
    data = make_label_folder(tmp_path / "data", per_label=2, seconds=2.0)
    (data / "low" / "song [Live].wav").write_bytes(b"")
    embed = run_cli("embed", str(data), "--out", str(tmp_path / "c.h5"), "--model", "random-tiny")
    assert f"skipped {data}/low/song [Live].wav: empty file (0 bytes)" in embed.stderr
    assert (
        f"{data}/low/song [Live].wav: empty file" in run_cli("info", str(tmp_path / "c.h5")).stdout
    )
    helped = run_cli("embed", "--help", env={**os.environ, "COLUMNS": "400"})
    assert "pip install 'wav2genre-cache[ray]'" in helped.stdout


def test_version_and_typed_package():
    from importlib.resources import files

    from wav2genre_cache import __version__

    assert run_cli("--version").stdout.strip() == f"wav2genre-cache {__version__}"
    assert (files("wav2genre_cache") / "py.typed").is_file()  # PEP 561, shipped as package data


def test_other_libraries_warnings_are_hidden_unless_verbose():
    import warnings

    from wav2genre_cache.cli.app import quiet_third_party_warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party_warnings()
        for module in ("sklearn.utils.parallel", "joblib", "wav2genre_cache.heads.estimators"):
            warnings.warn_explicit("a warning", UserWarning, "x.py", 1, module=module)
    assert [w.filename for w in seen] == ["x.py"]  # the package's own one only
    proc = run_cli("--verbose", "--version")
    assert proc.returncode == 0 and "wav2genre-cache" in proc.stdout
