"""Classifier heads with one contract (scikit-learn's) and safe, pickle-free persistence."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

HEADS = ("fcnn", "svm", "rf", "xgb", "logreg")
# Heads over log-mel spectrograms (the `logmel` feature set) rather than embedding vectors.
SPECTROGRAM_HEADS = ("cnn", "lstm", "cnn-lstm")
# Heads that read every layer at once (a row is all layers of a segment, flattened).
ALL_LAYER_HEADS = ("fcnn-weighted",)
# Heads that predict a whole track from its segments (fit and predict take the track groups).
TRACK_HEADS = ("attention",)
ALL_HEADS = HEADS + SPECTROGRAM_HEADS + ALL_LAYER_HEADS + TRACK_HEADS


class HeadError(Exception):
    """A head that cannot be built, saved or loaded; the message says why."""


class TorchClassifier(ClassifierMixin, BaseEstimator):
    """The training loop the torch heads share: Adam, a plateau scheduler, early stopping on a
    validation set, seeded for determinism. Subclasses define `_build` (and may override
    `_fit_scaler`); hyper-parameters live in their __init__ as scikit-learn requires."""

    def _build(self, n_in: int, n_out: int) -> torch.nn.Module:
        raise NotImplementedError

    def _param_groups(self, net: torch.nn.Module) -> list[dict]:
        return [{"params": list(net.parameters())}]

    def fit(self, X, y, X_val=None, y_val=None):
        """Train with early stopping on (X_val, y_val), or on a hold-out of (X, y)."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if X_val is None:
            X, X_val, y_idx, y_val_idx = self._hold_out(X, y_idx)
        else:
            X_val = np.asarray(X_val, dtype=np.float32)
            y_val_idx = np.searchsorted(self.classes_, np.asarray(y_val))
            known = np.isin(np.asarray(y_val), self.classes_)
            X_val, y_val_idx = X_val[known], y_val_idx[known]
        self._fit_scaler(X)
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(auto if self.device == "auto" else self.device)
        # Training draws dropout masks from the global RNG: fork and seed it for determinism.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            net, best_state, best = self._train(X, y_idx, X_val, y_val_idx, device)
        net.load_state_dict(best_state)
        self.best_val_loss_ = float(best)
        self.net_ = net.cpu().eval()
        return self

    def _train(self, X, y_idx, X_val, y_val_idx, device):
        gen = torch.Generator().manual_seed(self.random_state)
        net = self._build(X.shape[1], len(self.classes_)).to(device)
        xt = torch.from_numpy(self._scale(X)).to(device)
        yt = torch.from_numpy(y_idx.astype(np.int64)).to(device)
        xv = torch.from_numpy(self._scale(X_val)).to(device)
        yv = torch.from_numpy(y_val_idx.astype(np.int64)).to(device)
        opt = torch.optim.Adam(
            self._param_groups(net), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=0.5, patience=max(1, self.patience // 3)
        )
        loss_fn = torch.nn.CrossEntropyLoss()
        best, best_state, waited = np.inf, copy.deepcopy(net.state_dict()), 0
        self.n_epochs_ = 0
        for _ in range(self.max_epochs):
            net.train()
            order = torch.randperm(len(xt), generator=gen).to(device)
            for i in range(0, len(xt), self.batch_size):
                idx = order[i : i + self.batch_size]
                if len(idx) < 2:
                    continue  # BatchNorm needs two rows
                opt.zero_grad()
                loss_fn(net(xt[idx]), yt[idx]).backward()
                opt.step()
            self.n_epochs_ += 1
            net.eval()
            with torch.no_grad():
                val_loss = loss_fn(net(xv), yv).item() if len(xv) else loss_fn(net(xt), yt).item()
            sched.step(val_loss)
            if val_loss < best * (1 - 1e-3):  # a relative gain, so tiny ones do not extend training
                best, best_state, waited = val_loss, copy.deepcopy(net.state_dict()), 0
            else:
                waited += 1
                if waited >= self.patience:
                    break
        return net, best_state, best

    def _hold_out(self, X, y_idx):
        n_classes = len(self.classes_)
        n_val = int(round(self.validation_fraction * len(X)))
        counts = np.bincount(y_idx)
        if n_val < n_classes or counts.min() < 2 or len(X) - n_val < n_classes:
            return X, X, y_idx, y_idx  # too small to hold out: stop on training loss
        return train_test_split(
            X, y_idx, test_size=n_val, stratify=y_idx, random_state=self.random_state
        )

    def _fit_scaler(self, X: np.ndarray) -> None:
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0) + 1e-6

    def _scale(self, X) -> np.ndarray:
        return ((np.asarray(X, dtype=np.float32) - self.mean_) / self.scale_).astype(np.float32)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of classes_."""
        check_is_fitted(self, "net_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        with torch.no_grad():
            return (
                torch.softmax(self.net_(torch.from_numpy(self._scale(X))), dim=1)
                .numpy()
                .astype(np.float64)
            )

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


class FCNNClassifier(TorchClassifier):
    """The paper's fully connected network: dense layers with BatchNorm, ReLU and Dropout.

    Inputs are standardised inside the head. Adam with a plateau scheduler (halving the rate);
    early stopping on the validation set passed to fit (or a stratified hold-out of the training
    data). The paper starts Adam at 1e-4 with small batches; on a GTZAN-sized cache that took
    about 125 epochs (21 s per layer here), where batches of 512 at 5e-3 stop after about 15
    epochs (0.7 s) with a lower validation loss, and match 2e-3 on the real dev clips
    (benchmarks/README.md), so those are the defaults.
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
    ):
        self.hidden_layers = hidden_layers
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state

    def _build(self, n_in: int, n_out: int) -> torch.nn.Sequential:
        layers: list[torch.nn.Module] = []
        for width in self.hidden_layers:
            layers += [
                torch.nn.Linear(n_in, width),
                torch.nn.BatchNorm1d(width),
                torch.nn.ReLU(),
                torch.nn.Dropout(self.dropout),
            ]
            n_in = width
        layers.append(torch.nn.Linear(n_in, n_out))
        return torch.nn.Sequential(*layers)


class LayerWeightedClassifier(TorchClassifier):
    """The FCNN over a learned softmax-weighted sum of all layers, as the SUPERB benchmark does.

    X rows are a segment's layers flattened ([n_layers x dim]); each feature is standardised.
    After fitting, `layer_weights_` holds the learned weights (they sum to one).
    """

    def __init__(
        self,
        n_layers: int = 13,
        weights_learning_rate: float = 5e-2,
        hidden_layers: tuple[int, ...] = (256, 128),
        dropout: float = 0.3,
        learning_rate: float = 2e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 512,
        max_epochs: int = 100,
        patience: int = 6,
        validation_fraction: float = 0.1,
        device: str = "cpu",
        random_state: int = 0,
    ):
        self.n_layers = n_layers
        self.weights_learning_rate = weights_learning_rate
        self.hidden_layers = hidden_layers
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state

    def _build(self, n_in: int, n_out: int) -> torch.nn.Module:
        if n_in % self.n_layers:
            raise ValueError(
                f"{n_in} features are not n_layers={self.n_layers} layers of equal width"
            )
        mlp = FCNNClassifier(self.hidden_layers, self.dropout)._build(n_in // self.n_layers, n_out)
        return _LayerWeightedNet(self.n_layers, mlp)

    def _param_groups(self, net: torch.nn.Module) -> list[dict]:
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


class AttentionPoolingClassifier(TorchClassifier):
    """Attention over a track's segment embeddings, predicting the track (the paper's future work).

    Each segment is encoded by a small dense layer, scored, and the track is the softmax-weighted
    sum of its segments: segments that carry the genre count more than, say, a silent intro,
    unlike the mean of segment probabilities. fit and predict_proba take `groups` (the track of
    each row); predict_proba gives every row its track's probabilities.
    """

    needs_groups = True

    def __init__(
        self,
        hidden: int = 128,
        dropout: float = 0.3,
        learning_rate: float = 2e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        max_epochs: int = 100,
        patience: int = 8,
        device: str = "cpu",
        random_state: int = 0,
    ):
        self.hidden = hidden
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.device = device
        self.random_state = random_state

    def _build(self, n_in: int, n_out: int) -> torch.nn.Module:
        return _AttentionNet(n_in, self.hidden, self.dropout, n_out)

    def fit(self, X, y, groups=None, X_val=None, y_val=None, groups_val=None):
        """Train on tracks (bags of segments); early stopping on the validation tracks."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        groups = np.arange(len(X)) if groups is None else np.asarray(groups)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        self._fit_scaler(X)
        bags, labels = self._bags(self._scale(X), groups, y_idx)
        if X_val is not None and len(X_val):
            known = np.isin(np.asarray(y_val), self.classes_)
            val_bags, val_labels = self._bags(
                self._scale(np.asarray(X_val, np.float32)[known]),
                np.asarray(groups_val)[known],
                np.searchsorted(self.classes_, np.asarray(y_val)[known]),
            )
        else:
            val_bags, val_labels = bags, labels
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            net = self._build(X.shape[1], len(self.classes_))
            opt = torch.optim.Adam(
                net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
            )
            loss_fn = torch.nn.CrossEntropyLoss()
            gen = torch.Generator().manual_seed(self.random_state)
            best, best_state, waited = np.inf, copy.deepcopy(net.state_dict()), 0
            self.n_epochs_ = 0
            for _ in range(self.max_epochs):
                net.train()
                order = torch.randperm(len(bags[0]), generator=gen)
                for i in range(0, len(order), self.batch_size):
                    idx = order[i : i + self.batch_size]
                    opt.zero_grad()
                    loss_fn(net(bags[0][idx], bags[1][idx]), labels[idx]).backward()
                    opt.step()
                self.n_epochs_ += 1
                net.eval()
                with torch.no_grad():
                    val_loss = loss_fn(net(*val_bags), val_labels).item()
                if val_loss < best * (1 - 1e-3):
                    best, best_state, waited = val_loss, copy.deepcopy(net.state_dict()), 0
                else:
                    waited += 1
                    if waited >= self.patience:
                        break
        net.load_state_dict(best_state)
        self.best_val_loss_ = float(best)
        self.net_ = net.eval()
        return self

    @staticmethod
    def _bags(X: np.ndarray, groups: np.ndarray, y_idx: np.ndarray | None = None):
        """Pad each track's segments to [tracks, most segments, dim] with a mask of real rows."""
        tracks, inverse = np.unique(groups, return_inverse=True)
        counts = np.bincount(inverse)
        padded = np.zeros((len(tracks), counts.max(), X.shape[1]), np.float32)
        mask = np.zeros((len(tracks), counts.max()), bool)
        slot = np.zeros(len(X), int)
        seen = np.zeros(len(tracks), int)
        for row, t in enumerate(inverse):
            slot[row] = seen[t]
            seen[t] += 1
        padded[inverse, slot] = X
        mask[inverse, slot] = True
        bags = (torch.from_numpy(padded), torch.from_numpy(mask))
        if y_idx is None:
            return bags, inverse
        labels = np.zeros(len(tracks), np.int64)
        labels[inverse] = y_idx
        return bags, torch.from_numpy(labels)

    def predict_proba(self, X, groups=None) -> np.ndarray:
        """Each row gets its track's probabilities (rows of one track share one answer)."""
        check_is_fitted(self, "net_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        groups = np.arange(len(X)) if groups is None else np.asarray(groups)
        bags, inverse = self._bags(self._scale(X), groups)
        with torch.no_grad():
            proba = torch.softmax(self.net_(*bags), dim=1).numpy().astype(np.float64)
        return proba[inverse]

    def predict(self, X, groups=None) -> np.ndarray:
        """The most probable class of each row's track."""
        proba = self.predict_proba(X, groups)
        return self.classes_[np.argmax(proba, axis=1)]

    def attention_(self, X, groups) -> np.ndarray:
        """The weight each row gets within its track (they sum to one per track)."""
        bags, inverse = self._bags(self._scale(np.asarray(X, np.float32)), np.asarray(groups))
        with torch.no_grad():
            weights = self.net_.weights(*bags).numpy()
        slot = np.zeros(len(inverse), int)
        seen = np.zeros(inverse.max() + 1, int)
        for row, t in enumerate(inverse):
            slot[row] = seen[t]
            seen[t] += 1
        return weights[inverse, slot]


class _AttentionNet(torch.nn.Module):
    def __init__(self, n_in: int, hidden: int, dropout: float, n_out: int):
        super().__init__()
        self.encode = torch.nn.Sequential(
            torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout)
        )
        self.score = torch.nn.Sequential(
            torch.nn.Linear(hidden, hidden // 2), torch.nn.Tanh(), torch.nn.Linear(hidden // 2, 1)
        )
        self.out = torch.nn.Linear(hidden, n_out)

    def weights(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(self.encode(x)).squeeze(-1).masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.encode(x)
        scores = self.score(h).squeeze(-1).masked_fill(~mask, float("-inf"))
        return self.out((torch.softmax(scores, dim=1).unsqueeze(-1) * h).sum(dim=1))


class SpectrogramClassifier(TorchClassifier):
    """CNN, LSTM or CNN-LSTM over a log-mel spectrogram (the paper's spectrogram baselines).

    X rows are flattened [n_mels x frames] log-mel images (the `logmel` feature set); each mel
    band is standardised with its training mean and deviation.
    """

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
        self.kind = kind
        self.n_mels = n_mels
        self.channels = channels
        self.hidden = hidden
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state

    def _fit_scaler(self, X: np.ndarray) -> None:
        if X.shape[1] % self.n_mels:
            raise ValueError(f"{X.shape[1]} features are not n_mels={self.n_mels} bands x frames")
        bands = X.reshape(len(X), self.n_mels, -1)
        frames = bands.shape[2]
        self.mean_ = np.repeat(bands.mean(axis=(0, 2)), frames).astype(np.float32)
        self.scale_ = np.repeat(bands.std(axis=(0, 2)) + 1e-6, frames).astype(np.float32)

    def _build(self, n_in: int, n_out: int) -> torch.nn.Module:
        if self.kind not in SPECTROGRAM_HEADS:
            raise ValueError(f"unknown kind {self.kind!r}; use {', '.join(SPECTROGRAM_HEADS)}")
        return _SpectrogramNet(
            self.kind, self.n_mels, self.channels, self.hidden, self.dropout, n_out
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
        x = x.view(len(x), 1, self.n_mels, -1)  # [batch, 1, mels, frames]
        if self.kind == "cnn":
            return self.out(self.conv(x).mean(dim=(2, 3)))
        if self.kind == "cnn-lstm":
            x = self.conv(x)  # [batch, channels, mels / 8, frames / 8]
            x = x.flatten(1, 2).transpose(1, 2)  # a sequence over frames
        else:
            # Frames averaged in fours (128 ms steps): an LSTM's steps run one after another.
            x = torch.nn.functional.avg_pool1d(x[:, 0], 4, ceil_mode=True).transpose(1, 2)
        return self.out(self.lstm(x)[0].mean(dim=1))


class SVMHead(ClassifierMixin, BaseEstimator):
    """RBF-kernel SVM on standardised features.

    Up to `max_precomputed` training rows the kernel matrix is computed with one matrix
    multiply (BLAS, all cores) and handed to libsvm, about 3x faster than libsvm's own kernel
    loop; above it, libsvm computes the kernel itself. Probabilities are a softmax over the
    one-vs-rest decision values: they rank classes and tracks like the SVM does, without
    the 5-fold Platt calibration that would cost five more fits.
    """

    def __init__(self, C: float = 10.0, max_precomputed: int = 20_000, random_state: int = 0):
        self.C = C
        self.max_precomputed = max_precomputed
        self.random_state = random_state

    def fit(self, X, y):
        """Standardise, then fit the SVM."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError("SVMHead needs at least two classes; got 1 class")
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0) + 1e-6
        A = self._scale(X)
        self.gamma_ = float(1.0 / (A.shape[1] * max(float(A.var()), 1e-12)))
        self.precomputed_ = len(A) <= self.max_precomputed
        if self.precomputed_:
            self.svc_ = SVC(kernel="precomputed", C=self.C, random_state=self.random_state).fit(
                self._kernel(A, A), y
            )
            self.support_vectors_ = A[self.svc_.support_]
            self.n_train_ = len(A)
        else:
            self.svc_ = SVC(
                kernel="rbf", gamma=self.gamma_, C=self.C, random_state=self.random_state
            ).fit(A, y)
        return self

    def _scale(self, X) -> np.ndarray:
        return ((np.asarray(X, dtype=np.float32) - self.mean_) / self.scale_).astype(np.float32)

    def _kernel(self, P: np.ndarray, Q: np.ndarray) -> np.ndarray:
        d2 = (P * P).sum(1)[:, None] + (Q * Q).sum(1)[None, :] - 2.0 * (P @ Q.T)
        return np.exp(-self.gamma_ * np.maximum(d2, 0.0)).astype(np.float64)

    def decision_function(self, X) -> np.ndarray:
        """One-vs-rest decision values, [n, classes] ([n] for two classes, as in SVC)."""
        check_is_fitted(self, "svc_")
        B = self._scale(validate_data(self, X, dtype=np.float32, reset=False))
        if not self.precomputed_:
            values = self.svc_.decision_function(B)
        else:
            # Only support-vector columns matter; the others have zero dual coefficients.
            K = np.zeros((len(B), self.n_train_))
            K[:, self.svc_.support_] = self._kernel(B, self.support_vectors_)
            values = self.svc_.decision_function(K)
        return values

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of the decision values, columns in the order of classes_."""
        d = self.decision_function(X)
        if d.ndim == 1:  # two classes: one value, positive for classes_[1]
            d = np.stack([-d / 2, d / 2], axis=1)
        e = np.exp(d - d.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """The class with the highest decision value."""
        values = self.decision_function(X)
        if values.ndim == 1:
            return self.classes_[(values > 0).astype(int)]
        return self.classes_[np.argmax(values, axis=1)]


class XGBHead(ClassifierMixin, BaseEstimator):
    """XGBoost (histogram method) behind the same contract; labels of any type."""

    def __init__(
        self,
        n_estimators: int = 30,
        max_depth: int = 3,
        learning_rate: float = 0.3,
        subsample: float = 0.8,
        colsample_bytree: float = 0.2,
        n_jobs: int | None = None,
        random_state: int = 0,
    ):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _model(self):
        from xgboost import XGBClassifier

        return XGBClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            subsample=self.subsample,
            colsample_bytree=self.colsample_bytree,
            tree_method="hist",
            n_jobs=self.n_jobs,
            random_state=self.random_state,
            max_bin=64,
        )

    def fit(self, X, y):
        """Fit boosted trees on integer-coded labels."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("XGBHead needs at least two classes; got 1 class")
        self.booster_ = self._model().fit(X, y_idx)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of classes_."""
        check_is_fitted(self, "booster_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        proba = self.booster_.predict_proba(X)
        return proba if proba.ndim == 2 else np.stack([1 - proba, proba], 1)

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


def make_head(name: str, seed: int = 0, **params) -> BaseEstimator:
    """A fresh, unfitted head by name (fcnn, svm, rf, xgb, logreg, cnn, lstm, cnn-lstm)."""
    if name == "fcnn":
        if "hidden_layers" in params:
            params = {**params, "hidden_layers": tuple(params["hidden_layers"])}
        return FCNNClassifier(random_state=seed, **params)
    if name in SPECTROGRAM_HEADS:
        return SpectrogramClassifier(kind=name, random_state=seed, **params)
    if name == "fcnn-weighted":
        return LayerWeightedClassifier(random_state=seed, **params)
    if name == "attention":
        return AttentionPoolingClassifier(random_state=seed, **params)
    if name == "svm":
        return SVMHead(random_state=seed, **params)
    if name == "rf":
        # Half-size bootstraps: twice as fast on GTZAN-sized caches, same accuracy there.
        return RandomForestClassifier(
            n_estimators=50, max_samples=0.5, n_jobs=-1, random_state=seed, **params
        )
    if name == "xgb":
        return XGBHead(random_state=seed, **params)
    if name == "logreg":
        return make_pipeline(
            StandardScaler(),
            LogisticRegression(max_iter=300, **_prefixed(params, "logisticregression")),
        )
    raise HeadError(f"unknown head {name!r}; available: {', '.join(ALL_HEADS)}")


# A few hyper-parameter values per head, chosen on the validation split.
# Small on purpose: every head on every layer of a GTZAN-sized cache fits in about a minute on
# two cores (benchmarks/train_heads.py).
PARAM_GRIDS: dict[str, list[dict]] = {
    "fcnn": [{}],  # its early stopping and scheduler already adapt it to the data
    "svm": [{"C": 10.0}],
    "rf": [{"min_samples_leaf": 1}],
    "xgb": [{"max_depth": 3}],
    "logreg": [{"C": 0.1}, {"C": 1.0}],
    "cnn": [{}],
    "lstm": [{}],
    "cnn-lstm": [{}],
    "fcnn-weighted": [{}],
    "attention": [{}],
}


def _prefixed(params: dict, step: str) -> dict:
    return {k.removeprefix(f"{step}__"): v for k, v in params.items()}


# ---- persistence: never pickle ----------------------------------------------------------


def save_head(head: BaseEstimator, name: str, directory: Path) -> str:
    """Write a fitted head in a safe format; return the file name."""
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(head, TorchClassifier):
        from safetensors.torch import save_file

        tensors = {f"net.{k}": v.contiguous() for k, v in head.net_.state_dict().items()}
        tensors["mean"] = torch.from_numpy(head.mean_)
        tensors["scale"] = torch.from_numpy(head.scale_)
        meta = {
            "params": json.dumps(_json_params(head.get_params())),
            "classes": json.dumps(head.classes_.tolist()),
            "n_features_in": str(head.n_features_in_),
        }
        save_file(tensors, directory / "head.safetensors", metadata=meta)
        return "head.safetensors"
    if name == "xgb":
        head.booster_.save_model(directory / "head.ubj")
        (directory / "head_params.json").write_text(
            json.dumps(
                {
                    "params": _json_params(head.get_params()),
                    "classes": head.classes_.tolist(),
                    "n_features_in": int(head.n_features_in_),
                }
            )
        )
        return "head.ubj"
    import skops.io as sio

    sio.dump(head, directory / "head.skops")
    return "head.skops"


def load_head(name: str, path: Path) -> BaseEstimator:
    """Load a head saved by save_head; foreign content raises HeadError, nothing is unpickled."""
    try:
        if name in ("fcnn", "fcnn-weighted", "attention") or name in SPECTROGRAM_HEADS:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata()
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            params = json.loads(meta["params"])
            if name == "fcnn":
                params["hidden_layers"] = tuple(params["hidden_layers"])
                head = FCNNClassifier(**params)
            elif name == "fcnn-weighted":
                params["hidden_layers"] = tuple(params["hidden_layers"])
                head = LayerWeightedClassifier(**params)
            elif name == "attention":
                head = AttentionPoolingClassifier(**params)
            else:
                head = SpectrogramClassifier(**params)
            head.classes_ = np.array(json.loads(meta["classes"]))
            head.n_features_in_ = int(meta["n_features_in"])
            head.mean_, head.scale_ = tensors.pop("mean").numpy(), tensors.pop("scale").numpy()
            head.net_ = head._build(head.n_features_in_, len(head.classes_))
            head.net_.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items()})
            head.net_.eval()
            return head
        if name == "xgb":
            from xgboost import XGBClassifier

            info = json.loads((path.parent / "head_params.json").read_text())
            head = XGBHead(**info["params"])
            head.classes_ = np.array(info["classes"])
            head.n_features_in_ = info["n_features_in"]
            head.booster_ = XGBClassifier()
            head.booster_.load_model(path)
            return head
        if name in ("svm", "rf", "logreg"):
            import skops.io as sio

            untrusted = [t for t in sio.get_untrusted_types(file=path) if t not in _OWN_TYPES]
            if untrusted:
                raise HeadError(
                    f"{path}: refuses to load types that are not known to be safe: {untrusted}"
                )
            return sio.load(path, trusted=list(_OWN_TYPES))
    except HeadError:
        raise
    except Exception as exc:
        raise HeadError(f"{path}: not a valid {name} head ({type(exc).__name__}: {exc})") from None
    raise HeadError(f"unknown head {name!r}; available: {', '.join(ALL_HEADS)}")


# Types skops does not trust by default but that are plain data: our SVM head and sklearn's trees.
_OWN_TYPES = ("wav2genre_cache.heads.SVMHead", "sklearn.tree._tree.Tree")


def _json_params(params: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
