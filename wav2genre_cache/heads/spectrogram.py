"""The spectrogram baselines: CNN, LSTM and CNN-LSTM over a segment's log-mel image."""

from __future__ import annotations

import numpy as np
import torch

from wav2genre_cache.heads.contract import keep_init_args
from wav2genre_cache.heads.networks import TorchClassifier

SPECTROGRAM_HEADS = ("cnn", "lstm", "cnn-lstm")


class SpectrogramClassifier(TorchClassifier):
    """CNN, LSTM or CNN-LSTM over a log-mel spectrogram (the paper's spectrogram baselines).

    X rows are flattened [n_mels x frames] log-mel images (the `logmel` feature set); each mel
    band is standardised with its training mean and deviation.
    """

    # Convolutions over 128 x 313 images use every core: on an idle two-core machine a fit took
    # 30 s on torch's two threads, 55 s on one (benchmarks/torch_head_threads.py). The price:
    # the core count moves their probabilities by about 3e-3.
    _fit_threads = None

    def __init__(
        self,
        kind: str = "cnn",
        n_mels: int = 128,
        channels: int = 32,
        hidden: int = 64,
        dropout: float = 0.3,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 32,
        max_epochs: int = 30,
        patience: int = 4,
        validation_fraction: float = 0.1,
        device: str = "cpu",
        random_state: int = 0,
    ):
        keep_init_args(self, locals())

    def _fit_scaler(self, X: np.ndarray, rows: np.ndarray | None = None) -> None:
        if X.shape[1] % self.n_mels:
            raise ValueError(f"{X.shape[1]} features are not n_mels={self.n_mels} bands x frames")
        rows = np.arange(len(X)) if rows is None else rows
        bands = X.reshape(len(X), self.n_mels, -1)
        frames = bands.shape[2]
        mean = _band_sums(bands, rows, lambda b: b) / (len(rows) * frames)
        # In chunks of rows: np.std would hold a deviation for every value of X at once.
        var = _band_sums(bands, rows, lambda b: np.square(b - mean[:, None])) / (len(rows) * frames)
        self.mean_ = np.repeat(mean, frames).astype(np.float32)
        self.scale_ = np.repeat(np.sqrt(var) + 1e-6, frames).astype(np.float32)

    def _build(self, n_in: int, n_out: int) -> torch.nn.Module:
        if self.kind not in SPECTROGRAM_HEADS:
            raise ValueError(f"unknown kind {self.kind!r}; use {', '.join(SPECTROGRAM_HEADS)}")
        return _SpectrogramNet(
            self.kind, self.n_mels, self.channels, self.hidden, self.dropout, n_out
        )


def _band_sums(bands: np.ndarray, rows: np.ndarray, term, chunk: int = 256) -> np.ndarray:
    """Each mel band's sum of term(bands) over `rows` and every frame, in float64, by chunks."""
    return sum(
        (term(bands[rows[i : i + chunk]]).sum(axis=(0, 2), dtype=np.float64))
        for i in range(0, len(rows), chunk)
    )


class _SpectrogramNet(torch.nn.Module):
    def __init__(
        self, kind: str, n_mels: int, channels: int, hidden: int, dropout: float, n_out: int
    ):
        super().__init__()
        self.kind, self.n_mels = kind, n_mels

        def block(c_in: int, c_out: int) -> torch.nn.Sequential:
            return torch.nn.Sequential(
                torch.nn.Conv2d(c_in, c_out, 3, padding=1),
                torch.nn.BatchNorm2d(c_out),
                torch.nn.ReLU(),
                torch.nn.MaxPool2d(2),
            )

        c = channels
        # A stride-2 stem first: the full-resolution image costs 4x more in every later block.
        stem = torch.nn.Sequential(
            torch.nn.Conv2d(1, c // 2, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(c // 2),
            torch.nn.ReLU(),
        )
        if kind == "cnn":
            self.conv = torch.nn.Sequential(
                stem, block(c // 2, c), block(c, 2 * c), block(2 * c, 2 * c)
            )
            width = 2 * c
        elif kind == "cnn-lstm":
            self.conv = torch.nn.Sequential(stem, block(c // 2, c), block(c, c))  # 8x smaller
            self.lstm = torch.nn.LSTM(
                c * (n_mels // 8), hidden, batch_first=True, bidirectional=True
            )
            width = 2 * hidden
        else:  # lstm over the frames
            self.lstm = torch.nn.LSTM(n_mels, hidden, batch_first=True, bidirectional=True)
            width = 2 * hidden
        self.out = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(width, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.shape[0], 1, self.n_mels, -1)  # [batch, 1, mels, frames]
        if self.kind == "cnn":
            return self.out(self.conv(x).mean(dim=(2, 3)))
        if self.kind == "cnn-lstm":
            x = self.conv(x)  # [batch, channels, mels / 8, frames / 8]
            x = x.flatten(1, 2).transpose(1, 2)  # a sequence over frames
        else:
            # Frames averaged in fours (128 ms steps): an LSTM's steps run one after another.
            x = torch.nn.functional.avg_pool1d(x[:, 0], 4, ceil_mode=True).transpose(1, 2)
        return self.out(self.lstm(x)[0].mean(dim=1))
