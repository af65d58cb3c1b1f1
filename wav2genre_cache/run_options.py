"""The options every audio-reading run shares (embed, finetune): its data, its cut, its encoder."""

from __future__ import annotations

from dataclasses import dataclass, field

from wav2genre_cache.encoders.sources import DEFAULT_MODEL


@dataclass(frozen=True, kw_only=True)
class AudioRunOptions:
    """What data an audio-reading run reads, how it cuts it, and which encoder runs where.

    The field order is the order of a fine-tuning run's settings.json (FinetuneOptions.settings):
    a field added here goes last.
    """

    # DATA: a dataset folder or manifest; embed also takes several, read into one taxonomy.
    data: str | tuple[str, ...] = field(kw_only=False)
    out: str = field(kw_only=False)  # what the run writes: embed's cache, finetune's run folder
    model: str = DEFAULT_MODEL  # the encoder: a hub id, a folder, pip:PACKAGE or a built-in
    dataset: str = "auto"  # the layout of each DATA: gtzan, folder, csv, fma, ...; auto detects
    split: str = "random"  # random (or the dataset's own) | gtzan-ff | a CSV of track_id,split
    split_dir: str | None = None  # the folder of gtzan-ff's train/valid/test_filtered.txt
    seed: int = 0  # seeds the random split and every other random choice of the run
    segment_seconds: float = 10.0  # the length of the segments a track is cut into
    hop_seconds: float | None = None  # between segment starts; None: segment_seconds
    window: str | None = None  # alone | packed, for Whisper; None: frontends.DEFAULT_WINDOW
    device: str = "auto"  # where the encoder runs: auto | cpu | cuda
    workers: int | None = None  # decode worker processes (0: none); None: all cores but one, <= 8
    # What a random split keeps on one side: artist, none, or a metadata name (album, a column).
    group_by: str = "artist"
