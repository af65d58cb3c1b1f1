"""The finished steps of long work on disk, each kept as it finishes: a killed run re-run with the
same command loses at most the fit it was in.

A step is one fit inside a job (a trial of an FCNN random search, a grid point chosen on
validation, one fold of a cross-validated grid point) or one (repeat, fold, head) of
`cross-validate --out`. Its folder holds step.json (what it belongs to, its parameters and
figures, every other file's sha256) and, where the step needs them, its held-out scores
(scores.npz, read without pickle) and its fitted model (the head's own safe format, as bundles).
A folder is written under a temporary name and renamed into place: whole or absent. It is not
synced: a step a power cut left half on disk fails its checksums and is fitted again.

The settings the steps were made with are kept beside them (settings.json); a re-run with other
settings is refused with the list of differences (setting_differences, which train-heads'
jobs use too).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wav2genre_cache._io import (
    Pace,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
    temporary_name,
)
from wav2genre_cache._version import __version__
from wav2genre_cache.errors import HeadError, TrainError
from wav2genre_cache.heads.registry import head_files, load_head, save_head

STEPS_FORMAT = "wav2genre-step"
STEPS_VERSION = 1
STEP_FILE = "step.json"
SCORES_FILE = "scores.npz"


@dataclass(frozen=True)
class Step:
    """A finished step read back: its figures, its arrays, and whether its model was kept."""

    record: dict
    arrays: dict[str, np.ndarray]
    has_model: bool
    folder: Path


class StepStore:
    """The finished steps of one job (or one cross-validation), in one folder."""

    def __init__(
        self,
        root: Path,
        identity: dict,
        log: Callable[[str], None],
        before_write: Callable[[], None] = lambda: None,
        head: str | None = None,
        label: str = "",
    ):
        self.root, self.identity, self.log = root, identity, log
        self.before_write, self.head = before_write, head
        self.read_back = self.written = 0
        # A job of many fits (a search cross-validated on every fold) runs for minutes: a
        # line at most every PLAIN_PROGRESS_SECONDS says how far it is, after the first ones.
        self.label, self._pace = label or root.name, Pace(first=False)
        self.total: int | None = None  # the steps the job takes, where its caller knows them

    def load(self, name: str, params: dict | None = None) -> Step | None:
        """A finished step read back, or None where it is absent; one that fails its checks is
        fitted again, and the log says why."""
        folder = self.root / name
        if not (folder / STEP_FILE).is_file():
            return None
        try:
            step = self._read(folder, name, params)
        except _NotReusable as exc:
            self.log(f"{folder}: {exc}; fitting it again")
            return None
        self.read_back += 1
        return step

    def _read(self, folder: Path, name: str, params: dict | None) -> Step:
        try:
            meta = json.loads((folder / STEP_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise _NotReusable(f"{STEP_FILE} is unreadable ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != STEPS_FORMAT:
            raise _NotReusable(f"{STEP_FILE} is not a step")
        if meta.get("format_version") != STEPS_VERSION:
            raise _NotReusable(f"{STEP_FILE} is not a version {STEPS_VERSION} step")
        if meta.get("of") != self.identity or meta.get("step") != name:
            raise _NotReusable(f"{STEP_FILE} describes another step")
        if meta.get("params") != _canonical(params or {}):
            raise _NotReusable(f"{STEP_FILE} was fitted with other parameters")
        files = meta.get("files")
        if not isinstance(files, dict) or not isinstance(meta.get("record"), dict):
            raise _NotReusable(f"{STEP_FILE} lacks its figures or its files' checksums")
        for file, digest in files.items():
            if file != Path(file).name or not (folder / file).is_file():
                raise _NotReusable(f"{file} is missing")
            if sha256_file(folder / file) != digest:
                raise _NotReusable(f"{file} is altered (checksum mismatch)")
        arrays = {}
        if SCORES_FILE in files:
            try:
                with np.load(folder / SCORES_FILE, allow_pickle=False) as npz:
                    arrays = {k: npz[k] for k in npz.files}
            except (OSError, ValueError) as exc:
                raise _NotReusable(f"{SCORES_FILE} is unreadable ({exc})") from None
        has_model = self.head is not None and head_files(self.head)[0] in files
        return Step(meta["record"], arrays, has_model, folder)

    def save(
        self,
        name: str,
        params: dict | None,
        record: dict,
        arrays: dict[str, np.ndarray] | None = None,
        model: object | None = None,
    ) -> None:
        """Keep a finished step: its folder written under a temporary name, renamed into place."""
        if not self.written:
            self.before_write()  # once a run: what protects the steps, before the first
        folder = self.root / name
        tmp = temporary_name(folder)
        if tmp.exists():
            shutil.rmtree(tmp)  # a killed run's half-written step
        tmp.mkdir(parents=True)
        files = []
        if model is not None:
            files += save_head(model, self.head, tmp)
        if arrays:
            np.savez(tmp / SCORES_FILE, **arrays)
            files.append(SCORES_FILE)
        meta = {
            "format": STEPS_FORMAT,
            "format_version": STEPS_VERSION,
            "of": self.identity,
            "step": name,
            "params": _canonical(params or {}),
            # Not made JSON-safe: Python's JSON keeps NaN (an undefined AUC), and the figures
            # must read back as they were for the choice to be the same.
            "record": record,
            "files": {f: sha256_file(tmp / f) for f in files},
        }
        atomic_write_text(tmp / STEP_FILE, json.dumps(meta, indent=1, default=_plain), sync=False)
        if folder.exists():
            shutil.rmtree(folder)  # one that failed its checks, fitted again
        os.replace(tmp, folder)
        self.written += 1
        if self._pace():
            kept = self.read_back + self.written
            count = f"{kept} of {self.total} fits" if self.total else f"{kept} fits"
            if count == "1 fits":
                count = "1 fit"
            self.log(
                f"  {self.label}: {count} kept so far (trials, grid points or folds; "
                f"{self.written} fitted by this run)"
            )

    def model(self, step: Step) -> object | None:
        """A step's fitted model, or None where it was not kept or cannot be read."""
        if not step.has_model:
            return None
        try:
            return load_head(self.head, step.folder / head_files(self.head)[0])
        except HeadError as exc:
            self.log(f"{step.folder}: its model cannot be read ({exc}); fitting it again")
            return None

    def resumed_line(self) -> str | None:
        """The log line of a job that read finished steps back, or None where it read none."""
        if not self.read_back:
            return None
        return (
            f"  {self.read_back} of {self.read_back + self.written} steps (trials, grid points "
            f"or folds) read back from {self.root}; {self.written} fitted"
        )

    def remove(self) -> None:
        """Remove the steps once what they make is kept."""
        shutil.rmtree(self.root, ignore_errors=True)


class _NotReusable(Exception):
    """A step that cannot be trusted or read back; it is fitted again."""


def _canonical(params: dict) -> dict:
    """Parameters as JSON holds them (tuples as lists), to compare with those read back."""
    return json.loads(json.dumps(params, default=_plain))


def _plain(value):
    """numpy scalars as Python numbers, for json.dumps."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def any_step(root: Path, pattern: str) -> bool:
    """Whether root holds a finished step (a step folder renamed into place) under pattern."""
    return any(not p.parent.name.endswith(".tmp") for p in root.glob(f"{pattern}/{STEP_FILE}"))


def cache_identity(cache) -> dict:
    """An embedding cache as settings name it: its path, size and content digest."""
    return {
        "path": str(cache.path.resolve()),
        "bytes": cache.path.stat().st_size,
        "digest": cache.digest(),
    }


def write_settings(path: Path, format_name: str, version: int, settings: dict) -> None:
    """settings.json, written before the first thing it protects."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        path,
        {
            "format": format_name,
            "format_version": version,
            "package_version": __version__,
            "settings": settings,
        },
    )


def read_settings(path: Path, version_read: int, kind: str) -> dict:
    """The settings kept work was made with; TrainError for a file this version cannot read."""
    try:
        stored = json.loads(path.read_text())
        version, settings = stored["format_version"], stored["settings"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainError(
            f"{path}: unreadable ({exc}); delete {path.parent} to start the run over"
        ) from None
    if not isinstance(version, int) or version > version_read or not isinstance(settings, dict):
        raise TrainError(
            f"{path}: {kind} format version {version}; this wav2genre-cache ({__version__}) reads "
            f"versions up to {version_read}: upgrade it, or use another --out"
        )
    return settings


def setting_differences(stored: dict, settings: dict) -> list[str]:
    """Each setting that differs, as 'name: stored -> now'. The cache counts by its contents
    (size and digest): the same cache moved or renamed is the same cache."""
    out = []
    for key, now in settings.items():
        was = stored.get(key)
        if key == "cache":
            was = was if isinstance(was, dict) else {}
            same = all(was.get(k) == now[k] for k in ("bytes", "digest"))
            if not same:
                out.append(
                    f"cache: {was.get('path')} ({was.get('bytes')} bytes, digest "
                    f"{str(was.get('digest'))[:12]}) -> {now['path']} ({now['bytes']} bytes, "
                    f"digest {now['digest'][:12]})"
                )
        elif was != now:
            out.append(f"{key}: {_shown(was)} -> {_shown(now)}")
    return out


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)
