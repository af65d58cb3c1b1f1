"""The heads written in torch: the training loop they share, and the heads over embeddings.

The FCNN (the paper's classifier, optionally over learned layer weights) as a scikit-learn
estimator. The other torch heads use the same loop: attention pooling over a track's segments
(tracks.py) and the CNN / LSTM / CNN-LSTM spectrogram baselines (spectrogram.py).

Fitted on a tag indicator matrix [rows, tags] instead of labels, every one of them is
multi-label: independent sigmoid outputs trained with binary cross-entropy (early stopping on
its validation value), `multi_label_ = True`, predict_proba the sigmoid of each output.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import Tags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from wav2genre_cache.heads.contract import (
    is_multi_label,
    keep_init_args,
    multi_label_tags,
    predictions_from_proba,
    tag_matrix,
)
from wav2genre_cache.mlp import mlp


class TorchClassifier(ClassifierMixin, BaseEstimator):
    """The training loop the torch heads share: Adam, a plateau scheduler, early stopping on a
    validation set, seeded for determinism. Subclasses define `_build` (and may override
    `_fit_scaler`); hyper-parameters live in their __init__ as scikit-learn requires.

    The loop (_fit_net) trains on tensors: one per network input (rows of features; or a
    track head's padded segments and their mask), batched along the first dimension.
    """

    # Batches of one row are skipped: BatchNorm needs two. Heads without it train on every row.
    _min_batch = 2
    # Halve the learning rate when the validation loss stops improving.
    _plateau = True
    # Torch threads while fitting on the CPU (None: torch's default, one per core). On one, the
    # FCNN's and the attention head's weights do not depend on the machine's core count (1 or 2
    # threads moved the FCNN's probabilities by 3e-3), and their small products fit as fast on
    # an idle machine and 1.9x (FCNN) and 7.5x (attention) faster beside a busy process
    # (benchmarks/torch_head_threads.py).
    _fit_threads: int | None = 1

    def _build(self, n_in: int, n_out: int) -> torch.nn.Module:
        raise NotImplementedError

    def _param_groups(self, net: torch.nn.Module) -> list[dict]:
        return [{"params": list(net.parameters())}]

    def __sklearn_tags__(self) -> Tags:
        return multi_label_tags(super().__sklearn_tags__())

    def fit(self, X, y, X_val=None, y_val=None):
        """Train with early stopping on (X_val, y_val), or on a hold-out of (X, y).

        y is a label per row, or a tag indicator matrix [rows, tags] (then y_val is one too).
        """
        if is_multi_label(y):
            return self._fit_tags(X, y, X_val, y_val)
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        self.multi_label_ = False
        if X_val is None:
            train, valid = self._hold_out(len(X), y_idx)
            X_val, y_val_idx = X, y_idx[valid]
        else:
            X_val = np.asarray(X_val, dtype=np.float32)
            known = np.isin(np.asarray(y_val), self.classes_)
            train, valid = np.arange(len(X)), np.flatnonzero(known)
            y_val_idx = np.searchsorted(self.classes_, np.asarray(y_val))[known]
        self._fit_scaler(X, train)

        def tensors(X, rows, y_idx):
            return (_ScaledRows(X, rows, self._scale),), torch.from_numpy(y_idx.astype(np.int64))

        return self._fit_net(
            X.shape[1], *tensors(X, train, y_idx[train]), *tensors(X_val, valid, y_val_idx)
        )

    def _fit_tags(self, X, Y, X_val, Y_val):
        X, Y = self._tag_data(X, Y)
        if X_val is None:
            train, valid = self._hold_out_tags(len(X))
            X_val, Y_val = X, Y[valid]
        else:
            X_val, Y_val = np.asarray(X_val, dtype=np.float32), self._tag_targets(Y_val)
            train, valid = np.arange(len(X)), np.arange(len(X_val))
        self._fit_scaler(X, train)

        def tensors(X, rows, Y):
            return (_ScaledRows(X, rows, self._scale),), torch.from_numpy(Y)

        return self._fit_net(
            X.shape[1], *tensors(X, train, Y[train]), *tensors(X_val, valid, Y_val)
        )

    def _tag_data(self, X, Y) -> tuple[np.ndarray, np.ndarray]:
        """Validate a multi-label fit's rows; set classes_ (the tags) and multi_label_."""
        X, Y = validate_data(self, X, Y, dtype=np.float32, multi_output=True)
        Y = tag_matrix(Y)
        self.classes_, self.multi_label_ = np.arange(Y.shape[1]), True
        return X, Y.astype(np.float32)  # BCEWithLogitsLoss takes float targets

    def _tag_targets(self, Y) -> np.ndarray:
        return tag_matrix(Y, len(self.classes_)).astype(np.float32)

    def _loss(self) -> torch.nn.Module:
        multi = getattr(self, "multi_label_", False)
        return torch.nn.BCEWithLogitsLoss() if multi else torch.nn.CrossEntropyLoss()

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Each tag's sigmoid for a multi-label head, else the softmax over classes."""
        if getattr(self, "multi_label_", False):  # absent on heads saved before it existed
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)

    def _fit_net(self, n_in: int, x: tuple, y: torch.Tensor, x_val: tuple, y_val: torch.Tensor):
        """Train the network on (x, y), stopping early on (x_val, y_val); keep its best state.

        An empty validation set stops on the training loss.
        """
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(auto if self.device == "auto" else self.device)
        # Training draws dropout masks from the global RNG: fork and seed it for determinism.
        threads = self._fit_threads if device.type == "cpu" else None
        with torch.random.fork_rng(devices=[]), torch_threads(threads):
            torch.manual_seed(self.random_state)
            net, best_state, best = self._train(n_in, x, y, x_val, y_val, device)
        net.load_state_dict(best_state)
        self.best_val_loss_ = float(best)
        self.net_ = net.cpu().eval()
        return self

    def _train(self, n_in, x, y, x_val, y_val, device):
        gen = torch.Generator().manual_seed(self.random_state)
        net = self._build(n_in, len(self.classes_)).to(device)
        x, x_val = tuple(t.to(device) for t in x), tuple(t.to(device) for t in x_val)
        y, y_val = y.to(device), y_val.to(device)
        if not len(y_val):
            x_val, y_val = x, y
        opt = torch.optim.Adam(
            self._param_groups(net), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        sched = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, factor=0.5, patience=max(1, self.patience // 3)
            )
            if self._plateau
            else None
        )
        loss_fn = self._loss()
        best, best_state, waited = np.inf, copy.deepcopy(net.state_dict()), 0
        self.n_epochs_ = 0
        for _ in range(self.max_epochs):
            net.train()
            order = torch.randperm(len(y), generator=gen).to(device)
            for i in range(0, len(y), self.batch_size):
                idx = order[i : i + self.batch_size]
                if len(idx) < self._min_batch:
                    continue
                opt.zero_grad()
                loss_fn(net(*(t[idx] for t in x)), y[idx]).backward()
                opt.step()
            self.n_epochs_ += 1
            val_loss = self._validation_loss(net, x_val, y_val)
            if sched is not None:
                sched.step(val_loss)
            if val_loss < best * (1 - 1e-3):  # a relative gain, so tiny ones do not extend training
                best, best_state, waited = val_loss, copy.deepcopy(net.state_dict()), 0
            else:
                waited += 1
                if waited >= self.patience:
                    break
        return net, best_state, best

    def _validation_loss(self, net: torch.nn.Module, x_val: tuple, y_val: torch.Tensor) -> float:
        """The mean loss over the validation rows, batch by batch: one pass over all of them
        held every row's activations at once (a CNN's: 2.5 MB per log-mel row)."""
        net.eval()
        loss_sum = self._loss()
        loss_sum.reduction = "sum"  # summed per batch, so the mean weighs every row alike
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(y_val), self.batch_size):
                rows = slice(i, i + self.batch_size)
                total += loss_sum(net(*(t[rows] for t in x_val)), y_val[rows]).item()
        # BCEWithLogitsLoss's mean is over every row and tag; CrossEntropyLoss's over rows.
        return total / y_val.numel()

    def _hold_out(self, n: int, y_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The training and validation rows (indices: the rows themselves are never copied)."""
        n_classes = len(self.classes_)
        n_val = int(round(self.validation_fraction * n))
        counts = np.bincount(y_idx)
        rows = np.arange(n)
        if n_val < n_classes or counts.min() < 2 or n - n_val < n_classes:
            return rows, rows  # too small to hold out: stop on training loss
        return tuple(
            train_test_split(rows, test_size=n_val, stratify=y_idx, random_state=self.random_state)
        )

    def _hold_out_tags(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        # Rows with several tags cannot be stratified by label: a plain seeded split.
        n_val = int(round(self.validation_fraction * n))
        rows = np.arange(n)
        if n_val < 1 or n - n_val < 2:
            return rows, rows  # too small to hold out: stop on training loss
        return tuple(train_test_split(rows, test_size=n_val, random_state=self.random_state))

    def _fit_scaler(self, X: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Each feature's mean and deviation over the training rows (all rows if None)."""
        X = X if rows is None else X[rows]
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0) + 1e-6

    def _scale(self, X) -> np.ndarray:
        # One float32 copy, divided in place: a log-mel set is 160 MB per 1,000 rows.
        scaled = np.subtract(X, self.mean_, dtype=np.float32)
        scaled /= self.scale_
        return scaled

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of classes_ (for tags: each tag's own)."""
        check_is_fitted(self, "net_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        # One row per call, to the probabilities: batched, a row's answer moved (by 1e-7) with the
        # rows beside it, as kernels block a product by its shape and the sigmoid's vector loop
        # leaves a scalar tail. Alone, a row always meets the same kernels (scaled alone too).
        with torch.no_grad():
            return np.concatenate(
                [
                    self._probabilities(
                        self.net_(torch.from_numpy(self._scale(X[i : i + 1])))
                    ).numpy()
                    for i in range(len(X))
                ]
            ).astype(np.float64)

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row (for tags: the indicator matrix at 0.5)."""
        return predictions_from_proba(self, self.predict_proba(X))


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Torch's intra-op threads set to `threads` within the block (None: left as they are)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _ScaledRows:
    """Rows `index` of X, standardised batch by batch as the training loop takes them, in place
    of one tensor of them all: the rows are never copied whole (a log-mel set's are 160 MB per
    1,000), nor is a hold-out of them. Indexed like a tensor (by a tensor of rows or a slice)."""

    def __init__(self, X: np.ndarray, index: np.ndarray, scale):
        self.X, self.index, self.scale, self.device = X, index, scale, None

    def __len__(self) -> int:
        return len(self.index)

    def to(self, device: torch.device) -> _ScaledRows:
        self.device = device
        return self

    def __getitem__(self, rows) -> torch.Tensor:
        if torch.is_tensor(rows):
            rows = rows.cpu().numpy()
        batch = torch.from_numpy(self.scale(self.X[self.index[rows]]))
        return batch if self.device is None else batch.to(self.device)


class FCNNClassifier(TorchClassifier):
    """The paper's fully connected network: dense layers with BatchNorm, ReLU and Dropout.

    Inputs are standardised inside the head. Adam with a plateau scheduler (halving the rate);
    early stopping on the validation set passed to fit (or a stratified hold-out of the training
    data). The paper starts Adam at 1e-4 with small batches; on a GTZAN-sized cache that took
    about 125 epochs (21 s per layer here), where batches of 512 at 5e-3 stop after about 15
    epochs (0.7 s) with a lower validation loss, and match 2e-3 on the real dev clips
    (benchmarks/README.md), so those are the defaults.

    With `n_layers` set, X rows are a segment's layers flattened ([n_layers x dim]) and the
    network reads a learned softmax-weighted sum of them, as the SUPERB benchmark does (the
    `fcnn-weighted` head); after fitting, `layer_weights_` holds the weights (they sum to one).
    The weights learn at `weights_learning_rate`, without weight decay.
    """

    def __init__(
        self,
        hidden_layers: tuple[int, ...] = (256, 128),
        dropout: float = 0.3,
        learning_rate: float = 5e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 512,
        max_epochs: int = 100,
        patience: int = 6,
        validation_fraction: float = 0.1,
        device: str = "cpu",
        random_state: int = 0,
        n_layers: int | None = None,
        weights_learning_rate: float = 5e-2,
    ):
        keep_init_args(self, locals())

    def _build(self, n_in: int, n_out: int) -> torch.nn.Module:
        if self.n_layers is None:
            return mlp(n_in, n_out, self.hidden_layers, self.dropout)
        if n_in % self.n_layers:
            raise ValueError(
                f"{n_in} features are not n_layers={self.n_layers} layers of equal width"
            )
        per_layer = mlp(n_in // self.n_layers, n_out, self.hidden_layers, self.dropout)
        return _LayerWeightedNet(self.n_layers, per_layer)

    def _param_groups(self, net: torch.nn.Module) -> list[dict]:
        if self.n_layers is None:
            return super()._param_groups(net)
        # The layer weights learn faster than the MLP and without decay; otherwise the MLP
        # fits first and early stopping ends training with the weights still near uniform.
        rest = [p for n, p in net.named_parameters() if n != "logits"]
        return [
            {"params": rest},
            {"params": [net.logits], "lr": self.weights_learning_rate, "weight_decay": 0.0},
        ]

    @property
    def layer_weights_(self) -> np.ndarray:
        """The learned weight of each layer (softmax: positive, summing to one)."""
        check_is_fitted(self, "net_")
        if self.n_layers is None:
            raise AttributeError("layer_weights_: this FCNN reads one layer (n_layers is None)")
        return torch.softmax(self.net_.logits.detach(), dim=0).numpy()


class _LayerWeightedNet(torch.nn.Module):
    def __init__(self, n_layers: int, mlp: torch.nn.Module):
        super().__init__()
        self.n_layers = n_layers
        self.logits = torch.nn.Parameter(torch.zeros(n_layers))  # uniform weights at the start
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = x.view(len(x), self.n_layers, -1)
        return self.mlp((torch.softmax(self.logits, dim=0)[None, :, None] * layers).sum(dim=1))
