"""What a fine-tuning run is, and what it refuses before a step is taken (most of it before any
model loads; --layer and --unfreeze once the model says how many layers it has)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from wav2genre_cache.audio.augment import AUGMENTATIONS
from wav2genre_cache.data.catalogue import read_datasets
from wav2genre_cache.data.tracks import EXCLUDED, SPLITS, Track
from wav2genre_cache.encoders.finetuned import WEIGHTED
from wav2genre_cache.errors import FinetuneError, OptionError
from wav2genre_cache.finetune.state_files import read_settings
from wav2genre_cache.run_options import AudioRunOptions

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True, kw_only=True)
class FinetuneOptions(AudioRunOptions):
    """The settings of one `finetune` run (the CLI's options)."""

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

    def settings(self) -> dict:
        """What decides the result: compared with an existing run folder before resuming."""
        d = asdict(self)
        for key in ("out", "device", "workers", "checkpoint_every"):
            d.pop(key)
        d["augment"] = list(self.augment)
        return d


def check_options(opts: FinetuneOptions) -> None:
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
    if opts.train_feature_encoder and opts.unfreeze != "all":
        problems.append(
            "--train-feature-encoder trains the convolutional front under the whole encoder: "
            "it needs --unfreeze all"
        )
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


# Settings added after runs were first written, with the value every earlier run implied.
_IMPLIED_SETTINGS = {"group_by": "artist"}


def check_settings(state_dir: Path, settings: dict) -> None:
    """An existing run folder continues only with the settings it was started with."""
    old = read_settings(state_dir)
    if old is None:
        return
    old = _IMPLIED_SETTINGS | old
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


def split_tracks(opts: FinetuneOptions) -> list[Track]:
    """The dataset's tracks with their splits, as embed assigns them; excluded ones dropped."""
    catalogue = read_datasets(
        [opts.data], opts.dataset, None, opts.split, opts.seed, opts.split_dir, opts.group_by
    )
    if catalogue.multi_label:
        raise FinetuneError(
            f"{opts.data}: a multi-label (tag) dataset; finetune trains single-label heads. "
            "Tag it with embed and train-heads, whose heads train in multi-label form"
        )
    return [t for t in catalogue.tracks if t.split != EXCLUDED]


def check_split(tracks: list[Track]) -> None:
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


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 autocast on a CUDA GPU that has it, float32 elsewhere (repeatable on CPUs)."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name == "float16" and device.type != "cuda":
        raise OptionError("--precision float16 needs a CUDA GPU; on a CPU use bfloat16 or float32")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_layer(spec: str, n_layers: int, model_id: str) -> int:
    """weighted -> WEIGHTED, last -> n_layers, or a hidden-state index this model has."""
    if spec == "weighted":
        return WEIGHTED
    if spec == "last":
        return n_layers
    layer = _whole_number(spec, "--layer", "weighted, last or a layer number")
    if not 0 <= layer <= n_layers:
        raise FinetuneError(
            f"--layer {layer}: {model_id} has {n_layers} transformer layers, so its hidden "
            f"states are 0 (the encoder's input) to {n_layers}"
        )
    return layer


def resolve_unfreeze(spec: str, layer: int, n_layers: int, model_id: str) -> int:
    """How many of the top transformer layers that run train: a number, or all of them."""
    running = n_layers if layer == WEIGHTED else layer
    if spec == "all":
        return running
    n = _whole_number(spec, "--unfreeze", "a number of layers or all")
    if not 0 <= n <= running:
        where = "" if layer == WEIGHTED else f" up to --layer {layer}"
        raise FinetuneError(
            f"--unfreeze {n}: {model_id} runs {running} transformer layers{where}; "
            f"unfreeze 0 to {running}, or all"
        )
    return n


def _whole_number(spec: str, option: str, takes: str) -> int:
    """spec read as a whole number; OptionError saying what the option takes otherwise."""
    try:
        return int(spec)
    except ValueError:
        raise OptionError(f"{option} {spec!r}: use {takes}") from None
