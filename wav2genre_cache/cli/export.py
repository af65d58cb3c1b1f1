"""`export`: a bundle as ONNX for onnxruntime; and which predictor `predict --runtime` loads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wav2genre_cache.cli.options import err
from wav2genre_cache.errors import OptionError

RUNTIMES = ("torch", "onnx")


def export(
    bundle: Annotated[
        Path, typer.Argument(help="A bundle folder: RUN_DIR/best or RUN_DIR/bundles/<head>.")
    ],
    onnx: Annotated[
        Path,
        typer.Option(
            "--onnx",
            help="The folder to write: encoder.onnx (up to the bundle's layer, mean-pooled), "
            "the head (head.onnx, or head.npz for numpy) and manifest.json.",
        ),
    ],
) -> None:
    """Export a bundle to ONNX: `predict --runtime onnx --bundle FOLDER` then needs no PyTorch.

    The export is checked against the torch path on a probe signal before it is kept.
    """
    from wav2genre_cache.inference.onnx_export import export_onnx
    from wav2genre_cache.store.bundles import resolve_bundle_dir

    export_onnx(resolve_bundle_dir(bundle), onnx, log=lambda m: err.print(m, highlight=False))
    err.print(f"Wrote {onnx}", highlight=False)


def load_predictor(bundle: Path, runtime: str, device: str, batch_size: int):
    """The Predictor (torch) of a bundle, or the OnnxPredictor of an export folder."""
    if runtime == "onnx":
        from wav2genre_cache.inference.onnx_runtime import OnnxPredictor

        return OnnxPredictor(bundle, batch_size=batch_size)
    if runtime != "torch":
        raise OptionError(f"unknown --runtime {runtime!r}; use {' or '.join(RUNTIMES)}")
    from wav2genre_cache.inference.predict import Predictor

    return Predictor(bundle, device=device, batch_size=batch_size)
