"""`finetune`: train the encoder's top layers and the paper's head from audio; resumable.

The same decoding, segmentation, splits and augmentation as `embed`; the model is
finetuned.SegmentClassifier. Each optimizer step is seeded from (seed, epoch, batch) and each
epoch's order from (seed, epoch), so a run resumed from a checkpoint (finetune_checkpoint.py)
takes the same steps as one never stopped. The result is a bundle like any other, plus a row
for `compare` (RUN_DIR/finetune.json) beside the frozen heads of the same split.
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from .audio import SAMPLE_RATE, try_load_track
from .augment import AUGMENTATIONS, augment_track
from .backbone import resolve_device
from .bundles import write_finetuned_bundle
from .datasets import (
    EXCLUDED,
    SPLITS,
    Track,
    assign_splits,
    detect_layout,
    discover,
    split_digest,
)
from .errors import BackboneError, OptionError, Wav2GenreError
from .feature_sets import ENCODER
from .finetune_checkpoint import (
    changing_state,
    load_checkpoint,
    read_weights,
    save_checkpoint,
    write_weights,
)
from .finetune_progress import EpochBar, draw_curve
from .finetuned import (
    WEIGHTED,
    SegmentClassifier,
    feature_encoder,
    keep_layers,
    segment_probabilities,
    track_windows,
    transformer_layers,
    window_batches,
)
from .frontends import frontend_for
from .jsonable import jsonable
from .metrics import classification_metrics
from .model_sources import DEFAULT_MODEL, fetch_model
from .workers import DecodeWorkers

STATE_DIR = "finetune"  # RUN_DIR/finetune: settings, checkpoints, best weights, history
RESULT_FILE = "finetune.json"  # RUN_DIR/finetune.json: written last; its presence means done
BUNDLE = "bundles/finetuned"
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


class FinetuneError(Wav2GenreError):
    """A fine-tuning run that cannot go on; the message says why and what is kept."""


@dataclass(frozen=True)
class FinetuneOptions:
    """The settings of one `finetune` run (the CLI's options)."""

    data: str
    out: str
    model: str = DEFAULT_MODEL
    dataset: str = "auto"
    split: str = "random"
    split_dir: str | None = None
    seed: int = 0
    segment_seconds: float = 10.0
    hop_seconds: float | None = None
    window: str | None = None
    layer: str = "weighted"  # weighted | last | a hidden-state index
    unfreeze: str = "2"  # top transformer layers trained: N, or all
    train_feature_encoder: bool = False
    epochs: int = 10
    batch_size: int = 8  # windows per micro-batch
    grad_accum: int = 1
    lr: float = 5e-5  # the top unfrozen layer's; lower layers get layer_decay per layer
    head_lr: float = 1e-3  # the head's and the layer weights'
    layer_decay: float = 0.8
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of the optimizer steps
    precision: str = "auto"
    gradient_checkpointing: bool = False
    probe_epochs: int = 50  # passes of the head over the frozen states before fine-tuning
    patience: int = 3  # epochs without a better validation track accuracy before stopping
    augment: tuple[str, ...] = ()
    augment_prob: float = 0.5
    noise_dir: str | None = None
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0: each epoch's end
    device: str = "auto"
    workers: int | None = None

    def settings(self) -> dict:
        """What decides the result: compared with an existing run folder before resuming."""
        d = asdict(self)
        for key in ("out", "device", "workers", "checkpoint_every"):
            d.pop(key)
        d["augment"] = list(self.augment)
        return d


@dataclass
class Example:
    """One track's decoded audio and label index."""

    track: Track
    samples: np.ndarray
    label: int


def finetune(opts: FinetuneOptions, console: Console | None = None, progress: bool = True) -> dict:
    """Fine-tune as `wav2genre finetune` does; resume an interrupted run with the same settings."""
    console = console or Console(stderr=True)
    log = lambda m: console.print(m, highlight=False)  # noqa: E731
    _check_options(opts)
    run_dir = Path(opts.out)
    state_dir = run_dir / STATE_DIR
    _check_settings(state_dir, opts.settings())
    if (run_dir / RESULT_FILE).is_file() and (state_dir / "settings.json").is_file():
        log(f"{run_dir}: this fine-tuning run is already complete")
        return json.loads((run_dir / RESULT_FILE).read_text())
    tracks = _split_tracks(opts)
    labels = sorted({t.label for t in tracks})
    _check_split(tracks)  # before any model loads
    device = resolve_device(opts.device)
    dtype = _precision(opts.precision, device)

    encoder, revision, extractor = fetch_model(opts.model)
    try:
        frontend = frontend_for(encoder, extractor, opts.window)
    except ValueError as exc:
        raise BackboneError(f"{opts.model}: {exc}") from None
    problem = frontend.segment_problem(opts.segment_seconds)
    if problem:
        raise BackboneError(problem)
    try:
        n_layers = len(transformer_layers(encoder))
    except ValueError as exc:
        raise BackboneError(f"{opts.model}: {exc}") from None
    layer = _layer(opts.layer, n_layers, opts.model)
    unfreeze = _unfreeze(opts.unfreeze, layer, n_layers, opts.model)
    cut = layer != WEIGHTED and keep_layers(encoder, layer)

    data = _decode(tracks, labels, opts, log)
    data["split_digest"] = split_digest([(t.track_id, t.split) for t in tracks])
    train = data["train"]
    if not train:
        raise FinetuneError("no training track could be decoded: nothing to fine-tune on")
    if len({e.label for e in train}) < 2:
        raise FinetuneError(
            f"the training split holds a single label ({labels[train[0].label]!r}); "
            "fine-tuning a classifier needs at least two"
        )

    torch.manual_seed(opts.seed)
    model = SegmentClassifier(encoder, frontend.input_name, len(labels), layer)
    _freeze(model, unfreeze, opts.train_feature_encoder)
    if opts.gradient_checkpointing:
        enable_checkpointing(encoder)
    model.to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, unfreeze, opts), lr=opts.lr)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    state_dir.mkdir(parents=True, exist_ok=True)
    settings_file = state_dir / "settings.json"
    if not settings_file.is_file():
        settings_file.write_text(json.dumps(opts.settings(), indent=1))
    try:
        state = load_checkpoint(state_dir, model, optimizer)
    except (OSError, ValueError, KeyError) as exc:
        raise FinetuneError(
            f"{state_dir}: its checkpoint cannot be read ({exc}); remove the folder to start over"
        ) from None
    if state:
        log(f"Resuming from {state_dir}: epoch {state['epoch'] + 1}, step {state['global_step']}")
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    state = state or _fresh_state()
    if opts.probe_epochs and not state.get("probed"):
        _probe(model, frontend, train, opts, device, log)
        state["probed"] = True
        _save(state_dir, model, optimizer, scaler, state)

    width = frontend.input_samples(int(round(opts.segment_seconds * SAMPLE_RATE)))
    steps_per_epoch = math.ceil(_train_batches(train, frontend, width, opts) / opts.grad_accum)
    total_steps = steps_per_epoch * opts.epochs
    bar = EpochBar(console, opts.epochs, total_steps, state["global_step"], enabled=progress)
    peak = _PeakMemory(device)
    with bar, DecodeWorkers(_augment_workers(opts)) as pool:
        while state["epoch"] < opts.epochs and not state.get("stopped"):
            epoch = state["epoch"]
            started = time.perf_counter()
            batches = _epoch_batches(train, frontend, width, opts, epoch, pool)
            model.train()
            for index, (batch, spans, y) in enumerate(batches):
                if index < state["batches_done"]:
                    continue  # taken before the checkpoint this run resumed from
                loss = _train_step(
                    model, frontend, batch, spans, y, device, dtype, scaler, opts, epoch, index
                )
                if not math.isfinite(loss):
                    raise FinetuneError(_nan_message(epoch, index, state, state_dir))
                state["loss_sum"] += loss
                state["segments"] += len(y)
                state["batches_done"] = index + 1
                if (index + 1) % opts.grad_accum == 0 or index + 1 == len(batches):
                    _step(model, optimizer, scaler, state, total_steps, opts)
                    bar.step(epoch, state["loss_sum"] / state["batches_done"], len(y))
                    if opts.checkpoint_every and state["global_step"] % opts.checkpoint_every == 0:
                        state["seconds"] += time.perf_counter() - started
                        started = time.perf_counter()
                        _save(state_dir, model, optimizer, scaler, state)
            state["seconds"] += time.perf_counter() - started
            _end_epoch(model, frontend, data, labels, opts, device, state, state_dir, log)
            _save(state_dir, model, optimizer, scaler, state)
    return _finish(
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
        {
            "revision": revision,
            "cut": cut,
            "layer": layer,
            "unfreeze": unfreeze,
            "n_layers": n_layers,
        },
        log,
    )


# ---- options, data and model set-up ----------------------------------------------------------


def _check_options(opts: FinetuneOptions) -> None:
    """Refuse settings that cannot train, before anything loads."""
    problems = []
    if opts.epochs < 1:
        problems.append("--epochs must be at least 1")
    if opts.batch_size < 2:
        problems.append("--batch-size must be at least 2 (the head's BatchNorm needs two rows)")
    if opts.grad_accum < 1:
        problems.append("--grad-accum must be at least 1")
    if opts.lr <= 0 or opts.head_lr <= 0:
        problems.append("--lr and --head-lr must be positive")
    if not 0 < opts.layer_decay <= 1:
        problems.append("--layer-decay must be in (0, 1]")
    if opts.weight_decay < 0 or not 0 <= opts.warmup < 1:
        problems.append("--weight-decay must be >= 0 and --warmup in [0, 1)")
    if opts.probe_epochs < 0:
        problems.append("--probe-epochs must be at least 0")
    if opts.patience < 1 or opts.checkpoint_every < 0:
        problems.append("--patience must be at least 1 and --checkpoint-every at least 0")
    if opts.precision not in PRECISIONS:
        problems.append(f"unknown --precision {opts.precision!r}; use {', '.join(PRECISIONS)}")
    bad = set(opts.augment) - set(AUGMENTATIONS)
    if bad:
        problems.append(
            f"unknown augmentation(s) {sorted(bad)}; use any of {', '.join(AUGMENTATIONS)}"
        )
    if not 0 <= opts.augment_prob <= 1:
        problems.append("--augment-prob must be in [0, 1]")
    if opts.segment_seconds < 1 or (opts.hop_seconds is not None and opts.hop_seconds <= 0):
        problems.append("--segment-seconds must be at least 1 and --hop-seconds positive")
    if problems:
        raise OptionError("; ".join(problems))


def _check_settings(state_dir: Path, settings: dict) -> None:
    """An existing run folder continues only with the settings it was started with."""
    path = state_dir / "settings.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    differ = [
        f"{k}: {old.get(k)!r} before, {settings.get(k)!r} now"
        for k in sorted(set(old) | set(settings))
        if old.get(k) != settings.get(k)
    ]
    if differ:
        raise FinetuneError(
            f"{state_dir.parent} holds a fine-tuning run with other settings ("
            + "; ".join(differ)
            + "); use another --out, or the same options to resume it"
        )


def _split_tracks(opts: FinetuneOptions) -> list[Track]:
    """The dataset's tracks with their splits, as embed assigns them; excluded ones dropped."""
    layout = detect_layout(Path(opts.data)) if opts.dataset == "auto" else opts.dataset
    tracks = assign_splits(discover(opts.data, layout), opts.split, opts.seed, opts.split_dir)
    return [t for t in tracks if t.split != EXCLUDED]


def _check_split(tracks: list[Track]) -> None:
    """A split fine-tuning can learn from: training tracks of at least two labels."""
    train = [t for t in tracks if t.split == "train"]
    if not train:
        counts = ", ".join(f"{sum(t.split == s for t in tracks)} {s}" for s in SPLITS)
        raise FinetuneError(
            f"the split gives no training tracks ({counts}): nothing to fine-tune on"
        )
    if len({t.label for t in train}) < 2:
        raise FinetuneError(
            f"the training split holds a single label ({train[0].label!r}); "
            "fine-tuning a classifier needs at least two"
        )


def _precision(name: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 autocast on a CUDA GPU that has it, float32 elsewhere (repeatable on CPUs)."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name == "float16" and device.type != "cuda":
        raise OptionError("--precision float16 needs a CUDA GPU; on a CPU use bfloat16 or float32")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _layer(spec: str, n_layers: int, model_id: str) -> int:
    """weighted -> WEIGHTED, last -> n_layers, or a hidden-state index this model has."""
    if spec == "weighted":
        return WEIGHTED
    if spec == "last":
        return n_layers
    try:
        layer = int(spec)
    except ValueError:
        raise OptionError(f"--layer {spec!r}: use weighted, last or a layer number") from None
    if not 0 <= layer <= n_layers:
        raise FinetuneError(
            f"--layer {layer}: {model_id} has {n_layers} transformer layers, so its hidden "
            f"states are 0 (the encoder's input) to {n_layers}"
        )
    return layer


def _unfreeze(spec: str, layer: int, n_layers: int, model_id: str) -> int:
    """How many of the top transformer layers that run train: a number, or all of them."""
    running = n_layers if layer == WEIGHTED else layer
    if spec == "all":
        return running
    try:
        n = int(spec)
    except ValueError:
        raise OptionError(f"--unfreeze {spec!r}: use a number of layers or all") from None
    if not 0 <= n <= running:
        where = "" if layer == WEIGHTED else f" up to --layer {layer}"
        raise FinetuneError(
            f"--unfreeze {n}: {model_id} runs {running} transformer layers{where}; "
            f"unfreeze 0 to {running}, or all"
        )
    return n


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


def _decode(tracks: list[Track], labels: list[str], opts: FinetuneOptions, log) -> dict:
    """Every track decoded once, in decode workers; a file that fails is reported and skipped."""
    index = {label: i for i, label in enumerate(labels)}
    data: dict[str, list[Example]] = {s: [] for s in SPLITS}
    workers = opts.workers if opts.workers is not None else min(8, max(1, _cpus() - 1))
    failed = 0
    with DecodeWorkers(workers) as pool:
        for t, (decoded, reason) in zip(
            tracks,
            pool.map(try_load_track, (t.path for t in tracks), window=2 * workers + 2),
            strict=True,
        ):
            if decoded is None:
                failed += 1
                log(f"[yellow]skipped[/yellow] {reason}")
                continue
            data[t.split].append(Example(t, decoded.samples, index[t.label]))
    counts = ", ".join(f"{len(v)} {k}" for k, v in data.items())
    log(f"Decoded {sum(map(len, data.values()))} tracks ({counts}); {failed} failed")
    return data


def _cpus() -> int:
    import os

    return os.cpu_count() or 2


# ---- one epoch -------------------------------------------------------------------------------


def _augment_workers(opts: FinetuneOptions) -> int:
    """Processes for the on-the-fly augmentation (none when there is none)."""
    if not opts.augment or opts.augment_prob == 0:
        return 0
    return opts.workers if opts.workers is not None else min(8, max(1, _cpus() - 1))


def _augment_job(item: tuple) -> np.ndarray:
    samples, kinds, track_id, copy, seed, noise_dir = item
    return augment_track(samples, kinds, track_id, copy, seed, noise_dir)[0]


def _epoch_views(train: list[Example], opts: FinetuneOptions, epoch: int, pool) -> list[np.ndarray]:
    """Each training track's audio this epoch: augmented with probability augment_prob."""
    if not opts.augment or opts.augment_prob == 0:
        return [e.samples for e in train]
    rng = np.random.default_rng([opts.seed, epoch, 7])
    chosen = rng.random(len(train)) < opts.augment_prob
    jobs = [
        (e.samples, opts.augment, e.track.track_id, epoch + 1, opts.seed, opts.noise_dir)
        for e, c in zip(train, chosen, strict=True)
        if c
    ]
    augmented = iter(pool.map(_augment_job, jobs, window=2 * max(1, pool.count) + 2))
    return [next(augmented) if c else e.samples for e, c in zip(train, chosen, strict=True)]


def _windows(views, train: list[Example], frontend, width: int, opts: FinetuneOptions) -> list:
    """(window, spans, label) of every full window: a short track's lone segment is not trained on."""
    out = []
    for samples, e in zip(views, train, strict=True):
        _, windows, _, _ = track_windows(frontend, samples, opts.segment_seconds, opts.hop_seconds)
        out += [(x, sp, e.label) for x, sp in windows if frontend.pads or len(x) == width]
    return out


def _train_batches(train: list[Example], frontend, width: int, opts: FinetuneOptions) -> int:
    """Micro-batches in an epoch without augmentation (the schedule's length)."""
    n = len(_windows([e.samples for e in train], train, frontend, width, opts))
    full, rest = divmod(n, opts.batch_size)
    return max(1, full + (rest >= 2))


def _epoch_batches(train, frontend, width: int, opts: FinetuneOptions, epoch: int, pool) -> list:
    """This epoch's micro-batches in its seeded order: ([rows, width], spans, segment labels)."""
    windows = _windows(_epoch_views(train, opts, epoch, pool), train, frontend, width, opts)
    order = np.random.default_rng([opts.seed, epoch]).permutation(len(windows))
    chunks = [order[i : i + opts.batch_size] for i in range(0, len(order), opts.batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks.pop()  # BatchNorm cannot train on one row
    return [_LazyBatch(windows, chunk, width, frontend.pads) for chunk in chunks]


class _LazyBatch:
    """A micro-batch built when it is reached: an epoch's batches never sit in memory at once."""

    def __init__(self, windows: list, rows, width: int, pads: bool):
        self.windows, self.rows, self.width, self.pads = windows, rows, width, pads

    def __iter__(self):
        picked = [self.windows[i] for i in self.rows]
        batch, spans = next(
            window_batches([(x, sp) for x, sp, _ in picked], self.width, self.pads, len(picked))
        )
        y = np.array([label for (_, sp, label) in picked for _ in sp])
        return iter((batch, spans, y))


def _train_step(
    model, frontend, batch, spans, y, device, dtype, scaler, opts, epoch, index
) -> float:
    """Forward and backward of one micro-batch, seeded by its place; its mean loss."""
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
    scaled = loss / opts.grad_accum
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    return float(loss.detach())


def _probe(model, frontend, train: list[Example], opts: FinetuneOptions, device, log) -> None:
    """Fit the head (and layer weights) on the frozen encoder's states before fine-tuning.

    Linear probing, then fine-tuning (Kumar et al., 2022): the gradients of a random head would
    pull the pretrained layers about before it has learnt anything. The training segments'
    pooled states are computed once (the encoder in eval mode, no augmentation), then the head
    takes probe_epochs passes over them in batches of 64, which costs seconds.
    """
    started = time.perf_counter()
    width = frontend.input_samples(int(round(opts.segment_seconds * SAMPLE_RATE)))
    windows = _windows([e.samples for e in train], train, frontend, width, opts)
    model.eval()
    states, labels = [], []
    with torch.no_grad():
        for i in range(0, len(windows), opts.batch_size):
            rows = windows[i : i + opts.batch_size]
            batch, spans = next(
                window_batches([(x, sp) for x, sp, _ in rows], width, frontend.pads, len(rows))
            )
            states.append(model.states(frontend.inputs(batch, device), spans).float())
            labels += [label for _, sp, label in rows for _ in sp]
    X, y = torch.cat(states), torch.as_tensor(labels, device=device)
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
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    log(
        f"Probe: the head fitted on the frozen states of {len(X)} training segments "
        f"({opts.probe_epochs} passes, loss {float(loss.detach()):.4f}, {time.perf_counter() - started:.1f} s)"
    )


def _step(model, optimizer, scaler, state: dict, total_steps: int, opts: FinetuneOptions) -> None:
    """One optimizer step at the scheduled rate: warm-up, then cosine decay to zero."""
    factor = lr_factor(state["global_step"], total_steps, opts.warmup)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    if scaler is not None:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state["global_step"] += 1


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over the first `warmup` of the steps, then cosine decay towards zero."""
    warm = max(1, round(warmup * total)) if warmup > 0 else 0
    if step < warm:
        return (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return 0.5 * (1 + math.cos(math.pi * progress))


# ---- epochs' ends, checkpoints and the result --------------------------------------------------


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


def evaluate_tracks(model, frontend, examples: list[Example], labels, opts, device, curves=False):
    """Segment- and track-level metrics of the model on these tracks (mean of segment probabilities)."""
    probas = segment_probabilities(
        model,
        frontend,
        [e.samples for e in examples],
        opts.segment_seconds,
        opts.hop_seconds,
        opts.batch_size,
        device,
    )
    y_seg = np.concatenate(
        [np.full(len(p), e.label) for p, e in zip(probas, examples, strict=True)]
    )
    track_y = np.array([e.label for e in examples])
    seg_proba = np.concatenate(probas)
    loss = float(-np.mean(np.log(np.maximum(seg_proba[np.arange(len(y_seg)), y_seg], 1e-12))))
    return {
        "loss": loss,
        "segment": classification_metrics(y_seg, seg_proba, labels),
        "track": classification_metrics(
            track_y, np.stack([p.mean(axis=0) for p in probas]), labels, curves=curves
        ),
    }, probas


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
            f"early stopping after epoch {epoch + 1}: no better validation track accuracy "
            f"for {opts.patience} epochs"
        )
        log(state["stopped"])
    state |= {"epoch": epoch + 1, "batches_done": 0, "loss_sum": 0.0, "segments": 0, "seconds": 0.0}


def _save(state_dir: Path, model, optimizer, scaler, state: dict) -> None:
    """A checkpoint of this moment; best-weight files no longer named are removed after it."""
    progress = {**state, "scaler": scaler.state_dict() if scaler is not None else None}
    save_checkpoint(state_dir, state["global_step"], model, optimizer, progress)
    keep = (state["best"] or {}).get("file")
    for old in state_dir.glob("best-epoch-*.safetensors"):
        if old.name != keep:
            old.unlink(missing_ok=True)


def _nan_message(epoch: int, index: int, state: dict, state_dir: Path) -> str:
    kept = (
        f"the last good checkpoint (step {state['global_step']}) is kept in {state_dir}"
        if (state_dir / "latest.json").is_file()
        else "no checkpoint had been written yet"
    )
    return (
        f"the training loss became NaN or infinite at epoch {epoch + 1}, batch {index + 1}; "
        f"stopped, and {kept}. Try a lower --lr or --head-lr, or --precision float32"
    )


class _PeakMemory:
    """The process's peak resident memory, and the GPU's peak allocation where there is one."""

    def __init__(self, device: torch.device):
        self.device = device
        self.at_start = _current_rss_mb()  # model loaded, audio decoded: before any training
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def read(self) -> dict:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        out = {"peak_rss_mb": round(rss, 1), "rss_before_training_mb": self.at_start}
        if self.device.type == "cuda":
            out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return out


def _current_rss_mb() -> float | None:
    """This process's resident memory now (Linux), or None."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * resource.getpagesize() / 2**20, 1)


def _finish(
    model, frontend, extractor, data, labels, opts, device, state, state_dir, peak, info, log
) -> dict:
    """The best epoch's weights: test metrics, the bundle, the curve, and finetune.json (last)."""
    run_dir = Path(opts.out)
    best = state["best"]
    model.load_state_dict(read_weights(state_dir / best["file"]), strict=False)
    selected_on = "valid" if data["valid"] else "last epoch"
    valid = None
    if data["valid"]:
        v, _ = evaluate_tracks(model, frontend, data["valid"], labels, opts, device)
        valid = {"accuracy": v["track"]["accuracy"], "macro_f1": v["track"]["macro_f1"]}
    started = time.perf_counter()
    test_set = data["test"] or data["valid"] or data["train"]
    test, probas = evaluate_tracks(model, frontend, test_set, labels, opts, device, curves=True)
    predict_seconds = time.perf_counter() - started
    test_split = "test" if data["test"] else ("valid" if data["valid"] else "train")
    if test_split != "test":
        log(f"warning: no test tracks; the scores are on {test_split} (optimistic)")
    detail = {  # what compare's figures draw for the best model: ROC curves, track probabilities
        **test["track"],
        "y_true": [e.label for e in test_set],
        "proba": np.round(np.stack([p.mean(axis=0) for p in probas]), 5).tolist(),
    }
    history = state["history"]
    train_seconds = sum(h["seconds"] for h in history)
    params = {
        k: v
        for k, v in opts.settings().items()
        if k not in ("data", "model", "dataset", "split_dir")
    }
    row = {
        "head": "finetuned",
        "feature_set": ENCODER,
        "layer": info["layer"],
        "augmented": bool(opts.augment) or None,
        "selected_on": selected_on,
        "params": params,
        "trials": None,
        "selection_score": (valid or {"accuracy": 0.0})["accuracy"]
        + 1e-3 * (valid or {"macro_f1": 0.0})["macro_f1"],
        "valid": valid,
        "test": {"segment": test["segment"], "track": _without_curves(test["track"])},
        "test_loss": test["loss"],
        "test_split": test_split,
        "fit_seconds": round(train_seconds, 2),
        "predict_seconds": round(predict_seconds, 2),
        "best_of_head": True,
        "bundle": BUNDLE,
        "test_detail": detail,
        "fine_tuned": {
            "unfreeze": info["unfreeze"],
            "transformer_layers": info["n_layers"],
            "epochs_run": len(history),
            "best_epoch": best["epoch"],
            "stopped": state.get("stopped"),
        },
    }
    weights = model.layer_weights()
    if weights is not None:
        row["layer_weights"] = [round(w, 5) for w in weights]
    bundle_meta = {
        "labels": labels,
        "layer": info["layer"],
        "params": params,
        "segment_seconds": opts.segment_seconds,
        "hop_seconds": opts.hop_seconds,
        "backbone": opts.model,
        "backbone_revision": info["revision"],
        "frontend": frontend.kind,
        "window": frontend.window,
        "metrics": {
            "test_track_accuracy": test["track"]["accuracy"],
            "test_track_macro_f1": test["track"]["macro_f1"],
            "test_track_macro_auc": test["track"]["macro_auc"],
            "test_segment_accuracy": test["segment"]["accuracy"],
            "valid": valid,
        },
        "model": {
            "encoder_class": type(model.encoder).__name__,
            "layer": info["layer"],
            "layers_cut": bool(info["cut"]),
            "unfreeze": info["unfreeze"],
        },
    }
    write_finetuned_bundle(run_dir / BUNDLE, model, extractor, bundle_meta)
    curve = draw_curve(history, run_dir / "finetune_curve.png", opts.model)
    per_epoch = [h["seconds"] for h in history]
    result = {
        "backbone": opts.model,
        "backbone_revision": info["revision"],
        "untrained_backbone": opts.model.startswith("random-"),
        "labels": labels,
        "split_digest": data["split_digest"],
        "counts": {s: len(data[s]) for s in SPLITS},
        "device": str(device),
        "precision": str(_precision(opts.precision, device)).replace("torch.", ""),
        "seconds_per_epoch": round(float(np.mean(per_epoch)), 2) if per_epoch else None,
        "segments_per_second": round(float(np.mean([h["segments_per_second"] for h in history])), 2)
        if history
        else None,
        "memory": peak.read(),
        "history": history,
        "curve": curve.name,
        "results": [row],
    }
    tmp = run_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(jsonable(result), indent=1))
    tmp.replace(run_dir / RESULT_FILE)
    t = test["track"]
    log(
        f"Fine-tuned {opts.model} (best epoch {best['epoch']} of {len(history)}): {test_split} track "
        f"accuracy {t['accuracy']:.3f}, macro-F1 {t['macro_f1']:.3f}; bundle {run_dir / BUNDLE}"
    )
    return result


def _without_curves(track: dict) -> dict:
    return {k: v for k, v in track.items() if k not in ("roc", "y_true", "proba")}
