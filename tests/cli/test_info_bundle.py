"""`wav2genre info BUNDLE`: a bundle folder (or a run folder: its best/) is summed up as head,
layer, backbone, labels and test figures with n and interval; --verify checks its files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import run_cli

from wav2genre_cache.stage_two.train import train_heads
from wav2genre_cache.testing.synthetic import write_synthetic_cache

FIXTURE_RUN = Path(__file__).parents[1] / "fixtures" / "v0.1.0" / "run"


def test_info_sums_up_a_run_folders_best_bundle_and_a_head_bundle(tmp_path):
    cache = write_synthetic_cache(
        tmp_path / "c.h5", n_tracks=80, n_layers=3, dim=16, n_labels=4, segments_per_track=2
    )
    train_heads(cache, tmp_path / "run", log=lambda m: None, heads="logreg")
    bundle = json.loads((tmp_path / "run" / "best" / "bundle.json").read_text())
    m = bundle["metrics"]
    lo, hi = m["test_track_accuracy_ci"]
    shown = run_cli("info", str(tmp_path / "run")).stdout
    assert f"{tmp_path / 'run' / 'best'}\n" in shown
    assert f"head       logreg, encoder features, layer {bundle['layer']}" in shown
    assert f"backbone   synthetic (revision {bundle['backbone_revision']})" in shown
    assert "labels     4: genre0, genre1, genre2, genre3 (not measured on test: genre3)" in shown
    accuracy = f"{m['test_track_accuracy']:.3f} (95 % CI {lo:.3f}-{hi:.3f}, n = {m['test_tracks']})"
    assert f"test       track accuracy {accuracy}" in shown
    assert (
        "track macro-F1 " in shown
        and f"card       {tmp_path / 'run' / 'best' / 'README.md'}" in shown
    )
    as_json = json.loads(
        run_cli("info", str(tmp_path / "run" / "bundles" / "logreg"), "--json", "--verify").stdout
    )
    assert as_json["head"] == "logreg" and as_json["checksums"] == "ok"
    assert as_json["test"]["track_accuracy_ci"] == m["test_track_accuracy_ci"]
    assert as_json["test"]["tracks"] == m["test_tracks"]


def test_info_on_bundles_written_before_model_cards(tmp_path):
    shown = run_cli("info", str(FIXTURE_RUN / "best"), "--verify").stdout
    assert "checksums  ok" in shown
    assert "card       none (a bundle written before model cards)" in shown
    tuned = run_cli("info", str(FIXTURE_RUN / "bundles" / "finetuned")).stdout
    assert "head       finetuned, encoder features" in tuned


def test_info_refuses_an_altered_bundle_and_a_folder_that_is_no_bundle(tmp_path):
    shutil.copytree(FIXTURE_RUN / "bundles" / "logreg", tmp_path / "b")
    data = bytearray((tmp_path / "b" / "head.skops").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "b" / "head.skops").write_bytes(bytes(data))
    altered = run_cli("info", str(tmp_path / "b"), "--verify", check=False)
    assert altered.returncode == 2 and "the file was altered after training" in altered.stderr
    (tmp_path / "empty").mkdir()
    empty = run_cli("info", str(tmp_path / "empty"), check=False)
    assert empty.returncode == 2 and "not a bundle (no bundle.json)" in empty.stderr
