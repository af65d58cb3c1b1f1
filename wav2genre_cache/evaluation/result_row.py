"""The result row: one trained model's identity and scores, as metrics.json and finetune.json hold it.

Stage two writes a row per fitted head, fine-tuning one for its model; compare reads both alike.
Built here once: the selection score, the calibration summary, the test detail the figures draw,
and the scores a bundle carries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from wav2genre_cache.evaluation.calibration import (
    Calibrator,
    expected_calibration_error,
    reliability,
    reliability_by_count,
)

# What a grid point's row in `trials` and a row's `valid` hold (those a model's metrics have).
SELECTION_FIGURES = ("accuracy", "macro_f1", "macro_pr_auc", "macro_auc")


def selection_key(track_metrics: dict, multi_label: bool) -> tuple[float, float]:
    """What models are chosen by: macro PR-AUC then ROC-AUC for tags, else accuracy then F1."""
    if multi_label:
        return (track_metrics["macro_pr_auc"], track_metrics["macro_auc"])
    return (track_metrics["accuracy"], track_metrics["macro_f1"])


def selection_score(track_metrics: dict, multi_label: bool) -> float:
    """The selection key as one number: its first figure, ties broken by a thousandth of the second."""
    first, second = selection_key(track_metrics, multi_label)
    return first + 1e-3 * second


@dataclass(frozen=True)
class CalibratedTracks:
    """Test tracks' probabilities before and after the calibration map, with their truth."""

    raw: np.ndarray  # [tracks, labels]: the model's own
    calibrated: np.ndarray  # [tracks, labels]: through the map fitted on validation
    y: np.ndarray  # per track: a label index, or a {0,1} row of tags
    multi_label: bool

    @classmethod
    def of(
        cls, raw: np.ndarray, y: np.ndarray, multi_label: bool, calibrator: Calibrator
    ) -> CalibratedTracks:
        """The tracks' probabilities `raw` and the same through `calibrator`."""
        return cls(raw, calibrator.apply(raw), y, multi_label)

    def calibration(self, calibrator: Calibrator) -> dict:
        """A row's calibration: the map, the calibration error before and after, where it was fitted."""
        return {
            "method": calibrator.method,
            **(
                {"temperature": calibrator.temperature}
                if calibrator.method == "temperature"
                else {}
            ),
            "ece_before": expected_calibration_error(self.raw, self.y, self.multi_label),
            "ece_after": expected_calibration_error(self.calibrated, self.y, self.multi_label),
            # Without a validation split nothing was fitted: the map is the identity.
            "fitted_on": "valid" if calibrator.method != "none" else None,
        }

    def detail(self, track_metrics: dict) -> dict:
        """A row's test_detail: track metrics (with curves), truth, probabilities, reliability bins."""
        return {
            **track_metrics,
            "y_true": self.y.tolist(),
            "proba": np.round(self.calibrated, 5).tolist(),
            "reliability": {
                "before": reliability(self.raw, self.y, self.multi_label),
                "after": reliability(self.calibrated, self.y, self.multi_label),
            },
            "reliability_by_count": {
                "before": reliability_by_count(self.raw, self.y, self.multi_label),
                "after": reliability_by_count(self.calibrated, self.y, self.multi_label),
            },
        }


# The optional fields a row holds only where they are set (None, or False for the flags).
_ONLY_WHEN_SET = (
    "test_loss",
    "test_split",
    "layer_weights",
    "calibration",
    "thresholds",
    "bundle",
    "test_detail",
    "fine_tuned",
    "selection",
)
_ONLY_WHEN_TRUE = ("best_of_head", "best_overall")


@dataclass(frozen=True)
class ResultRow:
    """One trained model on one layer of one feature set: a row of a run's `results`."""

    head: str
    feature_set: str
    layer: int  # -1 (stage two's EVERY_LAYER, fine-tuning's weighted): a weighted sum of all
    augmented: bool | None  # None where no augmented views were there to train on
    selected_on: str  # the split its hyper-parameters (or epoch) were chosen on
    params: dict
    trials: list[dict] | None  # every grid point or search trial, where there were several
    selection_score: float  # selection_score() on the selection split
    valid: dict | None  # its validation scores, where there is a validation split
    test: dict  # {"segment": metrics, "track": metrics}, without curves
    fit_seconds: float
    predict_seconds: float
    # Fine-tuning: the test loss, and the split scored as test when there were no test tracks.
    test_loss: float | None = None
    test_split: str | None = None
    layer_weights: list[float] | None = None  # models over all layers: the weight of each
    calibration: dict | None = None  # CalibratedTracks.calibration
    thresholds: list[float] | None = None  # tags: each one's threshold chosen on validation
    # Set on the best model of each head and feature set, which gets a bundle ...
    best_of_head: bool = False
    bundle: str | None = None  # its folder in the run folder
    test_detail: dict | None = None  # CalibratedTracks.detail: what the figures draw
    # ... and on the best of those, copied to best/.
    best_overall: bool = False
    fine_tuned: dict | None = None  # fine-tuning: layers trained, epochs run, the best epoch
    # Chosen by cross-validation: the rule, and the folds' mean track accuracy with its
    # standard error and mean macro-F1 (then `valid` holds the folds' held-out tracks' scores).
    selection: dict | None = None

    def as_json(self) -> dict:
        """The row as a run's JSON holds it: the optional fields only where they are set."""
        row = asdict(self)
        for key in _ONLY_WHEN_SET:
            if row[key] is None:
                del row[key]
        for key in _ONLY_WHEN_TRUE:
            if not row[key]:
                del row[key]
        return row

    def bundle_metrics(self) -> dict:
        """The scores its bundle carries (serve shows them): test track and segment, validation."""
        track, segment = self.test["track"], self.test["segment"]
        scores = {
            "test_tracks": track.get("n"),
            "test_track_accuracy": track["accuracy"],
            "test_track_accuracy_ci": track.get("accuracy_ci"),
            "test_track_macro_f1": track["macro_f1"],
            "test_track_macro_f1_ci": track.get("macro_f1_ci"),
            "test_track_macro_auc": track["macro_auc"],
            "test_segment_accuracy": segment["accuracy"],
            "valid": self.valid,
        }
        if "macro_pr_auc" in track:
            scores["test_track_macro_pr_auc"] = track["macro_pr_auc"]
            scores["test_track_macro_pr_auc_ci"] = track.get("macro_pr_auc_ci")
            scores["test_track_micro_f1"] = track["micro_f1"]
        if self.calibration:
            scores["test_ece_before"] = self.calibration["ece_before"]
            scores["test_ece_after"] = self.calibration["ece_after"]
        return scores
