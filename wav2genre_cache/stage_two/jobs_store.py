"""Stage two's finished jobs on disk: each job is kept as it finishes, so a killed run loses only
the job it was fitting, and the same command re-run fits only the jobs not yet done.

RUN/jobs/settings.json holds the run's settings: a re-run with other settings is refused, since
its jobs would mix with the first run's. RUN/jobs/<feature set>/<augmented|original>/
<head>-layer<N>/ holds a job's result row, its model in its head's own safe format (the one
bundles use, never pickle) and its calibrator, with job.json, written last, holding every file's
sha256. A job folder is written under a temporary name and renamed into place: it is whole or
absent. The fits inside a job (each trial of an FCNN random search, each grid point, each fold
of a cross-validated grid point) are kept as they finish in <head>-layer<N>.steps/ beside it
(steps_store), removed once the job is kept: a killed search re-run fits only its trials not
yet done.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from wav2genre_cache._io import (
    atomic_write_json,
    read_json_object,
    sha256_file,
    sync_dir,
    sync_file,
    temporary_name,
)
from wav2genre_cache.errors import CalibrationError, TrainError
from wav2genre_cache.evaluation.calibration import Calibrator
from wav2genre_cache.evaluation.result_row import ResultRow
from wav2genre_cache.heads.registry import head_files, load_head, save_head
from wav2genre_cache.stage_two.cv_select import SelectionRule
from wav2genre_cache.stage_two.data import EVERY_LAYER, TrainingData
from wav2genre_cache.stage_two.options import TrainOptions
from wav2genre_cache.stage_two.plan import Job
from wav2genre_cache.stage_two.select import Fitted, fit_jobs
from wav2genre_cache.stage_two.steps_store import (
    StepStore,
    any_step,
    cache_identity,
    read_settings,
    setting_differences,
    write_settings,
)
from wav2genre_cache.store.cache import EmbeddingCache

JOBS_FORMAT = "wav2genre-jobs"
JOBS_VERSION = 1
SETTINGS_FILE = "settings.json"
JOB_FILE = "job.json"  # the job's identity and every other file's sha256
ROW_FILE = "row.json"  # ResultRow.as_json
CALIBRATOR_FILE = "calibrator.json"  # Calibrator.as_json


def run_settings(
    cache: EmbeddingCache, heads: list[str], feature_sets: list[str], opts: TrainOptions
) -> dict:
    """What a run's jobs depend on: the cache (its size and content digest) and the options."""
    return {
        "cache": cache_identity(cache),
        "heads": list(heads),
        "feature_sets": list(feature_sets),
        "layers": opts.layers,
        "seed": opts.seed,
        "trials": opts.trials,
        "selection": opts.selection,
        "calibration": opts.calibration,
        "augmented": opts.augmented,
    }


def rule_digest(rule: SelectionRule) -> str:
    """A digest of the selection rule and its folds: a job chosen under another is not reused."""
    h = hashlib.sha256(json.dumps(rule.as_json(), sort_keys=True).encode())
    for train, held in rule.folds:
        h.update(train.tobytes() + b"|" + held.tobytes())
    return h.hexdigest()


class StoredFitted(Fitted):
    """A Fitted whose model stays in its job folder until the writer reads it: a run holds
    only the models of the bundles it is writing, never every job's."""

    def __init__(self, result: ResultRow, data: TrainingData, calibrator: Calibrator, folder: Path):
        self.result, self.data, self.calibrator, self.folder = result, data, calibrator, folder

    @property
    def model(self):  # Fitted's field, read from disk on each use
        """The job's fitted head, loaded from its job folder."""
        return load_head(self.result.head, self.folder / head_files(self.result.head)[0])


class JobStore:
    """The finished jobs of one run folder (RUN/jobs), for one set of settings."""

    def __init__(self, root: Path, settings: dict, log: Callable[[str], None]):
        self.root, self.settings, self.log = root, settings, log
        self.settings_written = False

    @classmethod
    def open(cls, run_dir: Path, settings: dict, log: Callable[[str], None]) -> JobStore:
        """The run folder's job store; one holding jobs fitted with other settings, or of a
        newer format, refused in one line."""
        root = Path(run_dir) / "jobs"
        path = root / SETTINGS_FILE
        stored = read_settings(path, JOBS_VERSION, "jobs") if path.is_file() else None
        # Settings without a finished job or step protect nothing: a run refused before its
        # first fit (a layer out of range, a cache that cannot be trained on) can be corrected.
        changed = setting_differences(stored, settings) if stored and _finished(root) else []
        if changed:
            raise TrainError(
                f"{run_dir} holds the jobs of a run with other settings ({'; '.join(changed)}); "
                f"re-run with its settings to finish it, or use another --out "
                f"(or delete {root} to start over)"
            )
        return cls(root, settings, log)

    def folder(self, data: TrainingData, job: Job) -> Path:
        """A job's folder: <feature set>/<augmented|original>/<head>-layer<N> (or -all-layers)."""
        layer = "all-layers" if job.layer == EVERY_LAYER else f"layer{job.layer}"
        views = "augmented" if data.augmented else "original"
        return self.root / data.feature_set / views / f"{job.head}-{layer}"

    def steps(self, data: TrainingData, job: Job, digest: str) -> StepStore:
        """The finished steps (trials, grid points, folds) of a job not yet done."""
        folder = self.folder(data, job)
        return StepStore(
            folder.with_name(f"{folder.name}.steps"),
            _identity(data, job, digest),
            self.log,
            self._write_settings,
            job.head,
            label=f"{job.head} {data.feature_set} "
            f"{'all layers' if job.layer == EVERY_LAYER else f'layer {job.layer}'}"
            f"{data.views_note}",
        )

    def fit_or_load(
        self,
        data: TrainingData,
        jobs: list[Job],
        rule: SelectionRule,
        opts: TrainOptions,
    ) -> list[Fitted]:
        """Every job's Fitted, in job order: those already done read back, the rest fitted and
        kept as each finishes."""
        digest = rule_digest(rule)
        done = {job: self.load(data, job, digest) for job in jobs}
        todo = [job for job in jobs if done[job] is None]
        if len(todo) < len(jobs):
            self.log(
                f"{data.feature_set}{data.views_note}: "
                f"{len(jobs) - len(todo)} of {len(jobs)} jobs already done in {self.root}, "
                f"read back; fitting {len(todo)}"
            )
        fitted = fit_jobs(
            data,
            todo,
            opts.seed,
            opts.trials,
            self.log,
            opts.calibration,
            rule,
            keep=lambda job, f: self.save(f, job, digest),
            steps=lambda job: self.steps(data, job, digest),
        )
        done.update(zip(todo, fitted, strict=True))
        return [done[job] for job in jobs]

    def save(self, fitted: Fitted, job: Job, digest: str) -> StoredFitted:
        """Write a finished job's folder (under a temporary name, renamed into place)."""
        self._write_settings()
        folder = self.folder(fitted.data, job)
        tmp = temporary_name(folder)
        if tmp.exists():
            shutil.rmtree(tmp)  # a killed run's half-written folder
        tmp.mkdir(parents=True)
        files = save_head(fitted.model, job.head, tmp)
        for name in files:
            sync_file(tmp / name)
        atomic_write_json(tmp / ROW_FILE, fitted.result.as_json())
        atomic_write_json(tmp / CALIBRATOR_FILE, fitted.calibrator.as_json())
        files += [ROW_FILE, CALIBRATOR_FILE]
        atomic_write_json(
            tmp / JOB_FILE,
            {
                "format": JOBS_FORMAT,
                "format_version": JOBS_VERSION,
                **_identity(fitted.data, job, digest),
                "files": {name: sha256_file(tmp / name) for name in files},
            },
        )
        if folder.exists():
            shutil.rmtree(folder)  # one that failed its check, refitted
        os.replace(tmp, folder)
        sync_dir(folder.parent)
        shutil.rmtree(folder.with_name(f"{folder.name}.steps"), ignore_errors=True)
        return StoredFitted(fitted.result, fitted.data, fitted.calibrator, folder)

    def _write_settings(self) -> None:
        """settings.json, written before the first job or step: what they were fitted with."""
        if not self.settings_written:
            write_settings(self.root / SETTINGS_FILE, JOBS_FORMAT, JOBS_VERSION, self.settings)
            self.settings_written = True

    def load(self, data: TrainingData, job: Job, digest: str) -> StoredFitted | None:
        """A finished job read back, or None where it is not there; a folder that fails its
        checks is refitted, and the log says why."""
        folder = self.folder(data, job)
        if not folder.exists():
            return None
        try:
            return self._read(folder, data, job, digest)
        except _NotReusable as exc:
            self.log(f"{folder}: {exc}; fitting the job again")
            return None

    def _read(self, folder: Path, data: TrainingData, job: Job, digest: str) -> StoredFitted:
        meta = _read_json(folder / JOB_FILE)
        if meta.get("format") != JOBS_FORMAT or meta.get("format_version") != JOBS_VERSION:
            raise _NotReusable(f"{JOB_FILE} is not a version {JOBS_VERSION} job")
        if {k: meta.get(k) for k in ("head", "layer", "feature_set", "augmented")} != _identity(
            data, job, None
        ):
            raise _NotReusable(f"{JOB_FILE} describes another job")
        if meta.get("rule") != digest:
            raise _NotReusable("it was chosen under another selection rule or folds")
        files = meta.get("files")
        needed = {*head_files(job.head), ROW_FILE, CALIBRATOR_FILE}
        if not isinstance(files, dict) or not needed <= set(files):
            raise _NotReusable(f"{JOB_FILE} lacks the checksums of its files")
        for name in needed:
            path = folder / name
            if not path.is_file() or sha256_file(path) != files[name]:
                raise _NotReusable(f"{name} is missing or altered (checksum mismatch)")
        try:
            row = _read_json(folder / ROW_FILE)
            # JSON has no NaN: an undefined selection score was written as null.
            row["selection_score"] = _number(row.get("selection_score"))
            result = ResultRow(**row)
            calibrator = Calibrator.from_json(_read_json(folder / CALIBRATOR_FILE))
        except (TypeError, CalibrationError) as exc:
            raise _NotReusable(f"unreadable row or calibrator ({exc})") from None
        return StoredFitted(result, data, calibrator, folder)


class _NotReusable(Exception):
    """A job folder that cannot be trusted or read back; it is refitted."""


def _identity(data: TrainingData, job: Job, digest: str | None) -> dict:
    """job.json's description of the job (and of the selection rule it was chosen under)."""
    out = {
        "head": job.head,
        "layer": job.layer,
        "feature_set": data.feature_set,
        "augmented": bool(data.augmented),
    }
    return out if digest is None else {**out, "rule": digest}


def _finished(root: Path) -> bool:
    """Whether the store holds a finished job or step (a folder renamed into place)."""
    jobs = any(not p.parent.name.endswith(".tmp") for p in root.glob(f"*/*/*/{JOB_FILE}"))
    return jobs or any_step(root, "*/*/*.steps/*")


def _read_json(path: Path) -> dict:
    return read_json_object(path, _NotReusable, "a JSON object")


def _number(value) -> float:
    return math.nan if value is None else float(value)
