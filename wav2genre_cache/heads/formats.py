"""How each kind of head is written to disk and read back: safetensors, XGBoost's own, skops.

Never pickle: a head's file holds arrays and plain parameters, and reading one runs no code of
the file's choosing (skops loads only the types listed here as safe).
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator

from wav2genre_cache._io import jsonable
from wav2genre_cache.errors import HeadError
from wav2genre_cache.heads.estimators import XGBHead
from wav2genre_cache.heads.networks import TorchClassifier

# A head's registry factory with its seed set: make(**params) is a fresh, unfitted head.
Make = Callable[..., BaseEstimator]


@dataclass(frozen=True)
class HeadFormat:
    """How a head is written and read: its files (the main one first) and the two functions."""

    files: tuple[str, ...]
    save: Callable[[BaseEstimator, Path, tuple[str, ...]], None]
    load: Callable[[Make, Path, tuple[str, ...]], BaseEstimator]

    def write(self, head: BaseEstimator, directory: Path) -> list[str]:
        """Write a fitted head into directory; return the names of its files, main first."""
        directory.mkdir(parents=True, exist_ok=True)
        self.save(head, directory, self.files)
        return list(self.files)

    def read(self, make: Make, path: Path, name: str) -> BaseEstimator:
        """Read the head whose main file is path; foreign content raises HeadError."""
        try:
            return self.load(make, path, self.files)
        except HeadError:
            raise
        except Exception as exc:
            raise HeadError(
                f"{path}: not a valid {name} head ({type(exc).__name__}: {exc})"
            ) from None


def _save_torch(head: TorchClassifier, directory: Path, files: tuple[str, ...]) -> None:
    from safetensors.torch import save_file

    tensors = {f"net.{k}": v.contiguous() for k, v in head.net_.state_dict().items()}
    tensors["mean"] = torch.from_numpy(head.mean_)
    tensors["scale"] = torch.from_numpy(head.scale_)
    meta = {
        "params": json.dumps(jsonable(head.get_params())),
        "classes": json.dumps(head.classes_.tolist()),
        "n_features_in": str(head.n_features_in_),
        "multi_label": json.dumps(bool(getattr(head, "multi_label_", False))),
    }
    save_file(tensors, directory / files[0], metadata=meta)


def _load_torch(make: Make, path: Path, files: tuple[str, ...]) -> TorchClassifier:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    head = make(**json.loads(meta["params"]))  # its random_state is in its params
    head.classes_ = np.array(json.loads(meta["classes"]))
    head.n_features_in_ = int(meta["n_features_in"])
    # Heads saved before multi-label heads existed have no such entry: they are single-label.
    head.multi_label_ = bool(json.loads(meta.get("multi_label", "false")))
    head.mean_, head.scale_ = tensors.pop("mean").numpy(), tensors.pop("scale").numpy()
    head.net_ = head._build(head.n_features_in_, len(head.classes_))
    head.net_.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items()})
    head.net_.eval()
    return head


def _save_xgb(head: XGBHead, directory: Path, files: tuple[str, ...]) -> None:
    head.booster_.save_model(directory / files[0])
    info = {
        "params": jsonable(head.get_params()),
        "classes": head.classes_.tolist(),
        "n_features_in": int(head.n_features_in_),
        "multi_label": bool(getattr(head, "multi_label_", False)),
    }
    (directory / files[1]).write_text(json.dumps(info))


def _load_xgb(make: Make, path: Path, files: tuple[str, ...]) -> XGBHead:
    from xgboost import XGBClassifier

    # The classes and parameters are in the second file (bundles checksum both).
    info = json.loads((path.parent / files[1]).read_text())
    head = XGBHead(**info["params"])
    head.classes_ = np.array(info["classes"])
    head.n_features_in_ = info["n_features_in"]
    head.multi_label_ = bool(info.get("multi_label", False))  # absent in older files
    head.booster_ = XGBClassifier()
    head.booster_.load_model(path)
    return head


def _save_skops(head: BaseEstimator, directory: Path, files: tuple[str, ...]) -> None:
    import skops.io as sio

    sio.dump(head, directory / files[0])


def _load_skops(make: Make, path: Path, files: tuple[str, ...]) -> BaseEstimator:
    import skops.io as sio

    untrusted = [t for t in sio.get_untrusted_types(file=path) if t not in _OWN_TYPES]
    if untrusted:
        raise HeadError(f"{path}: refuses to load types that are not known to be safe: {untrusted}")
    with _former_modules():
        return sio.load(path, trusted=list(_OWN_TYPES))


# skops files name each class by its module: heads saved by version 0.1 (one flat package) name
# wav2genre_cache.sklearn_heads, whose classes now live in heads.estimators.
_FORMER_MODULES = {"wav2genre_cache.sklearn_heads": "wav2genre_cache.heads.estimators"}


@contextmanager
def _former_modules() -> Iterator[None]:
    """While loading, the modules of former versions resolve to the ones that replaced them."""
    added = [old for old in _FORMER_MODULES if old not in sys.modules]
    for old in added:
        sys.modules[old] = importlib.import_module(_FORMER_MODULES[old])
    try:
        yield
    finally:
        for old in added:
            del sys.modules[old]


# Types skops does not trust by default but that are plain data: our SVM head, our multi-label
# subclasses of sklearn's forest, logistic regression and pipeline (each under its module now
# and the ones of version 0.1: heads.SVMHead still resolves, as heads re-exports it), and
# sklearn's trees.
_CLASSES = ("SVMHead", "ForestHead", "LogisticRegressionHead", "PipelineHead")
_OWN_TYPES = (
    *(f"wav2genre_cache.heads.estimators.{c}" for c in _CLASSES),
    *(f"wav2genre_cache.sklearn_heads.{c}" for c in _CLASSES),
    "wav2genre_cache.heads.SVMHead",
    "sklearn.tree._tree.Tree",
)

TORCH = HeadFormat(("head.safetensors",), _save_torch, _load_torch)
XGBOOST = HeadFormat(("head.ubj", "head_params.json"), _save_xgb, _load_xgb)
SKOPS = HeadFormat(("head.skops",), _save_skops, _load_skops)
