"""The fine-tuning loop: epochs of seeded optimizer steps, validation, early stopping, checkpoints.

Each optimizer step is seeded from (seed, epoch, batch) and each epoch's order from (seed, epoch),
so a run resumed from a checkpoint (checkpoint.py) takes the same steps as one never stopped.
Where the loop stands (LoopState) is what a checkpoint's progress.json holds.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from wav2genre_cache._io import atomic_write_json
from wav2genre_cache.audio.workers import DecodeWorkers
from wav2genre_cache.encoders.finetuned import SegmentClassifier
from wav2genre_cache.encoders.frontends import WaveformFrontEnd
from wav2genre_cache.errors import FinetuneError
from wav2genre_cache.finetune.checkpoint import changing_state, save_checkpoint, write_weights
from wav2genre_cache.finetune.data import augment_workers, epoch_batches, evaluate_tracks
from wav2genre_cache.finetune.options import FinetuneOptions
from wav2genre_cache.finetune.progress import EpochBar
from wav2genre_cache.finetune.state_files import STATE_VERSION, latest_checkpoint


@dataclass
class LoopState:
    """Where the loop stands; a checkpoint's progress.json, read back to resume from it."""

    epoch: int = 0  # epochs finished
    batches_done: int = 0  # micro-batches of the current epoch already taken
    global_step: int = 0  # optimizer steps taken in the whole run
    loss_sum: float = 0.0  # the current epoch's micro-batch losses, summed
    segments: int = 0  # training segments of the current epoch so far
    seconds: float = 0.0  # training seconds of the current epoch so far
    history: list[dict] = field(default_factory=list)  # a row per finished epoch
    best: dict | None = None  # the best epoch so far: its number, score and weights file
    bad_epochs: int = 0  # epochs since the best one
    stopped: str | None = None  # why early stopping ended the run; None while it goes on
    probed: bool = False  # the probe has fitted the head (it is not run again on resume)
    checkpoints: int = 0  # checkpoints written, which numbers the next one's name

    def to_json(self, scaler: dict | None) -> dict:
        """progress.json's fields, in their order, with float16's loss-scaler state."""
        progress = {f.name: getattr(self, f.name) for f in fields(self)}
        if not self.probed:
            del progress["probed"]  # written only once the probe has run
        return progress | {"scaler": scaler}

    @classmethod
    def from_json(cls, progress: dict) -> LoopState:
        """The state a checkpoint's progress.json holds (its scaler state is read apart)."""
        return cls(**{f.name: progress[f.name] for f in fields(cls) if f.name in progress})

    def next_epoch(self) -> None:
        """The current epoch is done: its counters start again at zero."""
        self.epoch += 1
        self.batches_done, self.loss_sum, self.segments, self.seconds = 0, 0.0, 0, 0.0


@dataclass(frozen=True)
class Trainer:
    """What the loop trains and with what: set up once per run, read by every step."""

    model: SegmentClassifier  # the encoder and its head, on `device`
    frontend: WaveformFrontEnd  # turns stacked windows into the encoder's inputs
    optimizer: torch.optim.Optimizer  # AdamW over the trainable parameter groups
    scaler: torch.amp.GradScaler | None  # float16's loss scaling; None at other precisions
    device: torch.device  # where the model runs
    dtype: torch.dtype  # autocast's precision (float32: no autocast)
    width: int  # samples of one model input window
    opts: FinetuneOptions  # the run's options
    state_dir: Path  # RUN_DIR/finetune: settings, checkpoints and best weights
    settings: dict  # what decides the result, written beside the first checkpoint
    log: Callable[[str], None]  # a line for the person watching


def train_epochs(
    t: Trainer, state: LoopState, data: dict, labels: list[str], bar: EpochBar
) -> None:
    """Train until the last epoch or early stopping, a checkpoint after each epoch."""
    with bar, DecodeWorkers(augment_workers(t.opts), warm="wav2genre_cache.audio.augment") as pool:
        while state.epoch < t.opts.epochs and not state.stopped:
            started = time.perf_counter()
            batches = epoch_batches(data["train"], t.frontend, t.width, t.opts, state.epoch, pool)
            _train_epoch(t, state, batches, bar, started)
            _end_epoch(t, state, data, labels)
            save_progress(t, state)


def _train_epoch(
    t: Trainer, state: LoopState, batches: list, bar: EpochBar, started: float
) -> None:
    """The epoch's micro-batches not taken yet, an optimizer step every grad_accum of them."""
    opts, epoch = t.opts, state.epoch
    t.model.train()
    for index, (batch, spans, y) in enumerate(batches):
        if index < state.batches_done:
            continue  # taken before the checkpoint this run resumed from
        first = index - index % opts.grad_accum  # this optimizer step's first batch
        group = min(opts.grad_accum, len(batches) - first)
        loss = _train_step(t, batch, spans, y, group, epoch, index)
        if not math.isfinite(loss):
            raise FinetuneError(_nan_message("loss", epoch, index, t.state_dir))
        state.loss_sum += loss
        state.segments += len(y)
        state.batches_done = index + 1
        if index + 1 - first == group:
            progress = (epoch + (index + 1) / len(batches)) / opts.epochs
            if not _step(t, state, progress):
                raise FinetuneError(_nan_message("gradients", epoch, index, t.state_dir))
            bar.step(epoch, state.loss_sum / state.batches_done, state.segments)
            if opts.checkpoint_every and state.global_step % opts.checkpoint_every == 0:
                state.seconds += time.perf_counter() - started
                started = time.perf_counter()
                save_progress(t, state)
    state.seconds += time.perf_counter() - started


def _train_step(t: Trainer, batch, spans, y, group: int, epoch: int, index: int) -> float:
    """Forward and backward of one micro-batch, seeded by its place; its mean loss.

    The gradient is divided by the micro-batches of its optimizer step (`group`), so a step
    that ends an epoch early weighs its batches as a full one does.
    """
    seed = int.from_bytes(
        hashlib.blake2b(f"{t.opts.seed}/{epoch}/{index}".encode(), digest_size=4).digest()
    )
    torch.manual_seed(seed)
    np.random.seed(seed)  # Wav2Vec2's SpecAugment masks draw from numpy
    x = t.frontend.inputs(batch, t.device)
    target = torch.as_tensor(y, device=t.device)
    autocast = torch.autocast(t.device.type, dtype=t.dtype, enabled=t.dtype != torch.float32)
    with autocast:
        logits = t.model(x, spans)
    loss = torch.nn.functional.cross_entropy(logits.float(), target)
    scaled = loss / group
    (t.scaler.scale(scaled) if t.scaler is not None else scaled).backward()
    return float(loss.detach())


def _step(t: Trainer, state: LoopState, progress: float) -> bool:
    """One optimizer step at the scheduled rate; False (no step taken) if a gradient is not finite.

    With float16's loss scaling an overflow is the scaler's to handle (it skips the step and
    lowers the scale); otherwise non-finite gradients would write NaN into the weights.
    """
    optimizer, scaler = t.optimizer, t.scaler
    factor = lr_factor(progress, t.opts.warmup)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    if scaler is not None:
        scaler.unscale_(optimizer)
    trainable = [p for p in t.model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    elif not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return False
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state.global_step += 1
    return True


def lr_factor(progress: float, warmup: float) -> float:
    """The rate's factor after `progress` (0 to 1) of the run: linear warm-up over the first
    `warmup` of it, then cosine decay to zero at its end."""
    progress = min(max(progress, 0.0), 1.0)
    if progress <= warmup:
        return progress / warmup if warmup > 0 else 1.0
    return 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))


def _end_epoch(t: Trainer, state: LoopState, data: dict, labels: list[str]) -> None:
    """Score the epoch on validation, keep the best weights, decide on early stopping."""
    opts, epoch = t.opts, state.epoch
    batches = max(1, state.batches_done)
    row = {
        "epoch": epoch + 1,
        "train_loss": state.loss_sum / batches,
        "seconds": round(state.seconds, 2),
        "segments_per_second": round(state.segments / max(state.seconds, 1e-9), 2),
    }
    started = time.perf_counter()
    if data["valid"]:
        scores, _ = evaluate_tracks(t.model, t.frontend, data["valid"], labels, opts, t.device)
        track = scores["track"]
        row |= {
            "valid_track_accuracy": track["accuracy"],
            "valid_track_macro_f1": track["macro_f1"],
            "valid_loss": scores["loss"],
        }
        # Ties in accuracy (a few validation tracks make many) go to the lower validation loss.
        score = [track["accuracy"], track["macro_f1"], -scores["loss"]]
    else:
        score = [float(epoch), 0.0, 0.0]  # no validation split: the last epoch is kept
    row["valid_seconds"] = round(time.perf_counter() - started, 2)
    improved = state.best is None or score > state.best["score"]
    if improved:
        name = f"best-epoch-{epoch + 1:03d}.safetensors"
        write_weights(t.state_dir / name, changing_state(t.model))
        state.best = {"epoch": epoch + 1, "score": score, "file": name}
        state.bad_epochs = 0
    else:
        state.bad_epochs += 1
    row["best"] = improved
    state.history.append(row)
    valid = (
        f", valid track accuracy {row['valid_track_accuracy']:.3f}{' (best)' if improved else ''}"
        if "valid_track_accuracy" in row
        else ""
    )
    t.log(
        f"epoch {epoch + 1}/{opts.epochs}: train loss {row['train_loss']:.4f}{valid}, "
        f"{row['seconds']:.1f} s, {row['segments_per_second']:.1f} segments/s"
    )
    if state.bad_epochs >= opts.patience and data["valid"]:
        state.stopped = (
            f"early stopping after epoch {epoch + 1}: no better validation score (track "
            f"accuracy, then macro-F1, then loss) for {opts.patience} epochs"
        )
        t.log(state.stopped)
    state.next_epoch()


def save_progress(t: Trainer, state: LoopState) -> None:
    """A checkpoint of this moment; best-weight files no longer named are removed after it.

    The run's settings are written with its first checkpoint: a run that stops before one
    (a probe gone NaN, Ctrl-C while decoding) leaves nothing that holds its folder to them.
    """
    settings_file = t.state_dir / "settings.json"
    if not settings_file.is_file():
        atomic_write_json(settings_file, {"format_version": STATE_VERSION, **t.settings})
    state.checkpoints += 1
    progress = state.to_json(t.scaler.state_dict() if t.scaler is not None else None)
    # A fresh name for every checkpoint: one is never replaced in place (the same step can be
    # saved twice, mid-epoch and at the epoch's end).
    name = f"{state.checkpoints:06d}-step-{state.global_step:08d}"
    save_checkpoint(t.state_dir, name, t.model, t.optimizer, progress)
    keep = (state.best or {}).get("file")
    for old in t.state_dir.glob("best-epoch-*.safetensors"):
        if old.name != keep:
            old.unlink(missing_ok=True)


def _nan_message(what: str, epoch: int, index: int, state_dir: Path) -> str:
    """What stopped, what is kept, and what to try."""
    folder = latest_checkpoint(state_dir)
    kept = (
        f"the last checkpoint before it ({folder.name}, finite weights) is kept in {state_dir} "
        "for inspection; the same command would take the same steps again"
        if folder is not None
        else "no checkpoint had been written yet"
    )
    return (
        f"the training {what} became NaN or infinite at epoch {epoch + 1}, batch {index + 1}; "
        f"stopped before the step, and {kept}. Try a lower --lr or --head-lr, or --precision "
        "float32, with another --out (a run folder keeps the settings it was started with)"
    )
