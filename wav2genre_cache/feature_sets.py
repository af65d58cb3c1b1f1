"""The names of the feature sets a cache holds, and the names earlier versions gave them."""

from __future__ import annotations

# The backbone's per-layer embeddings, whatever the encoder (Wav2Vec2, HuBERT, Whisper, AST).
ENCODER = "encoder"
HANDCRAFTED = "handcrafted"  # the paper's MIR baseline: one vector per segment
LOGMEL = "logmel"  # log-mel spectrograms, for the CNN/LSTM baselines
FEATURE_SETS = (ENCODER, HANDCRAFTED, LOGMEL)

# Names earlier versions wrote, read as today's: their caches, bundles and --features still work.
FEATURE_ALIASES = {"wav2vec2": ENCODER}


def feature_set_name(name: str) -> str:
    """Today's name of a feature set (an earlier version's name maps to it)."""
    return FEATURE_ALIASES.get(name, name)
