"""What an `embed` run is asked to do (its options, checked), what an engine is handed, what
the run reports, and the cache settings they decide."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console

from wav2genre_cache.audio.augment import AUGMENTATIONS
from wav2genre_cache.audio.decode import SAMPLE_RATE
from wav2genre_cache.audio.stream_segments import LONG_SECONDS
from wav2genre_cache.data.tracks import Catalogue
from wav2genre_cache.encoders.backbone import Backbone, default_batch_size
from wav2genre_cache.errors import OptionError
from wav2genre_cache.feature_sets import ENCODER, FEATURE_SETS, feature_set_name
from wav2genre_cache.run_options import AudioRunOptions
from wav2genre_cache.store.cache import FORMAT_VERSION


@dataclass(frozen=True, kw_only=True)
class EmbedOptions(AudioRunOptions):
    """The settings of one `embed` run (the CLI's options)."""

    label_map: str | None = None  # CSV source,label,target
    batch_size: int | None = None  # None: by device (backbone.default_batch_size)
    dtype: str = "auto"  # the encoder's: auto | float32 | bfloat16 | float16
    features: tuple[str, ...] = (ENCODER,)  # feature sets: encoder, handcrafted, logmel
    augment: tuple[str, ...] = ()  # any of pitch, stretch, noise; applied to training tracks only
    augment_copies: int = 0  # augmented copies stored per training track
    noise_dir: str | None = None  # noise clips for the noise augmentation; None: white or pink
    logmel_in: str = "auto"  # where Whisper's log-mel is made: auto | workers | model
    engine: str = "local"  # local | ray (ray_engine.py)
    ray_address: str | None = None  # None: a Ray runtime on this machine; auto or HOST:PORT
    # An earlier cache whose encoder features of the same decoded audio are copied, not computed
    # again (stage_one/reuse.py); the local engine only.
    reuse: str | None = None
    # Ray's encoder actors call cpu_tuning.keep_freed_memory (the CLI's default for its process).
    keep_freed_memory: bool = False
    # The local engine streams a track longer than this (decoded, prepared and embedded a chunk
    # of segments at a time: memory flat in its duration), as predict does; None: all whole.
    # Only the memory differs: the cache is bit-identical either way.
    long_track_seconds: float | None = LONG_SECONDS


@dataclass
class EmbedSummary:
    """What an embed run did: counts, speed and the failures it skipped."""

    out: Path
    tracks_ok: int = 0
    tracks_failed: int = 0
    tracks_excluded: int = 0
    tracks_skipped: int = 0  # already done by an earlier, interrupted run
    tracks_reused: int = 0  # their encoder features copied from the --reuse cache
    tracks_in_cache: int = 0  # ok tracks in the finished cache, this run's and earlier ones
    segments: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    already_complete: bool = False

    @property
    def audio_seconds_per_second(self) -> float:
        """Throughput of this run: seconds of audio embedded per wall-clock second."""
        return self.audio_seconds / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class EmbedJob:
    """What an engine is handed besides the model: the run's options, its tracks, its console."""

    opts: EmbedOptions  # checked (checked_options)
    catalogue: Catalogue  # the tracks of every dataset, labels mapped, splits assigned
    console: Console  # where notes, skipped files and the progress line go
    progress: bool  # whether the progress line is drawn

    @property
    def layout(self) -> str | list[str]:
        """The cache's `dataset` setting: each dataset's layout, in DATA order."""
        layouts = self.catalogue.layouts
        return layouts[0] if len(layouts) == 1 else layouts  # one dataset: as caches always had


def checked_options(opts: EmbedOptions) -> EmbedOptions:
    """opts with its feature sets by their current names; OptionError for what cannot run."""
    opts = replace(opts, features=tuple(feature_set_name(f) for f in opts.features))
    unknown = set(opts.features) - set(FEATURE_SETS)
    if unknown:
        raise OptionError(
            f"unknown feature set(s) {sorted(unknown)}; available: {', '.join(FEATURE_SETS)}"
        )
    bad_aug = set(opts.augment) - set(AUGMENTATIONS)
    if bad_aug:
        raise OptionError(
            f"unknown augmentation(s) {sorted(bad_aug)}; use any of {', '.join(AUGMENTATIONS)}"
        )
    if opts.augment and opts.augment_copies < 1:
        raise OptionError("--augment needs --augment-copies of at least 1")
    if opts.reuse is not None and (opts.engine != "local" or ENCODER not in opts.features):
        raise OptionError(
            "--reuse copies encoder features: it goes with --engine local and the encoder feature set"
        )
    if opts.segment_seconds < 1 or (opts.hop_seconds is not None and opts.hop_seconds <= 0):
        raise OptionError("--segment-seconds must be at least 1 and --hop-seconds positive")
    return opts


def with_batch_size(opts: EmbedOptions, backbone: Backbone | None) -> EmbedOptions:
    """opts with a batch size: the one given, else by the model's device (2 without a model)."""
    if opts.batch_size is not None:
        return opts
    return replace(opts, batch_size=default_batch_size(backbone.device) if backbone else 2)


def data_paths(opts: EmbedOptions) -> list[str]:
    """The run's datasets (DATA...), in the order given."""
    return [opts.data] if isinstance(opts.data, str | Path) else list(opts.data)


def _label_map_digest(label_map: str | None) -> str | None:
    """The label map's path and a hash of its text: a changed map refuses to resume."""
    if label_map is None:
        return None
    path = Path(label_map)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as exc:
        raise OptionError(f"{path}: cannot read the label map ({exc.strerror or exc})") from None
    return f"{path.resolve()} sha256:{digest}"


def embed_config(
    opts: EmbedOptions, layout: str | list[str], backbone: Backbone | None, multi_label: bool
) -> dict:
    """The settings that decide what a cache holds; resuming requires them to be equal."""
    split_dir = str(Path(opts.split_dir).resolve()) if opts.split_dir else None
    data = [str(Path(d).resolve()) for d in data_paths(opts)]
    return {
        "format_version": FORMAT_VERSION,
        "data": data[0] if len(data) == 1 else data,
        "dataset": layout,
        "label_map": _label_map_digest(opts.label_map),
        "multi_label": multi_label,
        "split": opts.split,
        "split_dir": split_dir,
        "seed": opts.seed,
        "group_by": opts.group_by,
        "sample_rate": backbone.sample_rate if backbone else SAMPLE_RATE,
        "segment_seconds": float(opts.segment_seconds),
        "hop_seconds": float(opts.hop_seconds or opts.segment_seconds),
        "backbone": backbone.model_id if backbone else "none",
        "backbone_revision": backbone.revision if backbone else "",
        "frontend": backbone.kind if backbone else "",
        "window": backbone.window if backbone else "",
        "layers": backbone.n_layers if backbone else 0,
        "dim": backbone.dim if backbone else 0,
        "dtype": str(backbone.dtype).removeprefix("torch.") if backbone else "",
        "features": list(opts.features),
        "augment": list(opts.augment),
        "augment_copies": opts.augment_copies if opts.augment else 0,
        "noise_dir": str(Path(opts.noise_dir).resolve()) if opts.noise_dir else None,
    }
