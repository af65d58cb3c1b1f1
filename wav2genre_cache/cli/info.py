"""`info`: what a cache holds, and (--verify) whether its features are the ones written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from wav2genre_cache.cli.options import out, styled


def info(
    cache: Annotated[Path, typer.Argument(help="An HDF5 cache written by embed.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Also check every feature block against the checksums written with the cache "
            "(reads all of it; train-heads does this on open).",
        ),
    ] = False,
) -> None:
    """Show what a cache holds: tracks per split, label and dataset, layers, segments, failures."""
    from wav2genre_cache.store.cache import EmbeddingCache

    opened = EmbeddingCache(cache)
    s = opened.summary() | ({"checksums": opened.verify()} if verify else {})
    if as_json:
        print(json.dumps(s, indent=2))
        return
    out.print(styled(s["path"], "bold"))
    out.print(
        f"backbone   {s['backbone']} (revision {s['backbone_revision']}, {s['dtype']}, "
        f"{s['frontend']} front end, segments {s['window']})"
    )
    out.print(
        f"segments   {s['segments']} of {s['segment_seconds']:g} s (hop {s['hop_seconds']:g} s), views {s['views']}"
    )
    out.print(
        f"tracks     {s['tracks']['ok']} ok, {s['tracks']['failed']} failed, {s['tracks']['excluded']} excluded"
    )
    out.print("splits     " + ", ".join(f"{k} {v}" for k, v in s["tracks_per_split"].items()))
    if "checksums" in s:
        c = s["checksums"]
        out.print(
            f"checksums  ok: {c['blocks']} blocks of up to {c['rows_per_block']} segments"
            if c["checked"]
            else f"checksums  none: {c['reason']}",
            highlight=False,
        )
    artists = s["artists"]
    out.print(
        f"artists    {artists['known']}"
        + (
            f" ({artists['tracks_without']} tracks without one)"
            if artists["tracks_without"]
            else ""
        )
        + ("" if artists["known"] else ": splits cannot keep an artist on one side"),
        highlight=False,
    )
    sources = {k: v for k, v in s["tracks_per_source"].items() if k}
    if sources:
        out.print("datasets   " + ", ".join(f"{k} {v}" for k, v in sources.items()))
    if s["duplicates"]["recordings"]:
        d = s["duplicates"]
        out.print(
            f"duplicates {d['recordings']} recording(s) in {d['tracks']} tracks (same decoded "
            "audio; train-heads keeps each recording's copies on one side of the split)"
        )
    for name, f in s["features"].items():
        out.print(f"features   {name}: {f['layers']} layers x {f['dim']}")
    from rich.table import Table

    table = Table("label", "train", "valid", "test")
    for label, counts in s["tracks_per_label"].items():
        table.add_row(label, *(str(counts.get(k, 0)) for k in ("train", "valid", "test")))
    out.print(table)
    for f in s["failures"]:
        out.print(styled("failed", "yellow", f" {f['reason']}"), highlight=False)
