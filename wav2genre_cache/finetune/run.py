"""`finetune`: train the encoder's top layers and the paper's head from audio; resumable.

The same decoding, segmentation, splits and augmentation as `embed` (data.py); the model is
encoders.finetuned.SegmentClassifier (model.py). A run is set up here, resumed from its last
checkpoint (checkpoint.py) if it has one, its head first fitted on the frozen states (a probe),
then trained by the loop (loop.py). The result (result.py) is a bundle like any other, plus a
row for `compare` (RUN_DIR/finetune.json) beside the frozen heads of the same split.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from safetensors import SafetensorError

from wav2genre_cache._io import read_json_object
from wav2genre_cache.audio.decode import SAMPLE_RATE
from wav2genre_cache.data.splits import split_digest
from wav2genre_cache.data.tracks import Track
from wav2genre_cache.encoders.backbone import resolve_device
from wav2genre_cache.encoders.sources import first_line
from wav2genre_cache.errors import FinetuneError
from wav2genre_cache.finetune.checkpoint import interrupt_keeps_checkpoint, load_checkpoint
from wav2genre_cache.finetune.data import (
    Example,
    decode_tracks,
    stack_windows,
    train_batches,
    training_windows,
)
from wav2genre_cache.finetune.loop import LoopState, Trainer, save_progress, train_epochs
from wav2genre_cache.finetune.model import build_model, load_encoder
from wav2genre_cache.finetune.options import (
    FinetuneOptions,
    check_options,
    check_settings,
    check_split,
    resolve_precision,
    split_tracks,
)
from wav2genre_cache.finetune.progress import EpochBar
from wav2genre_cache.finetune.result import RESULT_FILE, PeakMemory, finish

STATE_DIR = "finetune"  # RUN_DIR/finetune: settings, checkpoints, best weights, history


def finetune(opts: FinetuneOptions, console: Console | None = None, progress: bool = True) -> dict:
    """Fine-tune as `wav2genre finetune` does; resume an interrupted run with the same settings."""
    console = console or Console(stderr=True, markup=False)  # messages hold file names
    log = lambda m: console.print(m, highlight=False)  # noqa: E731
    check_options(opts)
    run_dir = Path(opts.out)
    state_dir = run_dir / STATE_DIR
    tracks = split_tracks(opts)
    labels = sorted({t.label for t in tracks})
    check_split(tracks)  # before any model loads
    device = resolve_device(opts.device)
    dtype = resolve_precision(opts.precision, device)
    settings = _run_settings(opts, tracks, labels, dtype)
    check_settings(state_dir, settings)
    if (run_dir / RESULT_FILE).is_file() and (state_dir / "settings.json").is_file():
        log(f"{run_dir}: this fine-tuning run is already complete")
        return read_json_object(run_dir / RESULT_FILE, FinetuneError, "a fine-tuning result")

    with interrupt_keeps_checkpoint(state_dir):  # where Ctrl-C has a checkpoint to keep
        encoder, extractor, frontend, info = load_encoder(opts)
        data = _decode(tracks, labels, settings["split_digest"], opts, log)
        model, optimizer = build_model(encoder, frontend, len(labels), info, opts, device)
        trainer = Trainer(
            model=model,
            frontend=frontend,
            optimizer=optimizer,
            scaler=torch.amp.GradScaler("cuda") if dtype == torch.float16 else None,
            device=device,
            dtype=dtype,
            width=frontend.input_samples(int(round(opts.segment_seconds * SAMPLE_RATE))),
            opts=opts,
            state_dir=state_dir,
            settings=settings,
            log=log,
        )
        state = _resume(trainer)
        # The bar's length; the learning-rate schedule follows the epochs' progress instead, since
        # time-stretched tracks change how many batches an augmented epoch has.
        steps_per_epoch = math.ceil(
            train_batches(data["train"], frontend, trainer.width, opts) / opts.grad_accum
        )
        if opts.probe_epochs and not state.probed:
            _probe(trainer, data["train"])
            state.probed = True
            save_progress(trainer, state)
        total_steps = steps_per_epoch * opts.epochs  # for the progress bar
        bar = EpochBar(console, opts.epochs, total_steps, state.global_step, enabled=progress)
        peak = PeakMemory(device)
        train_epochs(trainer, state, data, labels, bar)
        return finish(
            model,
            frontend,
            extractor,
            data,
            labels,
            opts,
            device,
            asdict(state),  # finish reads the state as progress.json holds it
            state_dir,
            peak,
            info,
            log,
        )


def _run_settings(
    opts: FinetuneOptions, tracks: list[Track], labels: list[str], dtype: torch.dtype
) -> dict:
    """What decides the result: the options, and what they resolved to here (the data's split
    and labels, the precision `auto` chose). A run folder resumes only with the same."""
    return {
        **opts.settings(),
        "labels": labels,
        "split_digest": split_digest([(t.track_id, t.split) for t in tracks]),
        "resolved_precision": str(dtype).removeprefix("torch."),
    }


def _decode(
    tracks: list[Track], labels: list[str], digest: str, opts: FinetuneOptions, log
) -> dict:
    """Every track decoded, by split; refused if no training track could be."""
    data = decode_tracks(tracks, labels, opts, log)
    data["split_digest"] = digest
    if not data["train"]:
        raise FinetuneError("no training track could be decoded: nothing to fine-tune on")
    check_split([e.track for e in data["train"]])  # the decoded ones may hold a single label
    return data


def _resume(t: Trainer) -> LoopState:
    """The loop's state from the run's last checkpoint (model and optimizer restored), or a fresh one."""
    t.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        progress = load_checkpoint(t.state_dir, t.model, t.optimizer)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise FinetuneError(
            f"{t.state_dir}: its checkpoint cannot be read ({first_line(exc)}); remove the folder "
            "to start over"
        ) from None
    if not progress:
        return LoopState()
    state = LoopState.from_json(progress)
    t.log(f"Resuming from {t.state_dir}: epoch {state.epoch + 1}, step {state.global_step}")
    if t.scaler is not None and progress.get("scaler"):
        t.scaler.load_state_dict(progress["scaler"])
    return state


def _probe(t: Trainer, train: list[Example]) -> None:
    """Fit the head (and layer weights) on the frozen encoder's states before fine-tuning.

    Linear probing, then fine-tuning (Kumar et al., 2022): the gradients of a random head would
    pull the pretrained layers about before it has learnt anything. The training segments'
    pooled states are computed once (the encoder in eval mode, no augmentation), then the head
    takes probe_epochs passes over them in batches of 64, which costs seconds.
    """
    started = time.perf_counter()
    model, opts = t.model, t.opts
    X, y = _frozen_states(t, train)
    params = list(model.head.parameters()) + (
        [model.layer_logits] if model.layer_logits is not None else []
    )
    optimizer = torch.optim.AdamW(params, lr=opts.head_lr, weight_decay=opts.weight_decay)
    model.train()
    torch.manual_seed(opts.seed)
    order = torch.Generator().manual_seed(opts.seed)
    loss = torch.tensor(float("nan"))
    for _ in range(opts.probe_epochs):
        perm = torch.randperm(len(X), generator=order)
        for j in range(0, len(X), 64):
            idx = perm[j : j + 64]
            if len(idx) < 2:
                continue  # BatchNorm cannot train on one row
            loss = torch.nn.functional.cross_entropy(model.head(model.mix(X[idx])), y[idx])
            if not torch.isfinite(loss):
                raise FinetuneError(
                    "the probe's loss became NaN or infinite; stopped before any checkpoint. "
                    "Try a lower --head-lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    t.log(
        f"Probe: the head fitted on the frozen states of {len(X)} training segments "
        f"({opts.probe_epochs} passes, loss {float(loss.detach()):.4f}, {time.perf_counter() - started:.1f} s)"
    )


def _frozen_states(t: Trainer, train: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """The training segments' pooled states (eval mode, no augmentation) and their labels."""
    windows = training_windows([e.samples for e in train], train, t.frontend, t.width, t.opts)
    t.model.eval()
    states, labels = [], []
    with torch.no_grad():
        for i in range(0, len(windows), t.opts.batch_size):
            rows = range(i, min(i + t.opts.batch_size, len(windows)))
            batch, spans, y = stack_windows(windows, rows, t.width, t.frontend.pads)
            states.append(t.model.states(t.frontend.inputs(batch, t.device), spans).float())
            labels.append(y)
    return torch.cat(states), torch.as_tensor(np.concatenate(labels), device=t.device)
