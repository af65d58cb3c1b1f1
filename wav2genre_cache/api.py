"""The Python API: label audio with a trained bundle, and run each stage as its command does.

    import wav2genre_cache as w2g

    classifier = w2g.load_bundle("runs/dev/best")
    song = classifier.classify("song.mp3")          # or (samples, sample_rate=44_100)
    song.labels                                      # [{"label": "disco", "score": 0.81}, ...]

Each stage function runs the code its command runs (`embed`, `train-heads`, `compare`,
`finetune`) and returns what the command reports, typed. Errors a user can fix are
`wav2genre_cache.errors.Wav2GenreError`s.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wav2genre_cache.audio.decode import waveform_from_array
from wav2genre_cache.inference.inputs import SkippedInput, expand_inputs
from wav2genre_cache.inference.predict import Predictor

__all__ = [
    "Classification",
    "Classifier",
    "TrainedRun",
    "compare",
    "embed",
    "finetune",
    "load_bundle",
    "train_heads",
]


@dataclass(frozen=True)
class Classification:
    """One song's labels, best first, its per-segment timeline, or why it could not be read."""

    labels: list[dict]  # [{"label": ..., "score": ...}], best first (top_k of them)
    timeline: list[dict]  # per segment: start, end (seconds), label, scores {label: score}
    duration: float | None = None  # seconds of audio
    file: str | None = None  # where it came from, for a file
    tags: list[dict] | None = None  # a tagger's: the tags whose score passes their threshold
    error: str | None = None  # the file could not be labelled: why (then labels are empty)

    @property
    def label(self) -> str | None:
        """The most probable label (None for a song that could not be read)."""
        return self.labels[0]["label"] if self.labels else None

    @classmethod
    def of(cls, entry: dict) -> Classification:
        """From one of predict's entries (its JSON output)."""
        if "error" in entry:
            return cls([], [], file=entry.get("file"), error=entry["error"])
        timeline = [
            {
                "start": seg["start"],
                "end": seg["end"],
                "label": seg["label"],
                "scores": seg["probabilities"],
                **({"tags": seg["tags"]} if "tags" in seg else {}),
            }
            for seg in entry["timeline"]
        ]
        return cls(
            labels=entry["labels"],
            timeline=timeline,
            duration=entry["duration"],
            file=entry.get("file"),
            tags=entry.get("tags"),
        )


class Classifier:
    """A trained bundle with its encoder, loaded once: labels songs from files or arrays."""

    def __init__(self, predictor: Predictor):
        self._predictor = predictor

    @property
    def labels(self) -> list[str]:
        """Every label the model knows, in its order."""
        return list(self._predictor.labels)

    def describe(self) -> dict:
        """The model: backbone, layer, head, labels and its test figures with n and interval."""
        return self._predictor.describe()

    def classify(
        self, audio: str | Path | np.ndarray, sample_rate: int | None = None, top_k: int = 3
    ) -> Classification:
        """Label one song: a file path, or samples with their sample_rate."""
        if isinstance(audio, str | Path):
            return next(self.classify_many([audio], top_k=top_k))
        waveform = waveform_from_array(audio, sample_rate or 0)
        return Classification.of(self._predictor.predict_waveforms([waveform], top_k)[0])

    def classify_many(
        self,
        paths: Iterable[str | Path],
        top_k: int = 3,
        batch: int = 16,
        max_seconds: float | None = None,
    ) -> Iterator[Classification]:
        """Label files (folders are walked for audio) in batches of `batch` files, yielding each
        in input order as its batch finishes; a file that cannot be read yields its error."""
        inputs: list[Path | SkippedInput] = expand_inputs([Path(p) for p in paths])
        for entry in self._predictor.iter_predictions(inputs, top_k, batch, max_seconds):
            yield Classification.of(entry)


def load_bundle(path: str | Path, device: str = "auto", batch_size: int = 8) -> Classifier:
    """A trained bundle (a run's best/, a bundles/<head>/ folder, or a run folder) to classify with."""
    from wav2genre_cache.store.bundle_folders import resolve_bundle_dir

    return Classifier(Predictor(resolve_bundle_dir(path), device=device, batch_size=batch_size))


def embed(data: str | Path | list[str | Path], out: str | Path, **options):
    """Stage one, as `wav2genre embed`: every track to per-layer embeddings in a resumable cache.

    options are EmbedOptions' fields (model, segment_seconds, split, features, augment, ...);
    returns the run's EmbedSummary.
    """
    from wav2genre_cache.stage_one.options import EmbedOptions
    from wav2genre_cache.stage_one.run import embed_dataset

    several = isinstance(data, list | tuple) and len(data) > 1
    sources = (
        tuple(map(str, data))
        if several
        else str(data[0] if isinstance(data, list | tuple) else data)
    )
    opts = EmbedOptions(data=sources, out=str(out), **options)
    return embed_dataset(opts, progress=False)


@dataclass(frozen=True)
class TrainedRun:
    """What `train-heads` wrote: the run folder, its metrics and its best model's bundle."""

    run_dir: Path
    metrics: dict = field(repr=False)  # metrics.json
    best: Path  # the bundle of the selected model (run_dir / "best")

    @property
    def results(self) -> list[dict]:
        """One row per head, layer and feature set, with its test figures."""
        return self.metrics["results"]


def train_heads(cache: str | Path, out: str | Path, **options) -> TrainedRun:
    """Stage two, as `wav2genre train-heads`: heads on every chosen layer, selected and tested.

    options are TrainOptions' fields (heads, layers, seed, selection, calibration, ...).
    """
    from wav2genre_cache.stage_two.train import train_heads as run_stage_two

    metrics = run_stage_two(cache, out, log=lambda _: None, **options)
    return TrainedRun(Path(out), metrics, Path(out) / "best")


def compare(run: str | Path) -> dict[str, Path]:
    """As `wav2genre compare`: the comparison tables, figures and report.html; what was written."""
    from wav2genre_cache.report.compare import write_report

    return write_report(run)


def finetune(data: str | Path, out: str | Path, **options) -> dict:
    """As `wav2genre finetune`: the encoder trained with a head, from audio; its finetune.json.

    options are FinetuneOptions' fields (model, unfreeze, epochs, layer, ...).
    """
    from wav2genre_cache.finetune.options import FinetuneOptions
    from wav2genre_cache.finetune.run import finetune as run_finetune

    return run_finetune(FinetuneOptions(str(data), str(out), **options), progress=False)
