"""Fine-tuning checkpoints: safe formats only, written atomically, read back to resume.

A checkpoint is a folder `checkpoints/<count>-step-<step>/` holding what training changes: the
trainable weights and every buffer (BatchNorm statistics) and the optimizer's state, in
safetensors, and the loop's position and history in JSON. It is written under a temporary
name, synced and renamed; then `latest.json` is replaced to point at it, and only then are
older checkpoints removed. A kill at any moment leaves the previous checkpoint whole and
pointed at. The frozen weights are not stored: they are the model's own, loaded again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from wav2genre_cache._io import atomic_write, atomic_write_json, sync_dir, sync_file
from wav2genre_cache.encoders.sources import first_line
from wav2genre_cache.errors import FinetuneError, Interrupted
from wav2genre_cache.finetune.state_files import (
    LATEST,
    START_OVER,
    STATE_VERSION,
    check_progress,
    latest_checkpoint,
    read_state_json,
)

WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.safetensors"
PROGRESS = "progress.json"


def changing_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: trainable parameters and every buffer, by state-dict name."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    return {
        k: v.detach().contiguous().cpu()
        for k, v in model.state_dict().items()
        if k in trainable or k in buffers
    }


def write_weights(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors, written to a temporary name, synced and renamed into place."""
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (no pickle); FinetuneError naming the file if it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise FinetuneError(
            f"{path}: not a safetensors file that can be read ({first_line(exc)}); {START_OVER}"
        ) from None


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """A weights file of the run loaded into model: every tensor one the model has, of its shape."""
    weights, own = read_weights(path), model.state_dict()
    unexpected = [k for k in weights if k not in own]
    if unexpected:
        raise FinetuneError(
            f"{path}: holds weights this model does not have ({', '.join(unexpected[:3])}); "
            f"{START_OVER}"
        )
    for name, tensor in weights.items():
        if tensor.shape != own[name].shape:
            raise FinetuneError(
                f"{path}: {name} has shape {list(tensor.shape)}, this model's "
                f"{list(own[name].shape)}; the file is from another run or model; {START_OVER}"
            )
    model.load_state_dict(weights, strict=False)


def save_checkpoint(
    state_dir: Path, name: str, model: torch.nn.Module, optimizer, progress: dict
) -> Path:
    """Write checkpoint `name` (a name not used before), point latest.json at it, then remove
    the older ones."""
    root = state_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f"{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    from safetensors.torch import save_file

    try:
        save_file(changing_state(model), str(tmp / WEIGHTS))
        tensors, groups = optimizer_state(optimizer)
        save_file(tensors, str(tmp / OPTIMIZER))
        progress = {"format_version": STATE_VERSION, **progress, "optimizer_groups": groups}
        (tmp / PROGRESS).write_text(json.dumps(progress, indent=1))
        for f in tmp.iterdir():
            sync_file(f)
    except BaseException:  # a Ctrl-C mid-save leaves no half-written folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # an orphan of a save killed before latest.json moved to it
        shutil.rmtree(final)
    os.replace(tmp, final)
    sync_dir(root)
    atomic_write_json(state_dir / LATEST, {"checkpoint": final.name})
    sync_dir(state_dir)
    for old in root.iterdir():
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(state_dir: Path, model: torch.nn.Module, optimizer) -> dict | None:
    """Restore the latest checkpoint into model and optimizer; its progress, or None if none."""
    folder = latest_checkpoint(state_dir)
    if folder is None:
        return None
    progress = read_state_json(folder / PROGRESS, "a checkpoint's progress")
    check_progress(folder / PROGRESS, progress, state_dir)
    load_weights(model, folder / WEIGHTS)
    load_optimizer_state(
        optimizer, read_weights(folder / OPTIMIZER), progress.pop("optimizer_groups")
    )
    progress.pop("format_version", None)
    return progress


def optimizer_state(optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The optimizer's state as named tensors and its parameter groups as JSON-ready dicts."""
    sd = optimizer.state_dict()
    tensors = {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{index}.{key}"] = t.detach().contiguous().cpu()
    return tensors, sd["param_groups"]


def load_optimizer_state(optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    """Rebuild the state dict optimizer_state took apart, and load it."""
    state: dict[int, dict] = {}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        # Adam's moments have their parameter's shape: another model's would fail steps later.
        if value.ndim and not (
            0 <= int(index) < len(params) and value.shape == params[int(index)].shape
        ):
            raise ValueError(
                f"optimizer state {name} of shape {list(value.shape)} fits no parameter"
            )
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


@contextmanager
def interrupt_keeps_checkpoint(state_dir: Path) -> Iterator[None]:
    """A Ctrl-C inside becomes Interrupted, saying what the run keeps: its latest checkpoint."""
    try:
        yield
    except KeyboardInterrupt:
        # A kill at any moment leaves the pointed-at checkpoint whole, a Ctrl-C too.
        try:
            folder = latest_checkpoint(state_dir)
        except FinetuneError:
            folder = None
        if folder is None:
            said = "no checkpoint was written yet; the same command starts the run over"
        else:
            said = f"{state_dir} keeps checkpoint {folder.name}; run the same command to resume from it"
        raise Interrupted(said) from None
