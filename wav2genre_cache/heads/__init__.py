"""Classifier heads: the registry, their on-disk formats, and the heads themselves."""

from wav2genre_cache.heads.estimators import (
    ForestHead,
    LogisticRegressionHead,
    PipelineHead,
    SVMHead,
    XGBHead,
)
from wav2genre_cache.heads.networks import FCNNClassifier
from wav2genre_cache.heads.registry import (
    ALL_HEADS,
    HEADS,
    REGISTRY,
    HeadSpec,
    Inputs,
    Rows,
    head_files,
    head_spec,
    heads_reading,
    load_head,
    make_head,
    save_head,
)
from wav2genre_cache.heads.spectrogram import SpectrogramClassifier
from wav2genre_cache.heads.tracks import AttentionPoolingClassifier

__all__ = [
    "ALL_HEADS",
    "HEADS",
    "REGISTRY",
    "AttentionPoolingClassifier",
    "FCNNClassifier",
    "ForestHead",
    "HeadSpec",
    "Inputs",
    "LogisticRegressionHead",
    "PipelineHead",
    "Rows",
    "SVMHead",
    "SpectrogramClassifier",
    "XGBHead",
    "head_files",
    "head_spec",
    "heads_reading",
    "load_head",
    "make_head",
    "save_head",
]
