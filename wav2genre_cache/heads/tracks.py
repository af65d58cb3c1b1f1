"""Heads that predict a whole track from its segments: attention pooling over them."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from wav2genre_cache.heads.contract import is_multi_label, keep_init_args, predictions_from_proba
from wav2genre_cache.heads.networks import TorchClassifier


class AttentionPoolingClassifier(TorchClassifier):
    """Attention over a track's segment embeddings, predicting the track (the paper's future work).

    Each segment is encoded by a small dense layer, scored, and the track is the softmax-weighted
    sum of its segments: segments that carry the genre count more than, say, a silent intro,
    unlike the mean of segment probabilities. fit and predict_proba take `groups` (the track of
    each row); predict_proba gives every row its track's probabilities. Fitted on a tag matrix
    (a row of tags per segment, the same for every segment of a track), it is multi-label.
    """

    _min_batch = 1  # no BatchNorm: a batch of one track is a batch
    _plateau = False  # a constant learning rate

    def __init__(
        self,
        hidden: int = 128,
        dropout: float = 0.3,
        learning_rate: float = 2e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        max_epochs: int = 100,
        patience: int = 8,
        validation_fraction: float = 0.1,
        device: str = "cpu",
        random_state: int = 0,
    ):
        keep_init_args(self, locals())

    def _build(self, n_in: int, n_out: int) -> torch.nn.Module:
        return _AttentionNet(n_in, self.hidden, self.dropout, n_out)

    def fit(self, X, y, groups=None, X_val=None, y_val=None, groups_val=None):
        """Train on tracks (bags of segments); early stopping on the validation tracks."""
        if is_multi_label(y):
            return self._fit_track_tags(X, y, groups, X_val, y_val, groups_val)
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        groups = np.arange(len(X)) if groups is None else np.asarray(groups)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        self.multi_label_ = False
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
            bags, labels, val_bags, val_labels = self._hold_out_tracks(bags, labels, stratify=True)
        return self._fit_net(X.shape[1], bags, labels, val_bags, val_labels)

    def _fit_track_tags(self, X, Y, groups, X_val, Y_val, groups_val):
        X, Y = self._tag_data(X, Y)
        groups = np.arange(len(X)) if groups is None else np.asarray(groups)
        self._fit_scaler(X)
        bags, labels = self._bags(self._scale(X), groups, Y)
        if X_val is not None and len(X_val):
            val_bags, val_labels = self._bags(
                self._scale(np.asarray(X_val, np.float32)),
                np.asarray(groups_val),
                self._tag_targets(Y_val),
            )
        else:
            bags, labels, val_bags, val_labels = self._hold_out_tracks(bags, labels, stratify=False)
        return self._fit_net(X.shape[1], bags, labels, val_bags, val_labels)

    def _hold_out_tracks(self, bags: tuple, labels: torch.Tensor, stratify: bool):
        """Without validation tracks, `validation_fraction` of the training tracks (stratified by
        label where each has two) stop training early; too few tracks stop on the training loss."""
        from sklearn.model_selection import train_test_split

        n = len(labels)
        n_val = int(round(self.validation_fraction * n))
        y = labels.numpy() if stratify else None
        if stratify:
            counts = np.bincount(y)
            counts = counts[counts > 0]
            if n_val < len(counts) or counts.min() < 2 or n - n_val < len(counts):
                return bags, labels, bags, labels
        elif n_val < 1 or n - n_val < 2:
            return bags, labels, bags, labels
        fit, val = train_test_split(
            np.arange(n), test_size=n_val, stratify=y, random_state=self.random_state
        )

        def take(rows):
            return tuple(t[rows] for t in bags), labels[rows]

        return (*take(fit), *take(val))

    @staticmethod
    def _bags(X: np.ndarray, groups: np.ndarray, y_idx: np.ndarray | None = None):
        """Pad each track's segments to [tracks, most segments, dim] with a mask of real rows.

        y_idx: label indices, or a float tag matrix [rows, tags]; a track takes its rows' labels.
        """
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
        dtype = np.int64 if y_idx.ndim == 1 else y_idx.dtype  # class indices, or tag rows
        labels = np.zeros((len(tracks), *y_idx.shape[1:]), dtype)
        labels[inverse] = y_idx
        return bags, torch.from_numpy(labels)

    def predict_proba(self, X, groups=None) -> np.ndarray:
        """Each row gets its track's probabilities (rows of one track share one answer).

        One forward pass per track, unpadded: batched, a track's answer moved by 2e-7 with
        the other tracks in the batch (the padding and the matrix shapes depended on them).
        """
        check_is_fitted(self, "net_")
        X = self._scale(validate_data(self, X, dtype=np.float32, reset=False))
        groups = np.arange(len(X)) if groups is None else np.asarray(groups)
        _, inverse = np.unique(groups, return_inverse=True)
        order = np.argsort(inverse, kind="stable")  # each track's rows, in their given order
        rows_per_track = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
        proba = np.empty((len(rows_per_track), len(self.classes_)))
        with torch.no_grad():
            for t, rows in enumerate(rows_per_track):
                x = torch.from_numpy(X[rows])[None]
                mask = torch.ones(1, len(rows), dtype=torch.bool)
                proba[t] = self._probabilities(self.net_(x, mask))[0].numpy()
        return proba[inverse]

    def predict(self, X, groups=None) -> np.ndarray:
        """The most probable class of each row's track (for tags: the indicator matrix at 0.5)."""
        return predictions_from_proba(self, self.predict_proba(X, groups))

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
