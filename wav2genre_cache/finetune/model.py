"""The model a fine-tuning run trains: the encoder loaded and cut, what trains, and its optimizer."""

from __future__ import annotations

import torch

from wav2genre_cache.encoders.finetuned import (
    ENCODER_CLASSES,
    EXTRACTOR_CLASSES,
    WEIGHTED,
    SegmentClassifier,
    feature_encoder,
    keep_layers,
    transformer_layers,
)
from wav2genre_cache.encoders.frontends import WaveformFrontEnd, frontend_for
from wav2genre_cache.encoders.sources import fetch_model
from wav2genre_cache.errors import BackboneError
from wav2genre_cache.finetune.options import FinetuneOptions, resolve_layer, resolve_unfreeze


def load_encoder(opts: FinetuneOptions) -> tuple:
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


def build_model(
    encoder: torch.nn.Module,
    frontend: WaveformFrontEnd,
    n_labels: int,
    info: dict,
    opts: FinetuneOptions,
    device: torch.device,
) -> tuple[SegmentClassifier, torch.optim.Optimizer]:
    """The encoder with a fresh head (seeded), frozen below what trains, on `device`; its AdamW."""
    torch.manual_seed(opts.seed)
    model = SegmentClassifier(encoder, frontend.input_name, n_labels, info["layer"])
    freeze(model, info["unfreeze"], opts.train_feature_encoder)
    if opts.gradient_checkpointing:
        enable_checkpointing(encoder)
    model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, info["unfreeze"], opts), lr=opts.lr)
    return model, optimizer


def freeze(model: SegmentClassifier, unfreeze: int, train_feature_encoder: bool) -> None:
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


def param_groups(model: SegmentClassifier, unfreeze: int, opts: FinetuneOptions) -> list[dict]:
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
