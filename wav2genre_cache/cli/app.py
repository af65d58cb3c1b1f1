"""The `wav2genre` command line: embed, info, train-heads, compare, run, finetune, predict, serve."""

from __future__ import annotations

import json
import signal
import warnings
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from wav2genre_cache._io import atomic_write_text, comma_list
from wav2genre_cache._version import __version__
from wav2genre_cache.cli.export import export
from wav2genre_cache.cli.finetune import (
    RUN_FINETUNE_OPTIONS,
    finetune,
    finetune_options_of_run,
    run_finetune,
)
from wav2genre_cache.cli.help_style import ConventionalCommand, ConventionalGroup
from wav2genre_cache.cli.inference import predict, serve
from wav2genre_cache.cli.info import info
from wav2genre_cache.cli.locks import output_lock
from wav2genre_cache.cli.options import (
    STAGE_ONE_OPTIONS,
    TRAIN_OPTIONS,
    GroupByOpt,
    HeapOpt,
    StrictOpt,
    embed_options,
    err,
    out,
    styled,
    with_options,
)
from wav2genre_cache.errors import Interrupted, Wav2GenreError


class _Commands(ConventionalGroup):
    """The commands, with the one place that turns a user's error into one line and exit 2,
    and Ctrl-C into one line and exit 130.

    Any Wav2GenreError a command raises is a problem the user can fix and its message says how:
    it is printed as one line, without a traceback. Other exceptions are bugs and keep theirs.
    A stage that knows what its output keeps raises Interrupted, whose message says so.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Wav2GenreError as exc:
            err.print(styled("error:", "bold red", f" {exc}"), highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            # The stages have stopped their workers on the way here; a second Ctrl-C while
            # Python exits ends the process at once.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            said = f": {exc}" if isinstance(exc, Interrupted) and str(exc) else ""
            err.print(styled("interrupted", "bold yellow", said), highlight=False)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Commands,
    add_completion=False,
    no_args_is_help=True,
    help="Music genre (or any label) classification from the cached per-layer embeddings of a "
    "pretrained audio encoder (Wav2Vec2, HuBERT, WavLM, Whisper): embed once, then train and "
    "compare light heads in seconds.",
)


def _print_version(asked: bool) -> None:
    if asked:
        out.print(f"wav2genre-cache {__version__}", highlight=False)
        raise typer.Exit()


def quiet_third_party_warnings() -> None:
    """Hide the warnings other libraries print about themselves (scikit-learn, joblib, torch,
    transformers): they repeat once per model or layer and say nothing a user can act on. The
    package's own warnings, and everything with --verbose, still show."""
    warnings.filterwarnings("ignore", module=r"^(?!wav2genre_cache)")


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", help="Also show other libraries' warnings (hidden by default)."),
    ] = False,
) -> None:
    """Music genre (or any label) classification from cached per-layer encoder embeddings."""
    if not verbose:
        quiet_third_party_warnings()


def _run_embed(opts, strict: bool, keep_freed_memory: bool = True, progress: bool = True):
    from wav2genre_cache.stage_one.run import embed_dataset

    if keep_freed_memory:
        from wav2genre_cache.encoders.cpu_tuning import keep_freed_memory as keep

        keep()
        # The Ray engine's encoder actors own their processes too: they do the same.
        opts = replace(opts, keep_freed_memory=True)
    summary = embed_dataset(opts, console=err, progress=progress)
    if not summary.already_complete:
        err.print(
            f"Embedded {summary.tracks_ok} tracks ({summary.segments} segments, "
            f"{summary.audio_seconds:,.0f} s of audio) in {summary.seconds:,.1f} s: "
            f"{summary.audio_seconds_per_second:,.1f} audio-seconds per second"
            + (f"; {summary.tracks_skipped} were already done" if summary.tracks_skipped else "")
            + (
                f"; {summary.tracks_reused} tracks' encoder features reused"
                if summary.tracks_reused
                else ""
            )
            + (
                f"; {summary.tracks_excluded} excluded by the split"
                if summary.tracks_excluded
                else ""
            )
            + f". Cache: {summary.out}",
            highlight=False,
        )
    if summary.failures:
        err.print(styled(f"{len(summary.failures)} track(s) failed and were skipped:", "yellow"))
        for _path, reason in summary.failures:
            err.print(f"  {reason}", highlight=False)
    if summary.tracks_in_cache == 0:
        err.print(styled("error:", "bold red", " no track could be embedded"))
        raise typer.Exit(1)
    if strict and summary.failures:
        raise typer.Exit(1)
    return summary


@app.command(cls=ConventionalCommand)
@with_options(STAGE_ONE_OPTIONS)
def embed(
    ctx: typer.Context,
    data: Annotated[
        list[Path],
        typer.Argument(
            metavar="DATA",
            help="Dataset folder(s) (GTZAN, FMA, MSD, MTG-Jamendo, one folder per label) or CSV "
            "manifest(s); several are read into one taxonomy with --label-map.",
        ),
    ],
    out_path: Annotated[Path, typer.Option("--out", help="The HDF5 cache to write.")],
    group_by: GroupByOpt = "artist",
    strict: StrictOpt = False,
    keep_freed_memory: HeapOpt = True,
    **stage_one,
) -> None:
    """Stage one: decode, segment and embed every track into an HDF5 cache (resumable)."""
    opts = embed_options(ctx.params, out_path)
    with output_lock(out_path):
        _run_embed(opts, strict, keep_freed_memory)


def _train(cache: Path, run_dir: Path, **options) -> dict:
    from wav2genre_cache.stage_two.train import train_heads

    return train_heads(cache, run_dir, log=lambda m: err.print(m, highlight=False), **options)


def _compare(run_dir: Path) -> None:
    from wav2genre_cache.report.compare import load_metrics, write_report
    from wav2genre_cache.report.tables import comparison_table, markdown

    written = write_report(run_dir)
    metrics = load_metrics(run_dir)
    out.print(markdown(comparison_table(metrics), metrics), highlight=False)
    err.print("Wrote " + ", ".join(str(p) for p in written.values()), highlight=False)
    for bundle in (Path(run_dir) / "best", Path(run_dir) / "bundles" / "finetuned"):
        if (bundle / "bundle.json").is_file():
            err.print(f"Bundle: {bundle}", highlight=False)


@app.command("train-heads", cls=ConventionalCommand)
@with_options(TRAIN_OPTIONS)
def train_heads_cmd(
    cache: Annotated[Path, typer.Argument(help="An HDF5 cache written by embed.")],
    run_dir: Annotated[
        Path, typer.Option("--out", help="Run folder for metrics.json and bundles.")
    ],
    feature_sets: Annotated[
        str,
        typer.Option(
            "--feature-set",
            help="Cached feature set(s) to train on, comma-separated (encoder, handcrafted, logmel).",
        ),
    ] = "encoder",
    seed: Annotated[int, typer.Option(help="Seed of every head.")] = 0,
    augmented: Annotated[
        bool,
        typer.Option(
            "--augmented/--no-augmented",
            help="Train on the augmented views of training tracks too (--no-augmented: original views only).",
        ),
    ] = True,
    **options,
) -> None:
    """Stage two: train and compare heads on cached features (no audio, no GPU)."""
    with output_lock(run_dir):
        _train(cache, run_dir, feature_sets=feature_sets, seed=seed, augmented=augmented, **options)
    err.print(
        f"Wrote {run_dir / 'metrics.json'} and bundles under {run_dir}; next: wav2genre compare {run_dir}",
        highlight=False,
    )


@app.command("cross-validate", cls=ConventionalCommand)
def cross_validate_cmd(
    cache: Annotated[Path, typer.Argument(help="An HDF5 cache written by embed.")],
    feature_set: Annotated[
        str, typer.Option(help="Cached feature set: handcrafted, encoder, ...")
    ] = "handcrafted",
    layer: Annotated[int, typer.Option(help="Layer of the feature set (0 for handcrafted).")] = 0,
    heads: Annotated[
        str,
        typer.Option(
            help="Comma-separated heads that fit in seconds on a small set: svm, rf, xgb, logreg "
            "(any vector head of train-heads works)."
        ),
    ] = "svm,rf,xgb,logreg",
    folds: Annotated[int, typer.Option(help="Folds (by track, stratified by label).")] = 5,
    repeats: Annotated[int, typer.Option(help="Repetitions with different fold assignments.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the folds and heads.")] = 0,
    group_by: GroupByOpt = "artist",
    out_json: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Also write the result as JSON; makes the run resumable: each fold's score is "
            "kept in <--out>.folds/ as it is fitted, and the same command re-run fits only the "
            "rest (other settings are refused).",
        ),
    ] = None,
) -> None:
    """Repeated stratified k-fold, grouped by artist where known: accuracy with its spread."""
    from wav2genre_cache.stage_two.crossval import cross_validate

    with output_lock(out_json) if out_json else nullcontext():
        r = cross_validate(
            cache,
            feature_set,
            list(comma_list(heads)),
            layer,
            folds,
            repeats,
            seed,
            group_by,
            keep=Path(f"{out_json}.folds") if out_json else None,
            log=lambda m: err.print(m, highlight=False),
        )
        if out_json:
            out_json.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_json, json.dumps(r, indent=1) + "\n")
    g = r["grouped_by"]
    by = "by recording" if g == "recording" else f"by {g} ({r['groups']} {g}s)"
    out.print(
        f"{r['feature_set']} (layer {r['layer']}), {r['tracks']} tracks, {len(r['labels'])} labels "
        f"(chance {r['chance']:.2f}), {r['folds']}-fold x {r['repeats']} {by}:",
        highlight=False,
    )
    if r["unmeasured_labels"]:
        out.print(
            "  not measured (their tracks only train): "
            + ", ".join(f"{k} ({v})" for k, v in r["unmeasured_labels"].items()),
            highlight=False,
            markup=False,
        )
    if r["grouped_by"] == "recording":
        out.print(
            "  no artist grouping: tracks of one artist may be on both sides of a fold, which "
            "inflates these figures",
            highlight=False,
        )
    for head, s in r["heads"].items():
        out.print(
            f"  {head:>6}: track accuracy {s['accuracy_mean']:.3f} +/- {s['accuracy_std']:.3f}, "
            f"macro-F1 {s['macro_f1_mean']:.3f} +/- {s['macro_f1_std']:.3f}",
            highlight=False,
        )


@app.command(cls=ConventionalCommand)
def compare(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by train-heads.")],
) -> None:
    """Write the model-comparison table (md/csv/json) and figures of a run, and print the table."""
    _compare(run_dir)


@app.command(cls=ConventionalCommand)
@with_options(STAGE_ONE_OPTIONS, TRAIN_OPTIONS, last=RUN_FINETUNE_OPTIONS)
def run(
    ctx: typer.Context,
    data: Annotated[
        list[Path],
        typer.Argument(
            metavar="DATA",
            help="Dataset folder(s) or CSV manifest(s); several take --label-map.",
        ),
    ],
    run_dir: Annotated[
        Path, typer.Option("--out", help="Run folder; the cache goes to RUN_DIR/cache.h5.")
    ],
    strict: StrictOpt = False,
    keep_freed_memory: HeapOpt = True,
    **options,
) -> None:
    """embed + train-heads (+ finetune) + compare in one go."""
    cache = run_dir / "cache.h5"  # embed makes run_dir, once the model has loaded
    opts = embed_options(ctx.params, cache)
    # Refused before anything runs: --finetune's options are checked first.
    tune = finetune_options_of_run(ctx.params, run_dir) if options["with_finetune"] else None
    # The run folder and its cache, which embed alone may also be asked to write.
    with output_lock(run_dir), output_lock(cache):
        _run_embed(opts, strict, keep_freed_memory)
        # With augmentation, train with and without the augmented views: the ablation.
        augmented = "both" if opts.augment else True
        train = {p.name: options[p.name] for p in TRAIN_OPTIONS}
        _train(
            cache, run_dir, feature_sets=opts.features, seed=opts.seed, augmented=augmented, **train
        )
        if tune is not None:
            run_finetune(tune)
        _compare(run_dir)


app.command(cls=ConventionalCommand)(info)
app.command(cls=ConventionalCommand)(finetune)
app.command(cls=ConventionalCommand)(predict)
app.command(cls=ConventionalCommand)(serve)
app.command(cls=ConventionalCommand)(export)


@app.command("demo-data", cls=ConventionalCommand)
def demo_data(
    folder: Annotated[Path, typer.Argument(help="Where to write the labelled demo audio.")],
    per_label: Annotated[int, typer.Option(help="Clips per label.")] = 6,
) -> None:
    """Write a small labelled folder of synthetic audio (4 labels) for an offline demonstration."""
    from wav2genre_cache.testing.synthetic import write_demo_audio

    write_demo_audio(folder, per_label=per_label)
    err.print(f"Wrote {4 * per_label} clips under {folder}", highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()
