"""wav2genre: music classification from the per-layer embeddings of pretrained audio encoders.

The Python API (wav2genre_cache.api), loaded on first use so that `import wav2genre_cache`
stays cheap (no torch):

    import wav2genre_cache as w2g

    classifier = w2g.load_bundle("runs/dev/best")
    classifier.classify("song.mp3").labels   # [{"label": "disco", "score": 0.81}, ...]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wav2genre_cache._version import __version__

__all__ = [
    "Classification",
    "Classifier",
    "TrainedRun",
    "__version__",
    "compare",
    "embed",
    "finetune",
    "load_bundle",
    "train_heads",
]

if TYPE_CHECKING:
    from wav2genre_cache.api import (
        Classification,
        Classifier,
        TrainedRun,
        compare,
        embed,
        finetune,
        load_bundle,
        train_heads,
    )


def __getattr__(name: str):
    # PEP 562: the API module (and torch behind it) loads when a name of it is first used.
    if name in __all__ and name != "__version__":
        from wav2genre_cache import api

        return getattr(api, name)
    raise AttributeError(f"module 'wav2genre_cache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
