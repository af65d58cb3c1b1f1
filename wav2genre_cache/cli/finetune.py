"""The `finetune` command: its options, and the fine-tuning step of `run --finetune`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wav2genre_cache._io import comma_list
from wav2genre_cache.cli.options import (
    AugmentOpt,
    DatasetOpt,
    DeviceOpt,
    HopOpt,
    ModelOpt,
    NoiseDirOpt,
    SegmentOpt,
    SplitDirOpt,
    SplitOpt,
    WindowOpt,
    WorkersOpt,
    err,
)
from wav2genre_cache.errors import OptionError

LayerOpt = Annotated[
    str,
    typer.Option(
        "--layer",
        help="weighted (a learned softmax-weighted sum of every layer), last, or a layer number "
        "(layers above it are not run).",
    ),
]
UnfreezeOpt = Annotated[
    str,
    typer.Option(
        "--unfreeze",
        help="Top transformer layers to train: N (0: only the head and layer weights), or all.",
    ),
]


def finetune(
    data: Annotated[Path, typer.Argument(help="Dataset folder or CSV manifest.")],
    run_dir: Annotated[
        Path,
        typer.Option("--out", help="Run folder (may be a train-heads run of the same split)."),
    ],
    model: ModelOpt = "facebook/wav2vec2-base-960h",
    dataset: DatasetOpt = "auto",
    split: SplitOpt = "random",
    split_dir: SplitDirOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, initialisation and order.")] = 0,
    segment_seconds: SegmentOpt = 10.0,
    hop_seconds: HopOpt = None,
    window: WindowOpt = None,
    layer: LayerOpt = "weighted",
    unfreeze: UnfreezeOpt = "2",
    train_feature_encoder: Annotated[
        bool, typer.Option(help="Also train the convolutional feature encoder (frozen by default).")
    ] = False,
    epochs: Annotated[int, typer.Option(help="Most epochs (early stopping may end sooner).")] = 10,
    batch_size: Annotated[int, typer.Option(help="Model inputs per micro-batch.")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option(help="Learning rate of the top unfrozen layer.")] = 5e-5,
    head_lr: Annotated[float, typer.Option(help="Learning rate of the head.")] = 1e-3,
    layer_decay: Annotated[
        float, typer.Option(help="Layer-wise decay: each layer down gets this times the rate.")
    ] = 0.8,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    warmup: Annotated[
        float, typer.Option(help="Fraction of steps of linear warm-up before cosine decay.")
    ] = 0.1,
    precision: Annotated[
        str,
        typer.Option(
            help="auto (bfloat16 autocast on a CUDA GPU that has it, else float32) | float32 | "
            "bfloat16 | float16 (CUDA, with loss scaling)"
        ),
    ] = "auto",
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="Recompute activations in the backward pass: less memory.")
    ] = False,
    probe_epochs: Annotated[
        int,
        typer.Option(
            help="Before fine-tuning, passes of the head over the frozen encoder's states of the "
            "training segments, computed once (linear probe, then fine-tune; 0: none)."
        ),
    ] = 50,
    patience: Annotated[
        int,
        typer.Option(
            help="Epochs without a better validation score (track accuracy, then macro-F1, then "
            "loss) before stopping."
        ),
    ] = 3,
    augment: AugmentOpt = "",
    augment_prob: Annotated[
        float, typer.Option(help="Chance that a training track is augmented in an epoch.")
    ] = 0.5,
    noise_dir: NoiseDirOpt = None,
    checkpoint_every: Annotated[
        int, typer.Option(help="Optimizer steps between checkpoints (0: at each epoch's end).")
    ] = 0,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = None,
) -> None:
    """Fine-tune the encoder's top layers with the paper's head, from audio; resumable; a bundle."""
    from wav2genre_cache.finetune.options import FinetuneOptions

    opts = FinetuneOptions(
        data=str(data),
        out=str(run_dir),
        model=model,
        dataset=dataset,
        split=split,
        split_dir=str(split_dir) if split_dir else None,
        seed=seed,
        segment_seconds=segment_seconds,
        hop_seconds=hop_seconds,
        window=window,
        layer=layer,
        unfreeze=unfreeze,
        train_feature_encoder=train_feature_encoder,
        epochs=epochs,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        head_lr=head_lr,
        layer_decay=layer_decay,
        weight_decay=weight_decay,
        warmup=warmup,
        precision=precision,
        gradient_checkpointing=gradient_checkpointing,
        probe_epochs=probe_epochs,
        patience=patience,
        augment=comma_list(augment),
        augment_prob=augment_prob,
        noise_dir=str(noise_dir) if noise_dir else None,
        checkpoint_every=checkpoint_every,
        device=device,
        workers=workers,
    )
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


def finetune_options_of_run(params: dict, run_dir: Path, epochs: int, unfreeze: str, layer: str):
    """FinetuneOptions for `run --finetune`: run's data, model, split and segments, so the
    fine-tuned rows share the frozen heads' split."""
    from wav2genre_cache.finetune.options import FinetuneOptions, split_tracks

    data = params["data"] if isinstance(params["data"], list) else [params["data"]]
    if len(data) > 1 or params.get("label_map"):
        raise OptionError("--finetune reads one dataset without a label map; run it on one DATA")
    options = FinetuneOptions(
        data=str(data[0]),
        out=str(run_dir),
        model=params["model"],
        dataset=params["dataset"],
        split=params["split"],
        split_dir=str(params["split_dir"]) if params["split_dir"] else None,
        seed=params["seed"],
        segment_seconds=params["segment_seconds"],
        hop_seconds=params["hop_seconds"],
        window=params["window"],
        layer=layer,
        unfreeze=unfreeze,
        epochs=epochs,
        augment=comma_list(params["augment"]),
        noise_dir=str(params["noise_dir"]) if params["noise_dir"] else None,
        device=params["device"],
        workers=params["workers"],
    )
    split_tracks(options)  # refuses a tag dataset (or a split it cannot use) before any work
    return options
