"""`finetune`: train the encoder's top layers and the paper's head from audio; resumable.

The same decoding, segmentation, splits and augmentation as `embed` (finetune_data.py); the
model is finetuned.SegmentClassifier. The head is first fitted on the frozen states (a probe),
then the loop trains. Each optimizer step is seeded from (seed, epoch, batch) and each epoch's
order from (seed, epoch), so a run resumed from a checkpoint (finetune_checkpoint.py) takes the
same steps as one never stopped. The result (finetune_result.py) is a bundle like any other,
plus a row for `compare` (RUN_DIR/finetune.json) beside the frozen heads of the same split.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from safetensors import SafetensorError

from wav2genre_cache._io import atomic_write_json
from wav2genre_cache.audio.decode import SAMPLE_RATE
from wav2genre_cache.audio.workers import DecodeWorkers
from wav2genre_cache.data.splits import split_digest
from wav2genre_cache.encoders.backbone import resolve_device
from wav2genre_cache.encoders.finetuned import (
    ENCODER_CLASSES,
    EXTRACTOR_CLASSES,
    WEIGHTED,
    SegmentClassifier,
    feature_encoder,
    keep_layers,
    transformer_layers,
)
from wav2genre_cache.encoders.frontends import frontend_for
from wav2genre_cache.encoders.sources import fetch_model, first_line
from wav2genre_cache.errors import BackboneError, FinetuneError
from wav2genre_cache.finetune.checkpoint import (
    changing_state,
    load_checkpoint,
    save_checkpoint,
    write_weights,
)
from wav2genre_cache.finetune.data import (
    Example,
    augment_workers,
    decode_tracks,
    epoch_batches,
    evaluate_tracks,
    stack_windows,
    train_batches,
    training_windows,
)
from wav2genre_cache.finetune.options import (
    FinetuneOptions,
    check_options,
    check_settings,
    check_split,
    resolve_layer,
    resolve_precision,
    resolve_unfreeze,
    split_tracks,
)
from wav2genre_cache.finetune.progress import EpochBar
from wav2genre_cache.finetune.result import RESULT_FILE, PeakMemory, finish

__all__ = ["FinetuneError", "FinetuneOptions", "finetune", "lr_factor"]

STATE_DIR = "finetune"  # RUN_DIR/finetune: settings, checkpoints, best weights, history


def finetune(opts: FinetuneOptions, console: Console | None = None, progress: bool = True) -> dict:
    """Fine-tune as `wav2genre finetune` does; resume an interrupted run with the same settings."""
    console = console or Console(stderr=True)
    log = lambda m: console.print(m, highlight=False)  # noqa: E731
    check_options(opts)
    run_dir = Path(opts.out)
    state_dir = run_dir / STATE_DIR
    tracks = split_tracks(opts)
    labels = sorted({t.label for t in tracks})
    check_split(tracks)  # before any model loads
    device = resolve_device(opts.device)
    dtype = resolve_precision(opts.precision, device)
    digest = split_digest([(t.track_id, t.split) for t in tracks])
    # What decides the result: the options, and what they resolved to here (the data's split
    # and labels, the precision `auto` chose). A run folder resumes only with the same.
    settings = {
        **opts.settings(),
        "labels": labels,
        "split_digest": digest,
        "resolved_precision": str(dtype).removeprefix("torch."),
    }
    check_settings(state_dir, settings)
    if (run_dir / RESULT_FILE).is_file() and (state_dir / "settings.json").is_file():
        log(f"{run_dir}: this fine-tuning run is already complete")
        return json.loads((run_dir / RESULT_FILE).read_text())

    encoder, extractor, frontend, info = _load_encoder(opts)
    layer, unfreeze = info["layer"], info["unfreeze"]

    data = decode_tracks(tracks, labels, opts, log)
    data["split_digest"] = digest
    train = data["train"]
    if not train:
        raise FinetuneError("no training track could be decoded: nothing to fine-tune on")
    check_split([e.track for e in train])  # the decoded ones may hold a single label

    torch.manual_seed(opts.seed)
    model = SegmentClassifier(encoder, frontend.input_name, len(labels), layer)
    _freeze(model, unfreeze, opts.train_feature_encoder)
    if opts.gradient_checkpointing:
        enable_checkpointing(encoder)
    model.to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, unfreeze, opts), lr=opts.lr)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        state = load_checkpoint(state_dir, model, optimizer)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise FinetuneError(
            f"{state_dir}: its checkpoint cannot be read ({first_line(exc)}); remove the folder "
            "to start over"
        ) from None
    if state:
        log(f"Resuming from {state_dir}: epoch {state['epoch'] + 1}, step {state['global_step']}")
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    state = state or _fresh_state()
    width = frontend.input_samples(int(round(opts.segment_seconds * SAMPLE_RATE)))
    # The bar's length; the learning-rate schedule follows the epochs' progress instead, since
    # time-stretched tracks change how many batches an augmented epoch has.
    steps_per_epoch = math.ceil(train_batches(train, frontend, width, opts) / opts.grad_accum)
    if opts.probe_epochs and not state.get("probed"):
        _probe(model, frontend, train, width, opts, device, log)
        state["probed"] = True
        _save(state_dir, model, optimizer, scaler, state, settings)

    total_steps = steps_per_epoch * opts.epochs  # for the progress bar
    bar = EpochBar(console, opts.epochs, total_steps, state["global_step"], enabled=progress)
    peak = PeakMemory(device)
    with bar, DecodeWorkers(augment_workers(opts), warm="wav2genre_cache.audio.augment") as pool:
        while state["epoch"] < opts.epochs and not state.get("stopped"):
            epoch = state["epoch"]
            started = time.perf_counter()
            batches = epoch_batches(train, frontend, width, opts, epoch, pool)
            model.train()
            for index, (batch, spans, y) in enumerate(batches):
                if index < state["batches_done"]:
                    continue  # taken before the checkpoint this run resumed from
                first = index - index % opts.grad_accum  # this optimizer step's first batch
                group = min(opts.grad_accum, len(batches) - first)
                loss = _train_step(
                    model,
                    frontend,
                    batch,
                    spans,
                    y,
                    device,
                    dtype,
                    scaler,
                    group,
                    opts,
                    epoch,
                    index,
                )
                if not math.isfinite(loss):
                    raise FinetuneError(_nan_message("loss", epoch, index, state_dir))
                state["loss_sum"] += loss
                state["segments"] += len(y)
                state["batches_done"] = index + 1
                if index + 1 - first == group:
                    progress = (epoch + (index + 1) / len(batches)) / opts.epochs
                    if not _step(model, optimizer, scaler, state, progress, opts):
                        raise FinetuneError(_nan_message("gradients", epoch, index, state_dir))
                    bar.step(epoch, state["loss_sum"] / state["batches_done"], state["segments"])
                    if opts.checkpoint_every and state["global_step"] % opts.checkpoint_every == 0:
                        state["seconds"] += time.perf_counter() - started
                        started = time.perf_counter()
                        _save(state_dir, model, optimizer, scaler, state, settings)
            state["seconds"] += time.perf_counter() - started
            _end_epoch(model, frontend, data, labels, opts, device, state, state_dir, log)
            _save(state_dir, model, optimizer, scaler, state, settings)
    return finish(
        model,
        frontend,
        extractor,
        data,
        labels,
        opts,
        device,
        state,
        state_dir,
        peak,
        info,
        log,
    )


def _load_encoder(opts: FinetuneOptions) -> tuple:
    """(encoder cut to the layer it pools, its extractor, its front end, what finish records)."""
    encoder, revision, extractor = fetch_model(opts.model)
    # Refused now, not when predict cannot load the bundle after hours of training.
    if type(encoder).__name__ not in ENCODER_CLASSES:
        raise BackboneError(
            f"{opts.model}: a {type(encoder).__name__} cannot be fine-tuned here; the encoders "
            f"that can are {', '.join(ENCODER_CLASSES)}"
        )
    if extractor is not None and type(extractor).__name__ not in EXTRACTOR_CLASSES:
        raise BackboneError(
            f"{opts.model}: its feature extractor {type(extractor).__name__} is not one a "
            f"fine-tuned bundle can hold ({', '.join(EXTRACTOR_CLASSES)})"
        )
    try:
        frontend = frontend_for(encoder, extractor, opts.window)
        n_layers = len(transformer_layers(encoder))
    except ValueError as exc:
        raise BackboneError(f"{opts.model}: {exc}") from None
    problem = frontend.segment_problem(opts.segment_seconds)
    if problem:
        raise BackboneError(problem)
    layer = resolve_layer(opts.layer, n_layers, opts.model)
    unfreeze = resolve_unfreeze(opts.unfreeze, layer, n_layers, opts.model)
    # Layer 0 (the encoder's input) keeps one layer: hidden states are recorded around layers.
    cut = layer != WEIGHTED and keep_layers(encoder, max(layer, 1))
    info = {
        "revision": revision,
        "cut": cut,
        "layer": layer,
        "unfreeze": unfreeze,
        "n_layers": n_layers,
    }
    return encoder, extractor, frontend, info


def _freeze(model: SegmentClassifier, unfreeze: int, train_feature_encoder: bool) -> None:
    """Train the head, the layer weights and the top `unfreeze` layers (all: the whole encoder)."""
    encoder = model.encoder
    layers = transformer_layers(encoder)
    was_trainable = {id(p): p.requires_grad for p in encoder.parameters()}
    encoder.requires_grad_(False)
    if unfreeze == len(layers) and unfreeze > 0:
        # Everything the model trained, except what its authors froze (Whisper's positions).
        for p in encoder.parameters():
            p.requires_grad_(was_trainable[id(p)])
        if not train_feature_encoder:
            for module in feature_encoder(encoder):
                module.requires_grad_(False)
    else:
        for block in list(layers)[len(layers) - unfreeze :]:
            block.requires_grad_(True)
    model.head.requires_grad_(True)


def enable_checkpointing(encoder: torch.nn.Module) -> None:
    """Recompute each layer's activations in the backward pass (non-reentrant: frozen inputs work)."""
    if hasattr(encoder, "activation_checkpointing_enable"):  # transformers 5's name
        encoder.activation_checkpointing_enable({"use_reentrant": False})
    else:
        encoder.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )


def _param_groups(model: SegmentClassifier, unfreeze: int, opts: FinetuneOptions) -> list[dict]:
    """AdamW groups: layer-wise decayed rates down the encoder, the head's own, no decay on norms."""
    layers = list(transformer_layers(model.encoder))
    depth = {id(p): len(layers) - 1 - i for i, blk in enumerate(layers) for p in blk.parameters()}
    groups: dict[tuple[bool, float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        in_encoder = name.startswith("encoder.")
        if in_encoder:
            # Below the stack (embeddings, position conv) counts as one layer deeper than its bottom.
            lr = opts.lr * opts.layer_decay ** depth.get(id(p), len(layers))
        else:
            lr = opts.head_lr
        decay = 0.0 if p.ndim < 2 or name == "layer_logits" else opts.weight_decay
        groups.setdefault((in_encoder, lr, decay), []).append(p)
    return [
        {"params": ps, "lr": lr, "base_lr": lr, "weight_decay": wd, "encoder": enc}
        for (enc, lr, wd), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1]))
    ]


def _train_step(
    model, frontend, batch, spans, y, device, dtype, scaler, group: int, opts, epoch, index
) -> float:
    """Forward and backward of one micro-batch, seeded by its place; its mean loss.

    The gradient is divided by the micro-batches of its optimizer step (`group`), so a step
    that ends an epoch early weighs its batches as a full one does.
    """
    seed = int.from_bytes(
        hashlib.blake2b(f"{opts.seed}/{epoch}/{index}".encode(), digest_size=4).digest()
    )
    torch.manual_seed(seed)
    np.random.seed(seed)  # Wav2Vec2's SpecAugment masks draw from numpy
    x = frontend.inputs(batch, device)
    target = torch.as_tensor(y, device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with autocast:
        logits = model(x, spans)
    loss = torch.nn.functional.cross_entropy(logits.float(), target)
    scaled = loss / group
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    return float(loss.detach())


def _probe(
    model, frontend, train: list[Example], width: int, opts: FinetuneOptions, device, log
) -> None:
    """Fit the head (and layer weights) on the frozen encoder's states before fine-tuning.

    Linear probing, then fine-tuning (Kumar et al., 2022): the gradients of a random head would
    pull the pretrained layers about before it has learnt anything. The training segments'
    pooled states are computed once (the encoder in eval mode, no augmentation), then the head
    takes probe_epochs passes over them in batches of 64, which costs seconds.
    """
    started = time.perf_counter()
    windows = training_windows([e.samples for e in train], train, frontend, width, opts)
    model.eval()
    states, labels = [], []
    with torch.no_grad():
        for i in range(0, len(windows), opts.batch_size):
            rows = range(i, min(i + opts.batch_size, len(windows)))
            batch, spans, y = stack_windows(windows, rows, width, frontend.pads)
            states.append(model.states(frontend.inputs(batch, device), spans).float())
            labels.append(y)
    X = torch.cat(states)
    y = torch.as_tensor(np.concatenate(labels), device=device)
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
    log(
        f"Probe: the head fitted on the frozen states of {len(X)} training segments "
        f"({opts.probe_epochs} passes, loss {float(loss.detach()):.4f}, {time.perf_counter() - started:.1f} s)"
    )


def _step(model, optimizer, scaler, state: dict, progress: float, opts: FinetuneOptions) -> bool:
    """One optimizer step at the scheduled rate; False (no step taken) if a gradient is not finite.

    With float16's loss scaling an overflow is the scaler's to handle (it skips the step and
    lowers the scale); otherwise non-finite gradients would write NaN into the weights.
    """
    factor = lr_factor(progress, opts.warmup)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    elif not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return False
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state["global_step"] += 1
    return True


def lr_factor(progress: float, warmup: float) -> float:
    """The rate's factor after `progress` (0 to 1) of the run: linear warm-up over the first
    `warmup` of it, then cosine decay to zero at its end."""
    progress = min(max(progress, 0.0), 1.0)
    if progress <= warmup:
        return progress / warmup if warmup > 0 else 1.0
    return 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))


def _fresh_state() -> dict:
    return {
        "epoch": 0,  # epochs finished
        "batches_done": 0,  # micro-batches of the current epoch already taken
        "global_step": 0,
        "loss_sum": 0.0,
        "segments": 0,
        "seconds": 0.0,  # training seconds of the current epoch so far
        "history": [],
        "best": None,
        "bad_epochs": 0,
        "stopped": None,
    }


def _end_epoch(model, frontend, data, labels, opts, device, state, state_dir: Path, log) -> None:
    """Score the epoch on validation, keep the best weights, decide on early stopping."""
    epoch = state["epoch"]
    batches = max(1, state["batches_done"])
    row = {
        "epoch": epoch + 1,
        "train_loss": state["loss_sum"] / batches,
        "seconds": round(state["seconds"], 2),
        "segments_per_second": round(state["segments"] / max(state["seconds"], 1e-9), 2),
    }
    started = time.perf_counter()
    if data["valid"]:
        scores, _ = evaluate_tracks(model, frontend, data["valid"], labels, opts, device)
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
    best = state["best"]
    improved = best is None or score > best["score"]
    if improved:
        name = f"best-epoch-{epoch + 1:03d}.safetensors"
        write_weights(state_dir / name, changing_state(model))
        state["best"] = {"epoch": epoch + 1, "score": score, "file": name}
        state["bad_epochs"] = 0
    else:
        state["bad_epochs"] += 1
    row["best"] = improved
    state["history"].append(row)
    valid = (
        f", valid track accuracy {row['valid_track_accuracy']:.3f}{' (best)' if improved else ''}"
        if "valid_track_accuracy" in row
        else ""
    )
    log(
        f"epoch {epoch + 1}/{opts.epochs}: train loss {row['train_loss']:.4f}{valid}, "
        f"{row['seconds']:.1f} s, {row['segments_per_second']:.1f} segments/s"
    )
    if state["bad_epochs"] >= opts.patience and data["valid"]:
        state["stopped"] = (
            f"early stopping after epoch {epoch + 1}: no better validation score (track "
            f"accuracy, then macro-F1, then loss) for {opts.patience} epochs"
        )
        log(state["stopped"])
    state |= {"epoch": epoch + 1, "batches_done": 0, "loss_sum": 0.0, "segments": 0, "seconds": 0.0}


def _save(state_dir: Path, model, optimizer, scaler, state: dict, settings: dict) -> None:
    """A checkpoint of this moment; best-weight files no longer named are removed after it.

    The run's settings are written with its first checkpoint: a run that stops before one
    (a probe gone NaN, Ctrl-C while decoding) leaves nothing that holds its folder to them.
    """
    settings_file = state_dir / "settings.json"
    if not settings_file.is_file():
        atomic_write_json(settings_file, settings)
    state["checkpoints"] = state.get("checkpoints", 0) + 1
    progress = {**state, "scaler": scaler.state_dict() if scaler is not None else None}
    # A fresh name for every checkpoint: one is never replaced in place (the same step can be
    # saved twice, mid-epoch and at the epoch's end).
    name = f"{state['checkpoints']:06d}-step-{state['global_step']:08d}"
    save_checkpoint(state_dir, name, model, optimizer, progress)
    keep = (state["best"] or {}).get("file")
    for old in state_dir.glob("best-epoch-*.safetensors"):
        if old.name != keep:
            old.unlink(missing_ok=True)


def _nan_message(what: str, epoch: int, index: int, state_dir: Path) -> str:
    """What stopped, what is kept, and what to try."""
    pointer = state_dir / "latest.json"
    kept = (
        f"the last checkpoint before it ({json.loads(pointer.read_text())['checkpoint']}, finite "
        f"weights) is kept in {state_dir} for inspection; the same command would take the same "
        "steps again"
        if pointer.is_file()
        else "no checkpoint had been written yet"
    )
    return (
        f"the training {what} became NaN or infinite at epoch {epoch + 1}, batch {index + 1}; "
        f"stopped before the step, and {kept}. Try a lower --lr or --head-lr, or --precision "
        "float32, with another --out (a run folder keeps the settings it was started with)"
    )
