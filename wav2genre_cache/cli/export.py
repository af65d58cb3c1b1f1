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
    quantize: Annotated[
        str | None,
        typer.Option(
            "--quantize",
            help="int8: the encoder's matrix products get int8 weights (onnxruntime's dynamic "
            "quantization). Whisper base, layer 2, dev clips: encoder 2.4x smaller, speed as "
            "float32's, 57 of 60 labels as float32's, same accuracy (README). Default: float32.",
        ),
    ] = None,
) -> None:
    """Export a bundle to ONNX: `predict --runtime onnx --bundle FOLDER` then needs no PyTorch.

    Heads: logreg and rf through skl2onnx, xgb through onnxmltools, fcnn, fcnn-weighted and
    attention (over a track's segments) through torch.onnx; cnn, lstm and cnn-lstm through
    torch.onnx with no encoder, their log-mel computed in numpy; svm and a multi-label logreg,
    rf or xgb are evaluated in numpy from their saved arrays (head.npz); a fine-tuned bundle's
    own encoder and head through torch.onnx. Refused: heads on handcrafted features. The float32 export is checked against the torch path on a probe signal (within
    1e-4) before it is kept.
    """
    from wav2genre_cache.inference.onnx_export import export_onnx
    from wav2genre_cache.store.bundle_folders import resolve_bundle_dir

    if quantize not in (None, "int8"):
        raise OptionError(f"unknown --quantize {quantize!r}; the export quantizes to int8")

    def log(message: str) -> None:
        err.print(message, highlight=False)

    export_onnx(resolve_bundle_dir(bundle), onnx, log=log, quantize=quantize)
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
