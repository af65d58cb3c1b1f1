"""The HDF5 embedding cache: its track columns, what a track holds, and reading a finished one.

One self-describing file per `embed` run (store.cache_writer writes it): the settings it was
made with, a row per track, a row per segment, and each feature set's [segments, layers, dim].
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from wav2genre_cache.data.duplicates import find_duplicates
from wav2genre_cache.errors import CacheError
from wav2genre_cache.feature_sets import ENCODER, feature_set_name

FORMAT_VERSION = 1
TRACK_COLUMNS = (
    "track_id",
    "path",
    "label",  # a multi-label track's tags, sorted and joined by "|"
    "split",
    "artist",
    "status",
    "reason",
    "content_hash",  # of the decoded audio: equal hashes are the same recording
    "source",  # the dataset it came from (a run may read several)
    "metadata",  # what else the dataset says of it (album, a manifest's columns): JSON, or ""
)
# Columns added after caches were first written, with the value every earlier cache implied.
IMPLIED_COLUMNS = {"source": "", "metadata": ""}
# Segments per checksummed block of a feature set: a changed value names its block of rows.
CHECKSUM_ROWS = 4096


def feature_checksums(dataset) -> list[str]:
    """A blake2b digest of each block of CHECKSUM_ROWS rows of a feature set, as stored."""
    return [
        hashlib.blake2b(
            np.ascontiguousarray(dataset[a : a + CHECKSUM_ROWS]), digest_size=16
        ).hexdigest()
        for a in range(0, len(dataset), CHECKSUM_ROWS)
    ]


@dataclass
class TrackResult:
    """Everything the cache keeps about one track: its row, its segments and their features."""

    track_id: str
    path: str
    label: str
    split: str
    artist: str
    status: str  # ok | failed | excluded
    reason: str = ""
    duration: float = 0.0
    content_hash: str = ""
    starts: list[float] = field(default_factory=list)
    views: list[int] = field(default_factory=list)
    features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [n_seg, layers, dim]
    source: str = ""  # the dataset it came from
    metadata: str = ""  # data.tracks.metadata_text of its track

    def starts_of(self, view: int) -> list[float]:
        """The start seconds of one view's segments."""
        return [s for s, v in zip(self.starts, self.views, strict=True) if v == view]


# Settings added to the embed config later, with the values every earlier cache implied: an
# older cache without them is not refused for their absence alone.
_IMPLIED = {
    "group_by": ("artist",),
    "frontend": ("waveform", ""),
    "window": ("alone", ""),
    "label_map": (None,),
    "multi_label": (False,),
}


def config_differences(old: dict, new: dict) -> list[str]:
    """Human-readable list of the settings that differ between two embed configs."""
    old, new = _current_names(old), _current_names(new)
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: cache has {old.get(k)!r}, this run asks for {new.get(k)!r}"
        for k in keys
        if old.get(k) != new.get(k) and not (k not in old and new.get(k) in _IMPLIED.get(k, ()))
    ]


def _current_names(config: dict) -> dict:
    """An embed config with its feature sets under today's names."""
    if "features" not in config:
        return config
    return config | {"features": [feature_set_name(n) for n in config["features"]]}


class EmbeddingCache:
    """Read access to a finished cache: attributes, tracks, segments and feature arrays."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            partial = Path(str(self.path) + ".partial")
            hint = (
                f" (an unfinished run is in {partial}: re-run embed to finish it)"
                if partial.is_dir()
                else ""
            )
            raise CacheError(f"{self.path}: no such cache file{hint}")
        try:
            with h5py.File(self.path, "r") as f:
                if "format_version" not in f.attrs or "tracks" not in f:
                    raise CacheError(
                        f"{self.path}: not a wav2genre cache (no format_version or tracks)"
                    )
                self.attrs = {k: _plain(v) for k, v in f.attrs.items()}
                self.config = _current_names(json.loads(self.attrs["config"]))
                n = len(f["tracks/duration"])
                self.tracks = pd.DataFrame(
                    {
                        c: f["tracks"][c].asstr()[:]
                        if c in f["tracks"]
                        else np.full(n, IMPLIED_COLUMNS[c], dtype=object)
                        for c in TRACK_COLUMNS
                    }
                    | {"duration": f["tracks/duration"][:]}
                )
                self.segments = pd.DataFrame(
                    {k: f[f"segments/{k}"][:] for k in ("track", "start", "view")}
                )
                stored = list(f["features"].keys()) if "features" in f else []
                self._stored = {feature_set_name(k): k for k in stored}
                self.feature_names = sorted(self._stored)
                self.feature_shapes = {n: f["features"][k].shape for n, k in self._stored.items()}
        except CacheError:
            raise
        except Exception as exc:
            raise CacheError(f"{self.path}: not a readable HDF5 cache ({exc})") from None

    def features(self, name: str = ENCODER, layer: int | None = None) -> np.ndarray:
        """All segments' features as float32: [n, layers, dim], or [n, dim] for one layer."""
        name = feature_set_name(name)
        if name not in self.feature_names:
            raise CacheError(f"{self.path}: no feature set {name!r}; it has {self.feature_names}")
        with h5py.File(self.path, "r") as f:
            data = f["features"][self._stored[name]]
            if layer is not None:
                if not -data.shape[1] <= layer < data.shape[1]:
                    raise CacheError(
                        f"layer {layer} out of range: {name} has {data.shape[1]} layers (0..{data.shape[1] - 1})"
                    )
                return data[:, layer, :].astype(np.float32)
            return data[:].astype(np.float32)

    def feature_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Segments start..stop-1 of a feature set as float32: [stop - start, layers, dim]."""
        with h5py.File(self.path, "r") as f:
            return f["features"][self._stored[feature_set_name(name)]][start:stop].astype(
                np.float32
            )

    def verify(self) -> dict:
        """Every feature set's blocks against the checksums written with the cache; CacheError
        naming the blocks that differ. A cache from before checksums says so ("checked": False)."""
        with h5py.File(self.path, "r") as f:
            if "checksums" not in f:
                return {"checked": False, "reason": "written before caches carried checksums"}
            bad, blocks = [], 0
            for key in self._stored.values():
                if key not in f["checksums"]:
                    bad.append(f"features/{key} (no checksums)")
                    continue
                stored = list(f["checksums"][key].asstr()[:])
                now = feature_checksums(f["features"][key])
                blocks += len(now)
                bad += [
                    f"features/{key} rows {k * CHECKSUM_ROWS}-{(k + 1) * CHECKSUM_ROWS - 1}"
                    for k, (a, b) in enumerate(zip(stored, now, strict=False))
                    if a != b
                ]
                if len(stored) != len(now):
                    bad.append(f"features/{key} ({len(now)} blocks, {len(stored)} checksums)")
        if bad:
            raise CacheError(
                f"{self.path}: its features changed after they were written (checksum mismatch in "
                f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); embed again, or restore "
                "the file"
            )
        return {"checked": True, "blocks": blocks, "rows_per_block": CHECKSUM_ROWS}

    def digest(self) -> str:
        """A digest of what training reads: the attributes, the track and segment tables and
        each feature set's stored block checksums (verify() checks the features against those;
        a cache from before checksums is digested without its features)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps(self.attrs, sort_keys=True, default=str).encode())
        for table in (self.tracks, self.segments):
            h.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
        with h5py.File(self.path, "r") as f:
            for key in sorted(f["checksums"]) if "checksums" in f else ():
                h.update(key.encode() + "".join(f["checksums"][key].asstr()[:]).encode())
        return h.hexdigest()

    def summary(self) -> dict:
        """What the cache holds, as a JSON-ready dict (what `wav2genre info` prints)."""
        t = self.tracks
        ok = t[t.status == "ok"]
        per_split = {s: int((ok.split == s).sum()) for s in ("train", "valid", "test")}
        # A tagger's tracks count once under each of their tags.
        per_label = (
            ok.assign(label=ok.label.str.split("|")).explode("label")
            if self.config.get("multi_label")
            else ok
        )
        labels = per_label.groupby(["label", "split"]).size().unstack(fill_value=0)
        return {
            "path": str(self.path),
            "backbone": self.attrs.get("backbone"),
            "backbone_revision": self.attrs.get("backbone_revision"),
            # Caches from before log-mel encoders: raw waveform, each segment alone.
            "frontend": self.attrs.get("frontend", "waveform"),
            "window": self.attrs.get("window", "alone"),
            "dtype": self.attrs.get("dtype"),
            "segment_seconds": self.attrs.get("segment_seconds"),
            "hop_seconds": self.attrs.get("hop_seconds"),
            "tracks": {
                "ok": len(ok),
                "failed": int((t.status == "failed").sum()),
                "excluded": int((t.status == "excluded").sum()),
            },
            "tracks_per_split": per_split,
            # Splits and folds keep an artist on one side; without artists they cannot.
            "artists": {
                "known": int(ok.artist[ok.artist != ""].nunique()),
                "tracks_without": int((ok.artist == "").sum()),
            },
            "tracks_per_label": {
                lab: {k: int(v) for k, v in row.items()} for lab, row in labels.iterrows()
            },
            "tracks_per_source": {
                str(k): int(v) for k, v in ok.source.value_counts().sort_index().items()
            },
            # The same recording more than once (equal hashes of the decoded audio): train-heads
            # keeps each recording's copies on one side of the split.
            "duplicates": _duplicates(t),
            "segments": len(self.segments),
            "views": sorted(int(v) for v in self.segments.view.unique()),
            "features": {n: {"layers": s[1], "dim": s[2]} for n, s in self.feature_shapes.items()},
            "failures": [
                {"path": r.path, "reason": r.reason} for r in t[t.status == "failed"].itertuples()
            ],
        }


def _duplicates(tracks: pd.DataFrame) -> dict:
    found, _ = find_duplicates(tracks)
    return {"recordings": len(found["groups"]), "tracks": found["tracks"]}


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
