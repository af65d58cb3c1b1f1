"""The `wav2genre` command line: embed, info, train-heads, compare, run, predict, serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Music genre (or any label) classification from cached per-layer Wav2Vec2 embeddings.",
)
# soft_wrap: file paths in messages stay on one line, whatever the terminal width.
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="Hugging Face id, a local save_pretrained directory, or the untrained built-ins "
        "random-base / random-tiny (for tests and speed runs; their accuracy means nothing).",
    ),
]


class UserError(Exception):
    """Any of the package's own errors: printed as one clear message, exit status 2."""


def _user_errors() -> tuple[type[Exception], ...]:
    from .audio import AudioError
    from .backbone import BackboneError
    from .cache import CacheError
    from .datasets import DatasetError

    return (AudioError, BackboneError, CacheError, DatasetError, UserError)


def _fail(exc: Exception) -> None:
    err.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
    raise typer.Exit(2)


def _embed_options(
    data,
    out_path,
    dataset,
    model,
    segment_seconds,
    hop_seconds,
    batch_size,
    device,
    dtype,
    workers,
    split,
    split_dir,
    seed,
    features,
):
    from .embed import EmbedOptions

    return EmbedOptions(
        data=str(data),
        out=str(out_path),
        dataset=dataset,
        model=model,
        segment_seconds=segment_seconds,
        hop_seconds=hop_seconds,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        workers=workers,
        split=split,
        split_dir=str(split_dir) if split_dir else None,
        seed=seed,
        features=tuple(f.strip() for f in features.split(",") if f.strip()),
    )


def _run_embed(opts, strict: bool, progress: bool = True):
    from .embed import embed_dataset

    summary = embed_dataset(opts, console=err, progress=progress)
    if not summary.already_complete:
        err.print(
            f"Embedded {summary.tracks_ok} tracks ({summary.segments} segments, "
            f"{summary.audio_seconds:,.0f} s of audio) in {summary.seconds:,.1f} s: "
            f"{summary.audio_seconds_per_second:,.1f} audio-seconds per second"
            + (f"; {summary.tracks_skipped} were already done" if summary.tracks_skipped else "")
            + (
                f"; {summary.tracks_excluded} excluded by the split"
                if summary.tracks_excluded
                else ""
            )
            + f". Cache: {summary.out}",
            highlight=False,
        )
    if summary.failures:
        err.print(f"[yellow]{len(summary.failures)} track(s) failed and were skipped:[/yellow]")
        for _path, reason in summary.failures:
            err.print(f"  {reason}", highlight=False)
    if summary.tracks_ok == 0:
        err.print("[bold red]error:[/bold red] no track could be embedded")
        raise typer.Exit(1)
    if strict and summary.failures:
        raise typer.Exit(1)
    return summary


@app.command()
def embed(
    data: Annotated[
        Path,
        typer.Argument(help="Dataset folder (GTZAN, FMA, one folder per label) or CSV manifest."),
    ],
    out_path: Annotated[Path, typer.Option("--out", help="The HDF5 cache to write.")],
    dataset: Annotated[str, typer.Option(help="auto | gtzan | folder | csv | fma")] = "auto",
    model: ModelOpt = "facebook/wav2vec2-base-960h",
    segment_seconds: Annotated[float, typer.Option(help="Segment length in seconds.")] = 10.0,
    hop_seconds: Annotated[
        float | None, typer.Option(help="Hop between segment starts (default: the segment length).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Segments per model call.")] = 8,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    dtype: Annotated[
        str,
        typer.Option(help="auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16"),
    ] = "auto",
    workers: Annotated[
        int | None, typer.Option(help="Decode worker processes (0: decode in the main process).")
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            help="random (stratified 80/10/10, or the dataset's own) | gtzan-ff | a CSV of track_id,split"
        ),
    ] = "random",
    split_dir: Annotated[
        Path | None,
        typer.Option(help="Folder of train/valid/test_filtered.txt for --split gtzan-ff."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random split.")] = 0,
    features: Annotated[
        str, typer.Option(help="Feature sets to compute, comma-separated.")
    ] = "wav2vec2",
    strict: Annotated[bool, typer.Option(help="Exit non-zero if any track fails.")] = False,
) -> None:
    """Stage one: decode, segment and embed every track into an HDF5 cache (resumable)."""
    try:
        opts = _embed_options(
            data,
            out_path,
            dataset,
            model,
            segment_seconds,
            hop_seconds,
            batch_size,
            device,
            dtype,
            workers,
            split,
            split_dir,
            seed,
            features,
        )
        _run_embed(opts, strict)
    except _user_errors() as exc:
        _fail(exc)


@app.command()
def info(
    cache: Annotated[Path, typer.Argument(help="An HDF5 cache written by embed.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show what a cache holds: tracks per split and label, layers, segments, failures."""
    from .cache import EmbeddingCache

    try:
        s = EmbeddingCache(cache).summary()
    except _user_errors() as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(s, indent=2))
        return
    out.print(f"[bold]{s['path']}[/bold]")
    out.print(f"backbone   {s['backbone']} (revision {s['backbone_revision']}, {s['dtype']})")
    out.print(
        f"segments   {s['segments']} of {s['segment_seconds']:g} s (hop {s['hop_seconds']:g} s), views {s['views']}"
    )
    out.print(
        f"tracks     {s['tracks']['ok']} ok, {s['tracks']['failed']} failed, {s['tracks']['excluded']} excluded"
    )
    out.print("splits     " + ", ".join(f"{k} {v}" for k, v in s["tracks_per_split"].items()))
    for name, f in s["features"].items():
        out.print(f"features   {name}: {f['layers']} layers x {f['dim']}")
    from rich.table import Table

    table = Table("label", "train", "valid", "test")
    for label, counts in s["tracks_per_label"].items():
        table.add_row(label, *(str(counts.get(k, 0)) for k in ("train", "valid", "test")))
    out.print(table)
    for f in s["failures"]:
        out.print(f"[yellow]failed[/yellow] {f['reason']}", highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()
