"""`info`: what a cache holds, and (--verify) whether its features are the ones written; or
what a bundle is (head, layer, backbone, labels, test figures) and whether its files are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from wav2genre_cache.cli.options import out, styled


def info(
    cache: Annotated[
        Path,
        typer.Argument(
            help="An HDF5 cache written by embed, or a bundle folder (a run folder: its best/).",
            metavar="CACHE_OR_BUNDLE",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Also check every feature block against the checksums written with the cache "
            "(reads all of it; train-heads does this on open), or every file of a bundle.",
        ),
    ] = False,
) -> None:
    """Show what a cache holds (tracks per split, label and dataset, layers, segments, failures),
    or what a bundle is (head, layer, backbone, labels, test figures with n and interval)."""
    if cache.is_dir():
        _bundle_info(cache, as_json, verify)
        return
    from wav2genre_cache.store.cache import EmbeddingCache

    opened = EmbeddingCache(cache)
    s = opened.summary() | ({"checksums": opened.verify()} if verify else {})
    if as_json:
        print(json.dumps(s, indent=2))
        return
    _print_cache(s)


def _print_cache(s: dict) -> None:
    """The cache's summary, a line per aspect and a table of tracks per label and split."""
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


def _bundle_info(path: Path, as_json: bool, verify: bool) -> None:
    """A bundle's summary (a run folder's best/); with verify, every file checked by loading it."""
    from wav2genre_cache.store.bundle_folders import resolve_bundle_dir
    from wav2genre_cache.store.bundles import load_bundle, read_bundle_json
    from wav2genre_cache.store.model_card import CARD_FILE, bundle_summary, figure

    directory = resolve_bundle_dir(path)
    s = {"path": str(directory), **bundle_summary(read_bundle_json(directory))}
    if verify:
        load_bundle(directory)  # raises BundleError naming the first file that was altered
        s["checksums"] = "ok"
    s["model_card"] = str(directory / CARD_FILE) if (directory / CARD_FILE).is_file() else None
    if as_json:
        print(json.dumps(s, indent=2))
        return
    t = s["test"]
    unmeasured = s["unmeasured_labels"]
    lines = {
        "model": s["name"],
        "head": f"{s['head']}, {s['feature_set']} features, {s['layer_name']}",
        "backbone": f"{s['backbone']} (revision {s['backbone_revision']})"
        + (": untrained, its figures mean nothing" if s["untrained_backbone"] else ""),
        "labels": f"{len(s['labels'])}: {', '.join(s['labels'])}"
        + (f" (not measured on test: {', '.join(unmeasured)})" if unmeasured else ""),
        "test": f"track accuracy {figure(t['track_accuracy'], t['track_accuracy_ci'], t['tracks'])}",
        "": f"track macro-F1 {figure(t['track_macro_f1'], t['track_macro_f1_ci'], t['tracks'])}",
        "checksums": s.get("checksums"),
        "card": s["model_card"] or "none (a bundle written before model cards)",
    }
    out.print(styled(s["path"], "bold"))
    for key, text in lines.items():
        if text is not None:
            out.print(f"{key:<10} {text}", highlight=False, markup=False)
