"""What stage two trains and how: the options of train-heads (and of run's second step)."""

from __future__ import annotations

from dataclasses import dataclass

from wav2genre_cache._io import comma_list
from wav2genre_cache.errors import TrainError
from wav2genre_cache.evaluation.calibration import METHODS as CALIBRATION_METHODS
from wav2genre_cache.feature_sets import ENCODER

__all__ = ["SELECTION_RULES", "TrainOptions"]

# --selection: auto (cross-validation when validation is small, else validation), valid, cv.
SELECTION_RULES = ("auto", "valid", "cv")


@dataclass(frozen=True)
class TrainOptions:
    """train_heads' options; comma-separated strings are accepted where a tuple is held."""

    heads: tuple[str, ...] | None = None  # None: the registry's default heads
    layers: str = "all"  # all | best (a linear probe picks one) | layer numbers such as 0,6,12
    feature_sets: tuple[str, ...] = (ENCODER,)  # cached feature sets, each trained on
    seed: int = 0  # of every head and search
    augmented: bool | str = True  # every view of training tracks; False originals; "both" each
    trials: int = 0  # above 1: a seeded random search of that many trials (the FCNN)
    calibration: str = "auto"  # on validation: auto | temperature | isotonic | none
    # auto: by cross-validation on train+valid when validation is small, else on validation
    selection: str = "auto"  # auto | valid | cv
    # What cross-validated selection keeps on one side of a fold: an artist (where known; a
    # recording always), an album or a manifest column's value, or "none": only the copies of
    # one recording.
    group_by: str = "artist"

    def __post_init__(self):
        for name in ("heads", "feature_sets"):
            value = getattr(self, name)
            if value is not None:
                value = comma_list(value) if isinstance(value, str) else tuple(value)
                object.__setattr__(self, name, value)
        if self.selection not in SELECTION_RULES:
            raise TrainError(
                f"--selection {self.selection!r}: use one of {', '.join(SELECTION_RULES)}"
            )
        if not self.group_by.strip():
            raise TrainError("--group-by is empty: use artist, none, album or a manifest column")
        if self.calibration not in CALIBRATION_METHODS:
            raise TrainError(
                f"--calibration {self.calibration!r}: use one of {', '.join(CALIBRATION_METHODS)}"
            )
