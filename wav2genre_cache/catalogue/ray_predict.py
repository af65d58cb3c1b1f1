"""`predict --engine ray`: a catalogue labelled on Ray Data, into predict's output file.

Stage one's runtime and pipeline (stage_one/ray_runtime.py): CPU tasks decode each file, an
actor pool of the bundle's predictor (encoder and head, loaded once per actor) labels batches
of decoded files. The driver is the one writer: it takes the rows in input order, writes each
block of them as a Parquet shard (shards.py) and, when every file has its row, merges the shards
into the --output file through the local engine's writer (inference/outputs.py), so the file
holds what local `predict --output` writes. A killed driver re-run with --resume labels only the
files that neither the output nor the shards hold yet; a file that cannot be used gets its error
row, named on the console, and the run goes on. A predictor actor that dies is not restarted by
Ray: the shards not written yet are labelled again on a fresh pipeline (a bounded number of
times; ray_runtime.retried_blocks).
"""

from __future__ import annotations

import math
import os
import pickle
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.text import Text

from wav2genre_cache.audio.decode import load_track
from wav2genre_cache.catalogue.shards import LabelShards
from wav2genre_cache.errors import AudioError, Interrupted
from wav2genre_cache.inference.batch import OutputSummary, file_progress
from wav2genre_cache.inference.inputs import SkippedInput
from wav2genre_cache.inference.outputs import (
    BundleStamp,
    OutputRows,
    bundle_stamp,
    output_row,
    pending_inputs,
)
from wav2genre_cache.stage_one.ray_runtime import (
    ActorPool,
    cpu_threads,
    module_memory,
    ray_runtime,
    retried_blocks,
)

RESUME = "the shards written so far are kept: run the same command with --resume to go on"
MAX_SHARDS = 64  # a run's files go into about this many shards...
SHARD_FILES = (16, 1024)  # ...of at least 16 and at most 1024 files each


@dataclass(frozen=True)
class CatalogueOptions:
    """How `predict --engine ray` runs: where its rows go and on which Ray runtime."""

    output: Path  # predict's --output file (.csv, .jsonl, .json, .parquet)
    resume: bool  # go on from the output's rows and the shards of a killed run
    top_k: int  # labels per file
    max_seconds: float | None = None  # longer files are skipped, their decode stopped there
    device: str = "auto"  # the actors' model: auto | cpu | cuda (one GPU per actor)
    ray_address: str | None = None  # None: a runtime on this machine, loopback only


def predict_on_ray(predictor, load, inputs: list[Path | SkippedInput], opts, console: Console):
    """Label every input the output and its shards have no row for, on Ray; then merge.

    predictor: the bundle's predictor, loaded by the driver (checked, stamped); load: a
    picklable callable that loads it again in each actor. Returns an OutputSummary.
    """
    stamp = bundle_stamp(predictor.bundle_dir, predictor.meta)
    top_k = min(opts.top_k, len(predictor.labels))
    summary = OutputSummary()
    shards = LabelShards(opts.output, stamp, top_k, opts.resume)  # refused before any file
    with OutputRows(opts.output, stamp, top_k, opts.resume) as rows:
        summary.repaired = rows.repaired
        todo = pending_inputs(inputs, rows.done | shards.done)
        summary.skipped = len(inputs) - len(todo)
        if shards.files:
            console.print(
                f"Resuming: {len(shards.done)} files labelled in {shards.dir}", highlight=False
            )
        if todo:
            pool = ActorPool(
                PredictActor,
                {"load": load, "top_k": opts.top_k, "stamp": stamp, "threads": cpu_threads()},
                opts.device,
                module_memory(
                    getattr(getattr(predictor, "backbone", None), "model", None),
                    getattr(predictor, "finetuned", None),
                ),
            )
            try:
                _label(todo, pool, shards, opts, console)
            except KeyboardInterrupt:
                raise Interrupted(
                    f"{shards.dir} keeps the rows of {len(shards.done)} files; run the same "
                    "command with --resume to go on"
                ) from None
        for row in shards.rows():  # in input order: blocks are written as they end, in order
            if row["file"] not in rows.done:
                rows.write(row)
                summary.written += 1
                summary.failed += row["error"] is not None
    shards.remove()
    return summary


def shard_files(n: int) -> int:
    """Files per shard for a run of n files: about MAX_SHARDS shards, within SHARD_FILES."""
    low, high = SHARD_FILES
    return min(high, max(low, math.ceil(n / MAX_SHARDS)))


def _label(
    todo: list[Path | SkippedInput],
    pool: ActorPool,
    shards: LabelShards,
    opts: CatalogueOptions,
    console: Console,
) -> None:
    """The pipeline over `todo`, its rows written as shards of shard_files(len(todo)) files."""
    items = []
    for i, item in enumerate(todo):
        skipped = isinstance(item, SkippedInput)
        path = item.path if skipped else item
        reason = f"{item.path}: {item.reason}" if skipped else ""
        # bytes: any file name travels, undecodable ones too
        items.append({"index": i, "file": os.fsencode(str(path)), "error": reason})
    per_shard, failed = shard_files(len(todo)), 0
    blocks = [items[i : i + per_shard] for i in range(0, len(items), per_shard)]
    decode = partial(decode_file, max_seconds=opts.max_seconds)
    say = partial(console.print, highlight=False)
    with ray_runtime(opts.ray_address, console) as ray, file_progress(console, len(todo)) as step:
        # A shard is a block: a predictor actor that dies costs the shards not written yet.
        run = retried_blocks(
            ray, blocks, decode, pool, RESUME, say, "a predictor actor", "labelling"
        )
        with closing(run) as shard_rows:
            for got in shard_rows:
                block = [pickle.loads(out["row"]) for out in got]
                for row in block:
                    if row["error"] is not None:
                        failed += 1
                        console.print(Text.assemble(("skipped", "yellow"), f" {row['error']}"))
                    step(failed)
                shards.write(block)


def decode_file(row: dict, max_seconds: float | None) -> dict:
    """Ray task: one file decoded as local predict decodes it, or the reason it cannot be."""
    samples, error = b"", row["error"]
    if not error:
        try:
            samples = pickle.dumps(load_track(os.fsdecode(row["file"]), max_seconds).samples)
        except AudioError as exc:
            error = str(exc)
    return {"index": row["index"], "file": row["file"], "error": error, "samples": samples}


class PredictActor:
    """Ray actor: the bundle's predictor, loaded once, labelling batches of decoded files."""

    def __init__(self, load, top_k: int, stamp: BundleStamp, threads: int):
        import torch

        if threads and not torch.cuda.is_available():
            torch.set_num_threads(threads)  # a CPU actor computes as local predict does
        self.predictor, self.top_k, self.stamp = load(), top_k, stamp

    def __call__(self, batch: dict) -> dict:
        files = [os.fsdecode(f) for f in batch["file"]]
        entries: list[dict] = [
            {"file": f, "error": e} for f, e in zip(files, batch["error"], strict=True)
        ]
        ok = [i for i, e in enumerate(batch["error"]) if not e]
        waves = [pickle.loads(batch["samples"][i]) for i in ok]
        results = self.predictor.predict_waveforms(waves, self.top_k) if waves else []
        for i, result in zip(ok, results, strict=True):
            entries[i] = {"file": files[i], **result}
        rows = [output_row(entry, self.stamp) for entry in entries]
        return {
            "index": batch["index"],
            "row": np.array([pickle.dumps(r) for r in rows], dtype=object),
        }
