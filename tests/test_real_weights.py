"""The real-weight path end to end: OpenAI's Whisper base on the real dev clips, in CI."""

import numpy as np
import pytest
from conftest import run_cli

from wav2genre_cache.crossval import cross_validate

# Measured on the 60 dev clips (benchmarks/results/dev_whisper_layers.json): best layer 0.861
# (logistic regression, 5-fold x 3), hand-crafted features 0.694 with the same head. The floor
# leaves room for the spread of cross-validation (std 0.08-0.10 per fold).
FLOOR = 0.75


@pytest.fixture(scope="module")
def whisper_base():
    from wav2genre_cache.backbone import BackboneError
    from wav2genre_cache.ct2_whisper import PIP_MODELS, pip_model_files

    try:
        pip_model_files(PIP_MODELS["pip:whisper-base"])
    except BackboneError as exc:
        pytest.skip(f"the Whisper weight packages are not installed: {exc}")
    return "pip:whisper-base"


def best_layer_accuracy(cache, feature_set: str, layers: int) -> float:
    accuracies = [
        cross_validate(cache, feature_set, ["logreg"], layer, folds=5, repeats=2)["heads"][
            "logreg"
        ]["accuracy_mean"]
        for layer in range(layers)
    ]
    return float(np.max(accuracies))


@pytest.mark.slow
def test_real_whisper_beats_hand_crafted_features_on_real_music(tmp_path, dev_clips, whisper_base):
    run_cli("embed", str(dev_clips), "--out", str(tmp_path / "w.h5"), "--model", whisper_base)
    run_cli("embed", str(dev_clips), "--out", str(tmp_path / "hc.h5"), "--features", "handcrafted")
    whisper = best_layer_accuracy(tmp_path / "w.h5", "encoder", layers=7)
    handcrafted = best_layer_accuracy(tmp_path / "hc.h5", "handcrafted", layers=1)
    assert whisper >= FLOOR, f"whisper-base {whisper:.3f}, hand-crafted {handcrafted:.3f}"
    assert whisper > handcrafted + 0.05, (
        f"whisper-base {whisper:.3f}, hand-crafted {handcrafted:.3f}"
    )
