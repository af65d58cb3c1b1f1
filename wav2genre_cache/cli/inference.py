"""The commands that use a trained bundle: predict (files) and serve (a web page and JSON API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from wav2genre_cache.cli.export import load_predictor
from wav2genre_cache.cli.locks import output_lock
from wav2genre_cache.cli.options import (
    DEVICE,
    DeviceOpt,
    Options,
    err,
    option,
    out,
    styled,
    with_options,
)
from wav2genre_cache.errors import OptionError

if TYPE_CHECKING:  # the model's libraries load only when a command runs
    from wav2genre_cache.inference.inputs import SkippedInput
    from wav2genre_cache.inference.onnx_runtime import OnnxPredictor
    from wav2genre_cache.inference.predict import Predictor

BundleOpt = Annotated[
    Path, typer.Option(help="A bundle folder: RUN_DIR/best or RUN_DIR/bundles/<head>.")
]


OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Write a row per file (path, top labels and scores, timeline, error, bundle id and "
        "checksum) to this file instead of printing; its extension picks the format: .csv or "
        ".jsonl (appended as each file ends: a killed run keeps its rows), .json or .parquet "
        "(written at the end).",
    ),
]
RuntimeOpt = Annotated[
    str,
    typer.Option(
        help="torch: the bundle's model in PyTorch; onnx: --bundle is an export folder "
        "(wav2genre export --onnx), run by onnxruntime alone."
    ),
]
MaxMinutesOpt = Annotated[
    float | None,
    typer.Option(
        help="Skip, naming it, any file longer than this (its decode stops there): bounds "
        "the memory one file can take. Default: no limit."
    ),
]
EngineOpt = Annotated[
    str,
    typer.Option(
        help="local (this process) or ray (with --output: decode tasks and an actor pool "
        "of the bundle's model on Ray Data, on this machine or a cluster; the same rows)."
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        help="With --engine ray: the cluster to join (auto, or HOST:PORT of `ray start "
        "--head`). Default: a Ray runtime started on this machine, on 127.0.0.1 only."
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        help="With --output: predict only the files it has no row for yet, adding theirs "
        "(refused if another bundle made it)."
    ),
]


def predict(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Audio files, folders of audio files, CSV manifests (a path column)."),
    ],
    bundle: BundleOpt,
    top_k: Annotated[int, typer.Option(help="How many genres to show per file.")] = 3,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON with the per-segment timeline.")
    ] = False,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option(help="Segments per model call.")] = 8,
    strict: Annotated[
        bool,
        typer.Option(help="Exit 1 if any input cannot be predicted (by default only if none can)."),
    ] = False,
    runtime: RuntimeOpt = "torch",
    max_minutes: MaxMinutesOpt = None,
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
) -> None:
    """Label songs with a bundle: top-k labels (a tagger's tags) per file; a timeline with --json.

    Every input that cannot be used (missing, a symlink loop, a folder named like audio, not
    decodable) is named with its reason: on stderr, and as an error entry with --json.
    """
    from wav2genre_cache.catalogue.inputs import catalogue_inputs
    from wav2genre_cache.inference.outputs import bundle_stamp, model_block
    from wav2genre_cache.store.bundle_folders import resolve_bundle_dir

    if engine not in ("local", "ray") or (engine == "ray" and output is None):
        raise OptionError("--engine is local or ray; ray writes an --output file")
    if output is not None:
        _check_output_options(output, resume, as_json)  # before the model loads
    elif resume:
        raise OptionError("--resume goes with --output FILE: the file to resume")
    if max_minutes is not None and max_minutes <= 0:
        raise OptionError(f"--max-minutes must be positive, not {max_minutes:g}")
    bundle = resolve_bundle_dir(bundle)
    predictor = load_predictor(bundle, runtime, device, batch_size)
    limit = None if max_minutes is None else max_minutes * 60
    if output is not None:
        ray = (engine == "ray", device, ray_address, (bundle, runtime, device, batch_size))
        failed, done = _predict_to_file(
            predictor, catalogue_inputs(inputs), output, resume, top_k, limit, ray
        )
    else:
        results = predictor.predict_paths(catalogue_inputs(inputs), top_k=top_k, max_seconds=limit)
        _print_results(
            results, as_json, model_block(predictor.meta, bundle_stamp(bundle, predictor.meta))
        )
        failed, done = sum("error" in r for r in results), len(results)
    if failed:
        err.print(
            styled(f"{failed} of {done} inputs could not be used", "yellow"),
            highlight=False,
        )
    # All failed: exit 1 always; some failed: only with --strict, as `embed --strict` does.
    if failed and (failed == done or strict):
        raise typer.Exit(1)


def _print_results(results: list[dict], as_json: bool, model: dict) -> None:
    """predict's stdout: a line per file (errors on stderr), or the JSON of every entry, each
    with the model block (which bundle, its test figures with n and interval)."""
    if as_json:
        print(json.dumps([r | {"model": model} for r in results], indent=1))
        return
    for r in results:
        if "error" in r:
            err.print(styled("skipped", "yellow", f" {r['error']}"), highlight=False)
        else:
            top = ", ".join(f"{t['label']} {t['score']:.2f}" for t in r["labels"])
            if "tags" in r:  # a tagger: the tags over their thresholds, then the top-k
                tags = ", ".join(f"{t['label']} {t['score']:.2f}" for t in r["tags"])
                top = f"tags: {tags or '(none over its threshold)'}\ttop: {top}"
            out.print(f"{r['file']}\t{top}", highlight=False)


def _check_output_options(output: Path, resume: bool, as_json: bool) -> None:
    """Refuse --output with --json, an unknown format, or a file that exists without --resume."""
    from wav2genre_cache.inference.outputs import check_output

    if as_json:
        raise OptionError("--json prints to stdout, --output writes a file: choose one")
    check_output(output, resume)


def _predict_to_file(
    predictor: Predictor | OnnxPredictor,
    inputs: list[Path | SkippedInput],
    output: Path,
    resume: bool,
    top_k: int,
    limit: float | None,
    ray: tuple,
) -> tuple[int, int]:
    """predict --output, under a lock on the file: (inputs that failed, inputs predicted).

    ray: (whether --engine ray, its --device, its --ray-address, load_predictor's arguments)."""
    from wav2genre_cache.inference.batch import predict_to_file

    on_ray, device, address, load = ray
    with output_lock(output):  # two runs appending to one file would mix their rows
        if on_ray:  # each actor loads the predictor again, as load_predictor does here
            from functools import partial

            from wav2genre_cache.catalogue.ray_predict import CatalogueOptions, predict_on_ray

            opts = CatalogueOptions(output, resume, top_k, limit, device, address)
            summary = predict_on_ray(predictor, partial(load_predictor, *load), inputs, opts, err)
        else:
            summary = predict_to_file(
                predictor,
                inputs,
                output,
                resume=resume,
                top_k=top_k,
                max_seconds=limit,
                console=err,
            )
    skipped = f", {summary.skipped} inputs already in it skipped" if summary.skipped else ""
    err.print(f"Wrote {summary.written} rows to {output}{skipped}", highlight=False)
    return summary.failed, summary.written


# serve's options, named as inference.server.ServeOptions' fields.
SERVE_OPTIONS: Options = (
    option("host", "127.0.0.1", help="Address to bind; 127.0.0.1 keeps it on this machine."),
    option("port", 8000, help="Port."),
    option("max_upload_mb", 50.0, help="Largest upload accepted, in MB."),
    option("max_minutes", 15.0, help="Longest audio accepted, in minutes."),
    option(
        "max_decodes",
        3,
        help="Uploads decoded and held in memory at once; others wait (bounds memory: each "
        "holds up to --max-minutes of 16 kHz audio). Per worker.",
    ),
    DEVICE,
    option(
        "workers",
        1,
        help="Processes answering on the one port, each with its own model and an equal share "
        "of the cores; Ctrl-C stops them all.",
    ),
    option(
        "max_batch",
        1,
        help="Decoded uploads waiting for the model answered by one model call (at most "
        "--max-decodes). 1: one at a time (on 2 CPU cores batching measured no faster).",
    ),
    option(
        "runtime",
        "torch",
        help="torch: the bundle's model in PyTorch; onnx: --bundle is an export folder "
        "(wav2genre export --onnx), run by onnxruntime.",
    ),
)


@with_options(SERVE_OPTIONS)
def serve(bundle: BundleOpt, **options) -> None:
    """Serve the web page and JSON API: upload a song, see its genre segment by segment."""
    from wav2genre_cache.inference.server import ServeOptions
    from wav2genre_cache.inference.workers import serve as run_server
    from wav2genre_cache.store.bundle_folders import resolve_bundle_dir

    settings = ServeOptions(**options)
    bundle = resolve_bundle_dir(bundle)
    workers = f" with {settings.workers} workers" if settings.workers > 1 else ""
    err.print(
        f"Serving {bundle} on http://{settings.host}:{settings.port}/{workers}", highlight=False
    )
    run_server(bundle, settings)
