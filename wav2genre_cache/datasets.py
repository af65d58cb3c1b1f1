"""Find the labelled tracks of a dataset (GTZAN, folder, CSV, FMA) and split them by track."""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd

from .audio import AUDIO_EXTENSIONS, is_uri
from .errors import Wav2GenreError

SPLITS = ("train", "valid", "test")
EXCLUDED = "excluded"  # in the data but outside the chosen split (e.g. faults in GTZAN-ff)
_GTZAN_NAME = re.compile(r"^(?P<genre>[a-z]+)\.\d{5}$")
_FMA_SPLITS = {"training": "train", "validation": "valid", "test": "test"}


class DatasetError(Wav2GenreError):
    """A dataset that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class Track:
    """One labelled audio file of a dataset."""

    track_id: str
    path: str
    label: str
    split: str = ""
    artist: str = ""


def detect_layout(data: Path) -> str:
    """Guess the dataset layout of DATA: csv, fma, gtzan or folder."""
    if data.is_file():
        if data.suffix.lower() == ".csv":
            return "csv"
        raise DatasetError(f"{data}: a dataset is a folder or a .csv manifest")
    if not data.is_dir():
        raise DatasetError(f"{data}: no such file or folder")
    if (data / "fma_metadata" / "tracks.csv").is_file():
        return "fma"
    files = _audio_files(data)
    if files and all(
        _GTZAN_NAME.match(p.stem) and p.stem.split(".")[0] == p.parent.name for p in files
    ):
        return "gtzan"
    return "folder"


def discover(data: str | Path, layout: str = "auto") -> list[Track]:
    """List the tracks of DATA in a stable order; layout is auto|gtzan|folder|csv|fma."""
    data = Path(data)
    layout = detect_layout(data) if layout == "auto" else layout
    readers = {"gtzan": _read_folder, "folder": _read_folder, "csv": _read_csv, "fma": _read_fma}
    if layout not in readers:
        raise DatasetError(
            f"unknown dataset layout {layout!r}; use one of auto, {', '.join(readers)}"
        )
    tracks = readers[layout](data)
    if not tracks:
        raise DatasetError(f"{data}: no audio files found (layout {layout})")
    ids = [t.track_id for t in tracks]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise DatasetError(f"{data}: duplicate track ids {dup}")
    return tracks


def _audio_files(root: Path) -> list[Path]:
    # Unreadable files and broken links are listed too, so that they get reported, not ignored.
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and not p.is_dir()
    )


def _read_folder(data: Path) -> list[Track]:
    """One sub-folder per label; the GTZAN layout is the special case <genre>/<genre>.NNNNN.*."""
    tracks = []
    for p in _audio_files(data):
        rel = p.relative_to(data)
        if len(rel.parts) < 2:
            continue  # files at the top level have no label folder
        label = rel.parts[0]
        track_id = p.stem if _GTZAN_NAME.match(p.stem) else rel.with_suffix("").as_posix()
        tracks.append(Track(track_id, str(p), label))
    return tracks


def _read_csv(manifest: Path) -> list[Track]:
    """A manifest with columns path,label[,split][,artist][,track_id]; paths relative to it.

    A path may be a URI (s3://bucket/key.mp3, gs://..., file://...): decoding fetches it.
    """
    try:
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DatasetError(f"{manifest}: cannot read CSV ({exc})") from None
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise DatasetError(f"{manifest}: missing column(s) {sorted(missing)}; need path,label")
    tracks = []
    for row in df.itertuples(index=False):
        uri = is_uri(row.path)
        path = Path(unquote(row.path.split("://", 1)[1]) if uri else row.path)
        split = getattr(row, "split", "") or ""
        if split and split not in SPLITS:
            raise DatasetError(f"{manifest}: split {split!r} for {row.path}; use {SPLITS}")
        # A URI's id: bucket and key without the scheme (s3://b/x/y.mp3 -> b/x/y).
        track_id = getattr(row, "track_id", "") or path.with_suffix("").as_posix()
        if not uri and not path.is_absolute():
            path = manifest.parent / path
        where = row.path if uri else str(path)
        tracks.append(Track(track_id, where, row.label, split, getattr(row, "artist", "")))
    return tracks


def _read_fma(root: Path) -> list[Track]:
    """FMA: labels from ('track','genre_top'), split from ('set','split'), audio fma_<subset>/."""
    meta = root / "fma_metadata" / "tracks.csv"
    try:
        df = pd.read_csv(meta, header=[0, 1], index_col=0)
    except Exception as exc:
        raise DatasetError(f"{meta}: cannot read FMA metadata ({exc})") from None
    audio_dirs = sorted(p for p in root.glob("fma_*") if p.is_dir() and p.name != "fma_metadata")
    if not audio_dirs:
        raise DatasetError(f"{root}: no fma_small|medium|large audio folder beside fma_metadata")
    subsets = {"fma_small": {"small"}, "fma_medium": {"small", "medium"}}
    tracks = []
    for audio_dir in audio_dirs:
        wanted = subsets.get(audio_dir.name, {"small", "medium", "large"})
        for tid, row in df.iterrows():
            genre = row[("track", "genre_top")]
            if pd.isna(genre) or row[("set", "subset")] not in wanted:
                continue
            path = audio_dir / f"{int(tid):06d}"[:3] / f"{int(tid):06d}.mp3"
            split = _FMA_SPLITS.get(row[("set", "split")], "")
            artist = row.get(("artist", "id"), "")
            artist = "" if pd.isna(artist) else str(artist)
            tracks.append(Track(f"{int(tid):06d}", str(path), str(genre), split, artist))
        break  # the largest subset present wins; the others are contained in it
    return tracks


def assign_splits(
    tracks: list[Track],
    method: str = "random",
    seed: int = 0,
    split_dir: str | Path | None = None,
) -> list[Track]:
    """Give every track a split: random|gtzan-ff|keep|a CSV file of track_id,split."""
    if method == "keep":
        if any(not t.split for t in tracks):
            raise DatasetError("some tracks have no split in the dataset; use --split random")
        return tracks
    if method == "random":
        if tracks and all(t.split for t in tracks):
            return tracks  # the dataset's own split (FMA, a manifest with a split column)
        return _random_split(tracks, seed)
    if method == "gtzan-ff":
        if split_dir is None:
            raise DatasetError("--split gtzan-ff needs --split-dir DIR with *_filtered.txt lists")
        return _apply_mapping(tracks, read_gtzan_ff(split_dir), "the GTZAN fault-filtered lists")
    path = Path(method)
    if path.is_file():
        return _apply_mapping(tracks, _read_split_csv(path), str(path))
    raise DatasetError(f"unknown split {method!r}; use random, gtzan-ff or a CSV track_id,split")


def split_digest(pairs: list[tuple[str, str]]) -> str:
    """A short hash of (track id, split) pairs in a split: equal digests mean the same split."""
    text = "\n".join(f"{t},{s}" for t, s in sorted(pairs) if s in SPLITS)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_gtzan_ff(split_dir: str | Path) -> dict[str, str]:
    """Map track id (e.g. blues.00029) to split from train/valid/test_filtered.txt."""
    split_dir = Path(split_dir)
    mapping = {}
    for split in SPLITS:
        f = split_dir / f"{split}_filtered.txt"
        if not f.is_file():
            raise DatasetError(f"{f}: missing; the folder needs {split}_filtered.txt")
        for line in f.read_text().split():
            mapping[Path(line).name.rsplit(".", 1)[0]] = split
    return mapping


def _read_split_csv(path: Path) -> dict[str, str]:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"track_id", "split"} <= set(df.columns):
        raise DatasetError(f"{path}: a split file needs the columns track_id,split")
    bad = set(df["split"]) - set(SPLITS)
    if bad:
        raise DatasetError(f"{path}: unknown split name(s) {sorted(bad)}; use {SPLITS}")
    return dict(zip(df["track_id"], df["split"], strict=True))


def _apply_mapping(tracks: list[Track], mapping: dict[str, str], source: str) -> list[Track]:
    out = []
    for t in tracks:
        key = t.track_id if t.track_id in mapping else Path(t.track_id).name
        out.append(replace(t, split=mapping.get(key, EXCLUDED)))
    if not any(t.split in SPLITS for t in out):
        raise DatasetError(f"no track of the dataset is named in {source}")
    return out


def _random_split(tracks: list[Track], seed: int, fractions=(0.8, 0.1, 0.1)) -> list[Track]:
    """Stratified by label; with artists, whole artists go to one side."""
    rng = np.random.default_rng(seed)
    # A unit is one artist's tracks (or one track without an artist); it goes to one side,
    # stratified by its most common label.
    units: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(tracks):
        units[t.artist or f"\0track{i}"].append(i)
    by_label: dict[str, list[list[int]]] = defaultdict(list)
    for members in units.values():
        label = Counter(tracks[i].label for i in members).most_common(1)[0][0]
        by_label[label].append(members)
    split_of = [""] * len(tracks)
    for label in sorted(by_label):
        units = by_label[label]
        order = rng.permutation(len(units))
        n = sum(len(u) for u in units)
        # Rounded targets; every label with 3+ units keeps at least one in valid and test.
        n_test = max(1, round(fractions[2] * n)) if len(units) >= 3 else 0
        n_valid = max(1, round(fractions[1] * n)) if len(units) >= 3 else 0
        counts = {"test": 0, "valid": 0}
        for k in order:
            unit = units[k]
            if counts["test"] < n_test:
                split = "test"
            elif counts["valid"] < n_valid:
                split = "valid"
            else:
                split = "train"
            if split != "train":
                counts[split] += len(unit)
            for i in unit:
                split_of[i] = split
    return [replace(t, split=s) for t, s in zip(tracks, split_of, strict=True)]
