"""Which folder a user means by a bundle. Light (no model library): `predict --runtime onnx`
resolves its bundle without loading PyTorch or scikit-learn."""

from __future__ import annotations

from pathlib import Path


def resolve_bundle_dir(path: str | Path) -> Path:
    """A bundle folder from what a user passes: a run folder means its best/ bundle, or where
    only `finetune` ran (no best/), its one bundle."""
    path = Path(path)
    if (path / "best" / "bundle.json").is_file():
        return path / "best"
    own = sorted((path / "bundles").glob("*/bundle.json"))
    if not (path / "bundle.json").is_file() and len(own) == 1:
        return own[0].parent
    return path
