"""`predict --output`: label a catalogue of files into one output file, resumably, with progress."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from wav2genre_cache._io import Pace
from wav2genre_cache.errors import Interrupted
from wav2genre_cache.inference.inputs import SkippedInput
from wav2genre_cache.inference.outputs import (
    APPENDED,
    OutputRows,
    bundle_stamp,
    output_row,
    pending_inputs,
)

if TYPE_CHECKING:
    from wav2genre_cache.inference.onnx_runtime import OnnxPredictor
    from wav2genre_cache.inference.predict import Predictor


@dataclass
class OutputSummary:
    """What a `predict --output` run did."""

    written: int = 0  # rows this run added, errors included
    failed: int = 0  # of them, files that could not be used
    skipped: int = 0  # inputs with a row already (a resumed run's, or given twice)
    repaired: bool = False  # a killed run's half-written last line was dropped


def predict_to_file(
    predictor: Predictor | OnnxPredictor,
    inputs: list[Path | SkippedInput],
    output: Path,
    *,
    resume: bool,
    top_k: int,
    max_seconds: float | None,
    console: Console,
) -> OutputSummary:
    """Predict every input that has no row in `output` yet, adding a row per file as it ends;
    a file that cannot be used gets an error row (named on the console) and the run goes on."""
    stamp = bundle_stamp(predictor.bundle_dir, predictor.meta)
    summary = OutputSummary()
    with OutputRows(output, stamp, min(top_k, len(predictor.labels)), resume) as rows:
        summary.repaired = rows.repaired
        if rows.repaired:
            console.print(
                f"{output}: dropped a half-written last row (a killed run's)", highlight=False
            )
        todo = pending_inputs(inputs, rows.done)
        summary.skipped = len(inputs) - len(todo)
        # One file at a time: each row is written as its file ends, and a row never depends
        # on which files shared its batch, so a resumed run's rows are an uninterrupted run's.
        try:
            with file_progress(console, len(todo)) as advance:
                for item in todo:
                    (entry,) = predictor.predict_paths([item], top_k=top_k, max_seconds=max_seconds)
                    rows.write(output_row(entry, stamp))
                    summary.written += 1
                    if "error" in entry:
                        summary.failed += 1
                        said = Text.assemble(("skipped", "yellow"), f" {entry['error']}")
                        console.print(said, highlight=False)
                    advance(summary.failed)
        except KeyboardInterrupt:
            raise Interrupted(interrupted_output(output, rows)) from None
    return summary


def interrupted_output(output: Path, rows: OutputRows) -> str:
    """What a Ctrl-C leaves in `output`: the rows so far (.csv, .jsonl), or the file as it was."""
    if rows.format in APPENDED:
        return (
            f"{output} keeps its {len(rows.done)} rows; run the same command with --resume "
            "to predict the rest"
        )
    return f"{output} is written at the end only: this run added nothing to it"


@contextmanager
def file_progress(console: Console, total: int) -> Iterator[Callable[[int], None]]:
    """advance(failed) after each file: a progress bar on a terminal, else (a log) a plain
    line every PLAIN_PROGRESS_SECONDS."""
    plain = None if console.is_terminal else Pace()
    bar = Progress(
        TextColumn("[bold]predict"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        TimeRemainingColumn(),
        console=console,
        disable=plain is not None,
    )
    start, done = time.perf_counter(), 0

    def advance(failed: int) -> None:
        nonlocal done
        done += 1
        bar.advance(task)
        if plain is not None and plain(force=done == total):
            rate = done / max(time.perf_counter() - start, 1e-9)
            console.print(
                f"predict: {done}/{total} files, {failed} failed, {rate:.1f} files/s",
                highlight=False,
            )

    with bar:
        task = bar.add_task("predict", total=total)
        yield advance
