"""A fine-tuning run folder edited by hand or tampered with: `finetune` resuming it says what is
wrong in one line naming the file (exit 2), never a traceback, and never reads outside it."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import save_file
from test_finetune import pitch_set

from wav2genre_cache.finetune.checkpoint import read_weights


def _args(data: Path, out: Path) -> list[str]:
    return [
        "finetune", str(data), "--out", str(out), "--model", "random-tiny",
        "--segment-seconds", "2", "--unfreeze", "all", "--epochs", "1", "--batch-size", "4",
        "--probe-epochs", "2", "--workers", "0",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory) -> tuple[Path, Path]:
    """A run whose every checkpoint is written but whose result is not (as if killed at its
    end): the same command resumes it and reads every state file. (manifest, run folder)"""
    root = tmp_path_factory.mktemp("tamper")
    data = pitch_set(root / "d", per_label=5)
    run_cli(*_args(data, root / "run"))
    (root / "run" / "finetune.json").unlink()
    return data, root / "run"


def _checkpoint(state: Path) -> Path:
    return state / "checkpoints" / json.loads((state / "latest.json").read_text())["checkpoint"]


def _edit_json(path: Path, edit) -> None:
    value = json.loads(path.read_text())
    edit(value)
    path.write_text(json.dumps(value))


def _pickle_weights(state: Path, outside: Path) -> None:
    (_checkpoint(state) / "weights.safetensors").write_bytes(pickle.dumps({"w": [1.0, 2.0]}))


def _settings_not_json(state: Path, outside: Path) -> None:
    (state / "settings.json").write_text('{"model": "random-tiny",')


def _negative_epoch(state: Path, outside: Path) -> None:
    _edit_json(_checkpoint(state) / "progress.json", lambda p: p.update(epoch=-5))


def _best_file_outside(state: Path, outside: Path) -> None:
    # A real weights file where the edited name points: followed, it would load silently.
    progress = _checkpoint(state) / "progress.json"
    best = json.loads(progress.read_text())["best"]["file"]
    shutil.copy(state / best, outside / "x.pkl")
    _edit_json(progress, lambda p: p["best"].update(file="../../../../x.pkl"))


def _latest_outside(state: Path, outside: Path) -> None:
    shutil.copytree(_checkpoint(state), (state / "checkpoints" / "../../../x").resolve())
    (state / "latest.json").write_text(json.dumps({"checkpoint": "../../../x"}))


def _head_of_another_shape(state: Path, outside: Path) -> None:
    path = _checkpoint(state) / "weights.safetensors"
    weights = read_weights(path)
    name = next(k for k in weights if k.startswith("head.") and weights[k].ndim == 2)
    weights[name] = torch.zeros(weights[name].shape[0] + 2, weights[name].shape[1])
    save_file(weights, str(path))


def _newer_format(state: Path, outside: Path) -> None:
    _edit_json(state / "settings.json", lambda s: s.update(format_version=99))


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (_pickle_weights, r"weights\.safetensors: not a safetensors file"),
        (_settings_not_json, r"settings\.json: not valid JSON"),
        (_negative_epoch, r"progress\.json: field 'epoch' is -5, not a whole number"),
        (_best_file_outside, r"progress\.json: field 'best\.file' is '\.\./\.\./\.\./\.\./x\.pkl', which is outside"),
        (_latest_outside, r"latest\.json: field 'checkpoint' is '\.\./\.\./\.\./x', which is outside"),
        (_head_of_another_shape, r"weights\.safetensors: head\.\S+ has shape \[\d+, \d+\], this model's \[\d+, \d+\]"),
        (_newer_format, r"settings\.json: fine-tuning state format version 99; .* reads versions up to 1"),
    ],
    ids=["pickle", "settings-json", "epoch", "best-file", "latest", "shape", "version"],
)  # fmt: skip
def test_tampered_state_is_one_line_naming_the_file(unfinished, tmp_path, tamper, expected):
    data, run = unfinished
    # The copy sits four folders down, so "../../../../x.pkl" from its state folder is `outside`.
    copy = tmp_path / "a" / "b" / "run"
    shutil.copytree(run, copy)
    outside = tmp_path
    tamper(copy / "finetune", outside)
    proc = run_cli(*_args(data, copy), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert re.search(expected, " ".join(proc.stderr.split())), proc.stderr
    assert not (copy / "finetune.json").exists()


def test_the_untampered_copy_resumes_to_its_end(unfinished, tmp_path):
    data, run = unfinished
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    proc = run_cli(*_args(data, copy))
    assert "Resuming from" in proc.stderr and (copy / "finetune.json").is_file()
    settings = json.loads((copy / "finetune" / "settings.json").read_text())
    assert settings["format_version"] == 1
