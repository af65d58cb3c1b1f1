"""The `finetune` command: its options, and the fine-tuning step of `run --finetune`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wav2genre_cache._io import comma_list
from wav2genre_cache.cli.locks import output_lock
from wav2genre_cache.cli.options import (
    AUGMENT,
    DATASET,
    DEVICE,
    GROUP_BY,
    HOP,
    MODEL,
    NOISE_DIR,
    SEGMENT,
    SPLIT,
    SPLIT_DIR,
    WINDOW,
    WORKERS,
    Options,
    err,
    option,
    path_text,
    with_options,
)
from wav2genre_cache.errors import OptionError

UNFREEZE = option(
    "unfreeze",
    "2",
    "--unfreeze",
    help="Top transformer layers to train: N (0: only the head and layer weights), or all.",
)

# finetune's options, in the order --help lists them; named as FinetuneOptions' fields.
FINETUNE_OPTIONS: Options = (
    MODEL,
    DATASET,
    SPLIT,
    SPLIT_DIR,
    option("seed", 0, help="Seed of the split, initialisation and order."),
    GROUP_BY,
    SEGMENT,
    HOP,
    WINDOW,
    option(
        "layer",
        "weighted",
        "--layer",
        help="weighted (a learned softmax-weighted sum of every layer), last, or a layer number "
        "(layers above it are not run).",
    ),
    UNFREEZE,
    option(
        "train_feature_encoder",
        False,
        help="Also train the convolutional feature encoder (frozen by default).",
    ),
    option("epochs", 10, help="Most epochs (early stopping may end sooner)."),
    option("batch_size", 8, help="Model inputs per micro-batch."),
    option("grad_accum", 1, help="Micro-batches per optimizer step."),
    option("lr", 5e-5, help="Learning rate of the top unfrozen layer."),
    option("head_lr", 1e-3, help="Learning rate of the head."),
    option("layer_decay", 0.8, help="Layer-wise decay: each layer down gets this times the rate."),
    option("weight_decay", 0.01, help="AdamW weight decay."),
    option("warmup", 0.1, help="Fraction of steps of linear warm-up before cosine decay."),
    option(
        "precision",
        "auto",
        help="auto (bfloat16 autocast on a CUDA GPU that has it, else float32) | float32 | "
        "bfloat16 | float16 (CUDA, with loss scaling)",
    ),
    option(
        "gradient_checkpointing",
        False,
        help="Recompute activations in the backward pass: less memory.",
    ),
    option(
        "probe_epochs",
        50,
        help="Before fine-tuning, passes of the head over the frozen encoder's states of the "
        "training segments, computed once (linear probe, then fine-tune; 0: none).",
    ),
    option(
        "patience",
        3,
        help="Epochs without a better validation score (track accuracy, then macro-F1, then "
        "loss) before stopping.",
    ),
    AUGMENT,
    option("augment_prob", 0.5, help="Chance that a training track is augmented in an epoch."),
    NOISE_DIR,
    option(
        "checkpoint_every", 0, help="Optimizer steps between checkpoints (0: at each epoch's end)."
    ),
    DEVICE,
    WORKERS,
)

# run's options for its --finetune step, after its own.
RUN_FINETUNE_OPTIONS: Options = (
    option(
        "with_finetune",
        False,
        "--finetune/--no-finetune",
        help="Also fine-tune the encoder on the same split (its rows join the comparison).",
    ),
    option("finetune_epochs", 10, help="Epochs of --finetune."),
    UNFREEZE,
    option(
        "finetune_layer",
        "weighted",
        help="--layer of --finetune: weighted, last or a layer number.",
    ),
)


@with_options(FINETUNE_OPTIONS)
def finetune(
    data: Annotated[Path, typer.Argument(help="Dataset folder or CSV manifest.")],
    run_dir: Annotated[
        Path,
        typer.Option("--out", help="Run folder (may be a train-heads run of the same split)."),
    ],
    **options,
) -> None:
    """Fine-tune the encoder's top layers with the paper's head, from audio; resumable; a bundle."""
    opts = finetune_options(data, run_dir, options)
    with output_lock(run_dir):
        run_finetune(opts)
    err.print(
        f"Wrote {run_dir / 'finetune.json'}, {run_dir / 'bundles' / 'finetuned'} and "
        f"{run_dir / 'finetune_curve.png'}; next: wav2genre compare {run_dir}",
        highlight=False,
    )


def run_finetune(opts) -> dict:
    """Fine-tune with the command line's console (run --finetune calls it too)."""
    from wav2genre_cache.finetune.run import finetune as finetune_run

    return finetune_run(opts, console=err)


def finetune_options(data: Path, run_dir: Path, options: dict):
    """FinetuneOptions from DATA, --out and options named as its fields, with the CLI's types."""
    from wav2genre_cache.finetune.options import FinetuneOptions

    converted = {
        "data": str(data),
        "out": str(run_dir),
        "split_dir": path_text(options["split_dir"]),
        "augment": comma_list(options["augment"]),
        "noise_dir": path_text(options["noise_dir"]),
    }
    return FinetuneOptions(**(options | converted))


# The options of run that `run --finetune` takes as they are: its model, split and segments.
TAKEN_FROM_RUN = (
    "model",
    "dataset",
    "split",
    "split_dir",
    "seed",
    "group_by",
    "segment_seconds",
    "hop_seconds",
    "window",
    "augment",
    "noise_dir",
    "device",
    "workers",
)


def finetune_options_of_run(params: dict, run_dir: Path):
    """FinetuneOptions for `run --finetune` from run's parameters: run's data, model, split and
    segments, so the fine-tuned rows share the frozen heads' split."""
    from wav2genre_cache.finetune.options import split_tracks

    data = params["data"] if isinstance(params["data"], list) else [params["data"]]
    if len(data) > 1 or params.get("label_map"):
        raise OptionError("--finetune reads one dataset without a label map; run it on one DATA")
    chosen = {
        "layer": params["finetune_layer"],
        "unfreeze": params["unfreeze"],
        "epochs": params["finetune_epochs"],
    }
    options = finetune_options(data[0], run_dir, {k: params[k] for k in TAKEN_FROM_RUN} | chosen)
    split_tracks(options)  # refuses a tag dataset (or a split it cannot use) before any work
    return options
