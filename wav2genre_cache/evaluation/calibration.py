"""Scores a user can threshold: temperature or isotonic calibration, ECE, per-tag thresholds.

Two kinds of scores, chosen everywhere by `multi_label` (never guessed from the labels' shape,
so a mistaken shape is an error rather than a silent switch):

- single-label: rows of `proba [n, K]` that sum to 1, with true label indices `y [n]`;
- multi-label: independent per-tag probabilities `proba [n, K]`, with a {0,1} indicator `Y [n, K]`.

A fitted `Calibrator` is plain numbers (a temperature, or per-class breakpoints for np.interp),
so bundles store it as JSON and inference applies it with numpy alone. This module is imported
by `predict` and the web server: it imports numpy and scipy only (scikit-learn's isotonic
regression is imported inside the fitting function).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_expit, log_softmax, logit

from wav2genre_cache.errors import CalibrationError
from wav2genre_cache.evaluation.calibration_map import EPS as _EPS
from wav2genre_cache.evaluation.calibration_map import apply_map
from wav2genre_cache.evaluation.intervals import wilson_interval

METHODS = ("auto", "none", "temperature", "isotonic")
# The temperature search interval: wide enough for any sane head, bounded so that a validation
# set the head fits perfectly does not drive T to 0 (scores of exactly 0 and 1).
T_BOUNDS = (0.05, 20.0)
# Breakpoints and temperatures are kept at 8 significant digits: bundle.json stays small, and
# apply uses exactly the stored numbers, so a JSON round trip changes nothing.
_DIGITS = 8
_IDENTITY = {"x": [0.0, 1.0], "y": [0.0, 1.0]}


@dataclass
class Calibrator:
    """A fitted map from raw scores to calibrated ones; `method` "none" is the identity."""

    method: str  # "none" | "temperature" | "isotonic"
    multi_label: bool
    temperature: float = 1.0
    isotonic: list | None = None  # per class/tag: {"x": [...], "y": [...]} for np.interp

    def __post_init__(self) -> None:
        if self.method not in ("none", "temperature", "isotonic"):
            raise CalibrationError(
                f"unknown calibration method {self.method!r}; use none, temperature or isotonic"
            )
        if self.method == "temperature" and not self.temperature > 0:
            raise CalibrationError(f"calibration temperature must be > 0, not {self.temperature}")
        if self.method == "isotonic" and not self.isotonic:
            raise CalibrationError("isotonic calibration without its per-class maps")
        for m in self.isotonic or ():
            if not 0 < len(m["x"]) == len(m["y"]):
                raise CalibrationError("an isotonic map needs as many x as y breakpoints")

    def apply(self, proba: np.ndarray) -> np.ndarray:
        """Calibrated scores, [n, K] float64, for raw scores [n, K] of this calibrator's kind."""
        p = np.array(proba, dtype=np.float64)  # a copy: the caller's array is never changed
        if p.ndim != 2:
            raise CalibrationError(f"scores must be [rows, classes], not shape {p.shape}")
        if self.method == "isotonic" and p.shape[1] != len(self.isotonic):
            raise CalibrationError(
                f"scores have {p.shape[1]} classes but the calibration has {len(self.isotonic)}"
            )
        return apply_map(p, self.method, self.multi_label, self.temperature, self.isotonic)

    def as_json(self) -> dict:
        """The calibrator as plain JSON values (what bundle.json stores)."""
        return {
            "method": self.method,
            "multi_label": bool(self.multi_label),
            "temperature": float(self.temperature),
            "isotonic": None
            if self.isotonic is None
            else [
                {"x": [float(v) for v in m["x"]], "y": [float(v) for v in m["y"]]}
                for m in self.isotonic
            ],
        }

    @classmethod
    def from_json(cls, d: dict | None) -> Calibrator:
        """The calibrator `as_json` wrote; None (a bundle from before calibration) is the identity."""
        if d is None:
            return cls(method="none", multi_label=False)
        try:
            isotonic = d.get("isotonic")
            return cls(
                method=str(d["method"]),
                multi_label=bool(d["multi_label"]),
                temperature=float(d.get("temperature", 1.0)),
                isotonic=None
                if isotonic is None
                else [{"x": list(m["x"]), "y": list(m["y"])} for m in isotonic],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CalibrationError(f"unreadable calibration in the bundle ({e!r})") from e


def fit_calibrator(
    proba: np.ndarray,
    y: np.ndarray,
    multi_label: bool,
    method: str = "auto",
    min_isotonic: int = 1000,
) -> Calibrator:
    """Fit a calibrator on held-out rows (validation, never the rows the head was fitted on).

    method "auto": for tags, isotonic with at least `min_isotonic` rows, temperature below
    (isotonic regression has a free step per distinct score and per tag, so it overfits a small
    validation set, while temperature scaling has one parameter and cannot); for single labels,
    temperature always, because per-class isotonic maps renormalised can change which label
    is the most probable, and the model chosen on validation would not be the one reported.
    """
    if method not in METHODS:
        raise CalibrationError(
            f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}"
        )
    p, y = _check(proba, y, multi_label)
    if method == "none":
        return Calibrator(method="none", multi_label=multi_label)
    if len(p) == 0:
        raise CalibrationError("no rows to fit a calibration on")
    if method == "auto":
        method = "isotonic" if multi_label and len(p) >= min_isotonic else "temperature"
    if method == "temperature":
        return Calibrator(
            "temperature", multi_label, temperature=_fit_temperature(p, y, multi_label)
        )
    return Calibrator("isotonic", multi_label, isotonic=_fit_isotonic(p, y, multi_label))


def expected_calibration_error(
    proba: np.ndarray, y: np.ndarray, multi_label: bool, bins: int = 15
) -> float:
    """Expected calibration error: per equal-width bin |accuracy - confidence|, weighted by count.

    Single-label: top-label ECE (confidence = the highest score, correct = argmax == y).
    Multi-label: every (row, tag) pair is one binary prediction (confidence = its score,
    outcome = its indicator), so it measures whether a tag scored p is present a fraction p of
    the time. Bin b holds confidences in [b/bins, (b+1)/bins), the last one also 1.0.
    """
    return reliability(proba, y, multi_label, bins)["ece"]


def reliability(proba: np.ndarray, y: np.ndarray, multi_label: bool, bins: int = 15) -> dict:
    """The reliability diagram behind `expected_calibration_error`, per equal-width bin.

    Returns {"edges": bins+1 floats, "confidence", "accuracy": mean per bin (None when the bin
    is empty), "count": ints summing to n (single-label) or n*K (multi-label), "ece": float}.
    """
    if bins < 1:
        raise CalibrationError(f"reliability needs at least one bin, not {bins}")
    conf, outcome = _confidence_and_outcome(proba, y, multi_label)
    which = np.clip(np.floor(conf * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    hit_sum = np.bincount(which, weights=outcome, minlength=bins)
    filled = count > 0
    mean_conf = np.divide(conf_sum, count, out=np.zeros(bins), where=filled)
    mean_hit = np.divide(hit_sum, count, out=np.zeros(bins), where=filled)
    total = max(int(count.sum()), 1)
    ece = float(np.sum(count * np.abs(mean_hit - mean_conf)) / total)
    return {
        "edges": np.linspace(0.0, 1.0, bins + 1).tolist(),
        "confidence": [float(c) if f else None for c, f in zip(mean_conf, filled, strict=True)],
        "accuracy": [float(a) if f else None for a, f in zip(mean_hit, filled, strict=True)],
        "count": [int(c) for c in count],
        "ece": ece,
    }


def reliability_by_count(
    proba: np.ndarray, y: np.ndarray, multi_label: bool, per_bin: int = 10, max_bins: int = 10
) -> dict:
    """The reliability diagram over equal-count bins, each with its 95 % interval.

    Equal-width bins over a few test tracks leave most bins empty and the rest of one or two
    tracks, whose fraction right jumps between 0 and 1; here the tracks (or, for tags, the
    (track, tag) pairs) sorted by confidence are cut into at most max_bins bins of at least
    per_bin each (one bin below 2 * per_bin), and each bin's fraction right carries Wilson's
    interval. Returns {"confidence", "accuracy", "count", "low", "high"}: one entry per bin.
    """
    conf, outcome = _confidence_and_outcome(proba, y, multi_label)
    order = np.argsort(conf, kind="stable")
    bins = [b for b in np.array_split(order, max(1, min(max_bins, len(conf) // per_bin))) if len(b)]
    out: dict[str, list] = {"confidence": [], "accuracy": [], "count": [], "low": [], "high": []}
    for rows in bins:
        right = int(outcome[rows].sum())
        low, high = wilson_interval(right, len(rows))
        out["confidence"].append(float(conf[rows].mean()))
        out["accuracy"].append(right / len(rows))
        out["count"].append(len(rows))
        out["low"].append(low)
        out["high"].append(high)
    return out


def _confidence_and_outcome(
    proba: np.ndarray, y: np.ndarray, multi_label: bool
) -> tuple[np.ndarray, np.ndarray]:
    """What a reliability diagram plots per prediction: its confidence and whether it was right
    (single-label: the top label's score; tags: every (row, tag) score and its indicator)."""
    p, y = _check(proba, y, multi_label)
    if multi_label:
        return p.ravel(), y.ravel().astype(np.float64)
    if not p.shape[1]:
        return np.zeros(len(p)), np.zeros(len(p))
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def choose_thresholds(proba: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Per-tag thresholds [K] that maximise each tag's F1 on these rows (multi-label).

    A tag is predicted when its score >= its threshold. The threshold is the midpoint between
    the best-F1 score and the next lower score of that tag (same decisions on these rows,
    a margin either side for new ones); ties in F1 take the highest threshold (fewer
    predictions). A tag with no positive row gets 0.5.
    """
    p, Y = _check(proba, Y, multi_label=True)
    n, k = p.shape
    out = np.full(k, 0.5)
    if n == 0:
        return out
    # All tags at once: sort each column by descending score; predicting the top i rows of a
    # column gives TP = cumsum of its labels and F1 = 2 TP / (i + positives).
    order = np.argsort(-p, axis=0, kind="stable")
    s = np.take_along_axis(p, order, axis=0)
    tp = np.cumsum(np.take_along_axis(Y, order, axis=0), axis=0, dtype=np.float64)
    positives = tp[-1]
    f1 = 2 * tp / (np.arange(1, n + 1)[:, None] + positives)
    # Only the last row of a run of equal scores is a threshold one can set.
    cut = np.ones((n, k), dtype=bool)
    cut[:-1] = s[:-1] != s[1:]
    f1[~cut] = -1.0
    best = np.argmax(f1, axis=0)  # the first maximum: the highest threshold
    cols = np.arange(k)
    thr = s[best, cols]
    lower = s[np.minimum(best + 1, n - 1), cols]
    mid = (thr + lower) / 2
    # The midpoint must stay above the next score, which it may not for adjacent floats.
    thr = np.where((best < n - 1) & (mid > lower), mid, thr)
    return np.where(positives > 0, thr, out)


def _check(proba: np.ndarray, y: np.ndarray, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scores as float64 [n, K] and labels checked against them (indices, or a {0,1} indicator)."""
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y)
    if p.ndim != 2:
        raise CalibrationError(f"scores must be [rows, classes], not shape {p.shape}")
    if multi_label:
        if y.shape != p.shape:
            raise CalibrationError(
                f"multi-label needs a [rows, tags] indicator shaped like the scores {p.shape}, "
                f"not {y.shape}"
            )
        if y.size and not np.isin(y, (0, 1)).all():
            raise CalibrationError("a multi-label indicator holds only 0 and 1")
        return p, y.astype(np.int64)
    if y.shape != (len(p),):
        raise CalibrationError(
            f"single-label needs one label index per row ({len(p)}), not shape {y.shape}"
        )
    if y.size and (not np.array_equal(y, np.round(y)) or y.min() < 0 or y.max() >= p.shape[1]):
        raise CalibrationError(f"single-label labels are class indices in 0..{p.shape[1] - 1}")
    return p, y.astype(np.int64)


def _log_scores(p: np.ndarray) -> np.ndarray:
    """Single-label logits: the log of the clipped scores (softmax undoes it up to a constant)."""
    return np.log(np.clip(p, _EPS, 1.0))


def _tag_logits(p: np.ndarray) -> np.ndarray:
    """Multi-label logits of the clipped per-tag scores."""
    return logit(np.clip(p, _EPS, 1.0 - _EPS))


def _round(values: np.ndarray) -> np.ndarray:
    """Values at _DIGITS significant digits, as apply will read them back from JSON."""
    return np.array([float(f"{v:.{_DIGITS}g}") for v in values], dtype=np.float64)


def _fit_temperature(p: np.ndarray, y: np.ndarray, multi_label: bool) -> float:
    """The T in T_BOUNDS that minimises the NLL (single-label) or mean BCE (multi-label)."""
    if multi_label:
        z = _tag_logits(p)
        pos = y.astype(bool)

        def loss(log_t: float) -> float:
            zt = z / np.exp(log_t)
            return -float(np.mean(np.where(pos, log_expit(zt), log_expit(-zt))))

    else:
        z = _log_scores(p)
        rows = np.arange(len(p))

        def loss(log_t: float) -> float:
            return -float(np.mean(log_softmax(z / np.exp(log_t), axis=1)[rows, y]))

    # Searched over log T: the loss is far better conditioned there than over T.
    res = minimize_scalar(loss, bounds=np.log(T_BOUNDS), method="bounded", options={"xatol": 1e-6})
    return float(_round(np.array([np.exp(res.x)]))[0])


def _fit_isotonic(p: np.ndarray, y: np.ndarray, multi_label: bool) -> list[dict]:
    """Per class (one-vs-rest) or per tag, isotonic breakpoints; identity where undefined."""
    from sklearn.isotonic import IsotonicRegression  # fitting only: inference needs no sklearn

    maps = []
    for k in range(p.shape[1]):
        target = y[:, k] if multi_label else (y == k).astype(np.int64)
        if target.all() or not target.any():
            maps.append({"x": list(_IDENTITY["x"]), "y": list(_IDENTITY["y"])})
            continue  # no positives or no negatives: nothing to map from
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
        iso.fit(p[:, k], target)
        x, v = _round(iso.X_thresholds_), _round(iso.y_thresholds_)
        # Rounding may merge two neighbouring x: np.interp needs them distinct.
        keep = np.concatenate([[True], x[1:] > x[:-1]])
        maps.append({"x": x[keep].tolist(), "y": v[keep].tolist()})
    return maps
