"""A fine-tuning run's JSON state read back, checked before anything uses it.

settings.json, latest.json and each checkpoint's progress.json are written by the run, but a
person (or an attacker) may edit them: every field the run reads is checked for its type and
range, a file name may only name a file in the run's own folder, and a file of a newer format
is refused with the version it needs. Each problem is one FinetuneError naming the file and the
field. The first runs wrote no format_version: they read as version 1.
"""

from __future__ import annotations

import math
from pathlib import Path

from wav2genre_cache._io import name_in_folder_problem, read_json_object
from wav2genre_cache._version import __version__
from wav2genre_cache.errors import FinetuneError

STATE_VERSION = 1  # of settings.json and progress.json
SETTINGS = "settings.json"
LATEST = "latest.json"
START_OVER = "remove the folder to start over"

# progress.json's counters: whole numbers, never negative.
_COUNTERS = ("epoch", "batches_done", "global_step", "segments", "bad_epochs", "checkpoints")


def read_state_json(path: Path, what: str) -> dict:
    """A JSON object of the run's state, its format version one this package reads."""
    value = read_json_object(path, FinetuneError, what)
    version = value.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FinetuneError(f"{path}: field 'format_version' is {version!r}, not a version number")
    if version > STATE_VERSION:
        raise FinetuneError(
            f"{path}: fine-tuning state format version {version}; this wav2genre-cache "
            f"({__version__}) reads versions up to {STATE_VERSION}: upgrade it to resume this run"
        )
    return value


def read_settings(state_dir: Path) -> dict | None:
    """The settings a run folder was started with (format_version dropped), or None if none."""
    path = state_dir / SETTINGS
    if not path.is_file():
        return None
    settings = read_state_json(path, "a fine-tuning run's settings")
    settings.pop("format_version", None)
    return settings


def latest_checkpoint(state_dir: Path) -> Path | None:
    """The folder latest.json points at (a checkpoint of this run's own), or None if none."""
    path = state_dir / LATEST
    if not path.is_file():
        return None
    name = read_json_object(path, FinetuneError, "a checkpoint pointer").get("checkpoint")
    problem = name_in_folder_problem(name)
    if problem:
        raise FinetuneError(f"{path}: field 'checkpoint' is {name!r}, {problem}; {START_OVER}")
    return state_dir / "checkpoints" / name


def check_progress(path: Path, progress: dict, state_dir: Path) -> None:
    """Every field of a checkpoint's progress.json that the loop reads, checked, or one line
    naming the field; the best epoch's weights file must be a file of state_dir."""

    def bad(field: str, value, should: str):
        return FinetuneError(f"{path}: field {field!r} is {value!r}, not {should}; {START_OVER}")

    for name in _COUNTERS:
        value = progress.get(name, 0)
        if not _whole(value) or value < 0:
            raise bad(name, value, "a whole number of at least 0")
    for name in ("loss_sum", "seconds"):
        value = progress.get(name, 0.0)
        if not _number(value) or value < 0:
            raise bad(name, value, "a finite number of at least 0")
    history = progress.get("history", [])
    if not isinstance(history, list) or not all(_history_row(r) for r in history):
        raise bad("history", history, "a list of epoch rows")
    for name, kind, should in (
        ("stopped", str, "text or null"),
        ("scaler", dict, "an object or null"),
    ):
        if progress.get(name) is not None and not isinstance(progress[name], kind):
            raise bad(name, progress[name], should)
    if not isinstance(progress.get("probed", False), bool):
        raise bad("probed", progress["probed"], "true or false")
    groups = progress.get("optimizer_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise bad("optimizer_groups", groups, "a list of parameter groups")
    best = progress.get("best")
    if best is not None:
        _check_best(path, best, state_dir, bad)


def _check_best(path: Path, best, state_dir: Path, bad) -> None:
    """The best epoch: its number, its score and a weights file inside state_dir that exists."""
    if not isinstance(best, dict):
        raise bad("best", best, "an object or null")
    if not _whole(best.get("epoch")) or best["epoch"] < 1:
        raise bad("best.epoch", best.get("epoch"), "a whole number of at least 1")
    score = best.get("score")
    if not isinstance(score, list) or not all(_number(s) for s in score):
        raise bad("best.score", score, "a list of numbers")
    name = best.get("file")
    problem = name_in_folder_problem(name)
    if problem:
        raise FinetuneError(f"{path}: field 'best.file' is {name!r}, {problem}; {START_OVER}")
    if not (state_dir / name).is_file():
        raise FinetuneError(
            f"{path}: field 'best.file' names {name}, which is not in {state_dir}; {START_OVER}"
        )


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _history_row(row) -> bool:
    """An epoch row as the loop writes it: its number, loss, seconds and rate."""
    return (
        isinstance(row, dict)
        and _whole(row.get("epoch"))
        and all(_number(row.get(k)) for k in ("train_loss", "seconds", "segments_per_second"))
    )
