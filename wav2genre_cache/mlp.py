"""The paper's dense stack, shared by the FCNN head and the fine-tuned encoder's head."""

from __future__ import annotations

import torch

__all__ = ["mlp"]


def mlp(
    n_in: int, n_out: int, hidden_layers: tuple[int, ...], dropout: float
) -> torch.nn.Sequential:
    """Dense layers with BatchNorm, ReLU and Dropout, then a linear output layer."""
    layers: list[torch.nn.Module] = []
    for width in hidden_layers:
        layers += [
            torch.nn.Linear(n_in, width),
            torch.nn.BatchNorm1d(width),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
        ]
        n_in = width
    layers.append(torch.nn.Linear(n_in, n_out))
    return torch.nn.Sequential(*layers)
