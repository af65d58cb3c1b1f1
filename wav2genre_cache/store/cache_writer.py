"""Writing the HDF5 embedding cache: crash-safe shards, then one merge into the final file.

While `embed` runs, finished blocks of tracks are written as small shard files into
`CACHE.h5.partial/`, each under a temporary name and then renamed (an atomic step), so a
killed run loses at most the block in flight. At the end the shards are merged in track order
into `CACHE.h5.tmp`, which is renamed to `CACHE.h5`: the cache is either absent or complete,
never half-written, and a resumed run gives the same file as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np

from wav2genre_cache._io import atomic_write, atomic_write_text, kill_point
from wav2genre_cache._version import __version__
from wav2genre_cache.errors import CacheError
from wav2genre_cache.feature_sets import FEATURE_ALIASES
from wav2genre_cache.store.cache import (
    FORMAT_VERSION,
    IMPLIED_COLUMNS,
    TRACK_COLUMNS,
    TrackResult,
    config_differences,
    feature_checksums,
)

_STR = h5py.string_dtype("utf-8")


def _stored_name(group: h5py.Group, name: str) -> str:
    """The key under which `group` holds feature set `name` (an earlier version's name, maybe)."""
    if name in group:
        return name
    return next((old for old, new in FEATURE_ALIASES.items() if new == name and old in group), name)


def open_shard_folder(folder: Path, config: dict) -> None:
    """Start a folder of shards with its `config.json`, or check a resumed one has this config."""
    config_file = folder / "config.json"
    if config_file.is_file():
        diff = config_differences(json.loads(config_file.read_text()), config)
        if diff:
            raise CacheError(
                f"{folder} holds an unfinished run with different settings:\n  "
                + "\n  ".join(diff)
                + f"\nRe-run with the same settings to resume, or delete {folder} to start over."
            )
    else:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(config_file, json.dumps(config, indent=1, sort_keys=True))


class ShardStore:
    """The in-progress state of an embed run: a folder of atomically written shard files."""

    def __init__(self, out: str | Path, config: dict):
        self.out = Path(out)
        self.dir = Path(str(self.out) + ".partial")
        self.config = config

    def open(self) -> set[str]:
        """Create or resume the shard folder; return the ids of tracks already finished."""
        open_shard_folder(self.dir, self.config)
        done: set[str] = set()
        for shard in self.shards():
            with h5py.File(shard, "r") as f:
                done.update(json.loads(f.attrs["track_ids"]))
        return done

    def remove_leftover(self) -> None:
        """Remove the shard folder a kill left beside a finished cache (killed after the merge's
        rename, before the folder's removal): the cache holds all of it."""
        if self.out.is_file() and self.dir.is_dir():
            shutil.rmtree(self.dir, ignore_errors=True)

    def shards(self) -> list[Path]:
        """Finished shard files, in the order they were written."""
        return sorted(self.dir.glob("shard-*.h5"))

    def write(self, block: int, results: list[TrackResult]) -> None:
        """Write one block of finished tracks as a shard, atomically."""
        kill_point(f"shard:{block}")
        final = self.dir / f"shard-{block:07d}.h5"
        tmp = final.with_suffix(".tmp")
        with h5py.File(tmp, "w") as f:
            f.attrs["track_ids"] = json.dumps([r.track_id for r in results])
            rows = [{k: getattr(r, k) for k in (*TRACK_COLUMNS, "duration")} for r in results]
            f.attrs["rows"] = json.dumps(rows)
            f.create_dataset("n_segments", data=np.array([len(r.starts) for r in results], "i8"))
            f.create_dataset("starts", data=np.array(sum((r.starts for r in results), []), "f8"))
            f.create_dataset("views", data=np.array(sum((r.views for r in results), []), "i2"))
            for name in self.config["features"]:
                parts = [r.features[name] for r in results if len(r.starts)]
                if parts:
                    f.create_dataset(f"features/{name}", data=np.concatenate(parts).astype("f2"))
            f.flush()
            os.fsync(f.id.get_vfd_handle())
        os.replace(tmp, final)

    def finalize(self, order: list[str]) -> Path:
        """Merge every shard into the final cache, tracks in `order`; remove the shard folder."""
        kill_point("finalize")
        rows: dict[str, dict] = {}
        seg_of: dict[str, tuple[Path, int, int]] = {}
        for shard in self.shards():
            with h5py.File(shard, "r") as f:
                offsets = np.concatenate([[0], np.cumsum(f["n_segments"][:])])
                for i, row in enumerate(json.loads(f.attrs["rows"])):
                    rows[row["track_id"]] = row
                    seg_of[row["track_id"]] = (shard, int(offsets[i]), int(offsets[i + 1]))
        finish_cache(self.out, self.config, order, rows, seg_of)
        kill_point("merged")
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.out


class SegmentSource(Protocol):
    """One shard's segments, read by row range [a, b) when the shards are merged."""

    def starts(self, a: int, b: int) -> np.ndarray: ...
    def views(self, a: int, b: int) -> np.ndarray: ...
    def features(self, name: str, a: int, b: int) -> np.ndarray: ...
    def close(self) -> None: ...


class _H5Shard:
    """A shard file of the local engine as a SegmentSource."""

    def __init__(self, path: Path):
        self.file = h5py.File(path, "r")

    def starts(self, a: int, b: int) -> np.ndarray:
        return self.file["starts"][a:b]

    def views(self, a: int, b: int) -> np.ndarray:
        return self.file["views"][a:b]

    def features(self, name: str, a: int, b: int) -> np.ndarray:
        # A run resumed across versions: earlier shards may use an earlier name.
        group = self.file["features"]
        return group[_stored_name(group, name)][a:b]

    def close(self) -> None:
        self.file.close()


def finish_cache(
    out: Path,
    config: dict,
    order: list[str],
    rows: dict[str, dict],
    seg_of: dict[str, tuple[Path, int, int]],
    open_source: Callable[[Path], SegmentSource] = _H5Shard,
) -> Path:
    """Write the cache `out` from every track's row and segments, in `order`, atomically (a
    temporary file renamed): the cache is either absent or complete."""
    missing = [t for t in order if t not in rows]
    if missing:
        raise CacheError(f"cannot finish {out}: {len(missing)} track(s) not embedded yet")
    return atomic_write(
        out,
        lambda tmp: write_cache(
            tmp, config, [rows[t] for t in order], [seg_of[t] for t in order], open_source
        ),
    )


def write_cache(
    path: Path,
    config: dict,
    rows: list[dict],
    segs: list[tuple[Path, int, int]],
    open_source: Callable[[Path], SegmentSource] = _H5Shard,
) -> None:
    """Write the final cache file: track `rows` in order, each with its segments (shard, a, b)."""
    n_total = sum(b - a for _, a, b in segs)
    with h5py.File(path, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["package_version"] = __version__
        for key in (
            "backbone",
            "backbone_revision",
            "frontend",  # waveform | logmel ("" without a backbone)
            "window",  # alone | packed (Whisper's shared windows)
            "sample_rate",
            "segment_seconds",
            "hop_seconds",
            "dtype",
        ):
            f.attrs[key] = config[key] if config.get(key) is not None else ""
        f.attrs["config"] = json.dumps(config, sort_keys=True)
        tracks = f.create_group("tracks")
        for col in TRACK_COLUMNS:
            tracks.create_dataset(
                col,
                # Shards of a run resumed across versions may lack a later column.
                data=np.array([{**IMPLIED_COLUMNS, **r}[col] for r in rows], dtype=object),
                dtype=_STR,
            )
        tracks.create_dataset("duration", data=np.array([r["duration"] for r in rows], "f8"))
        seg_track = np.concatenate(
            [np.full(b - a, i, "i8") for i, (_, a, b) in enumerate(segs)] or [np.zeros(0, "i8")]
        )
        f.create_dataset("segments/track", data=seg_track)
        starts = f.create_dataset("segments/start", (n_total,), "f8")
        views = f.create_dataset("segments/view", (n_total,), "i2")
        feats = {}
        pos = 0
        # One shard open at a time: tracks go in order and so, nearly always, do their shards; a
        # shard met again is opened again rather than every shard held until the end.
        sources: dict[Path, SegmentSource] = {}
        try:
            for shard, a, b in segs:
                if b == a:
                    continue
                if shard not in sources:
                    for old in sources.values():
                        old.close()
                    sources = {shard: open_source(shard)}
                src = sources[shard]
                starts[pos : pos + b - a] = src.starts(a, b)
                views[pos : pos + b - a] = src.views(a, b)
                for name in config["features"]:
                    block = src.features(name, a, b)
                    if name not in feats:
                        shape = (n_total, *block.shape[1:])
                        chunks = (min(n_total, 256), *block.shape[1:])
                        feats[name] = f.create_dataset(
                            f"features/{name}", shape, "f2", chunks=chunks
                        )
                    feats[name][pos : pos + b - a] = block
                pos += b - a
                if 2 * pos >= n_total:
                    kill_point("merge")
        finally:
            for src in sources.values():
                src.close()
        # Read back from the file: what the checksums vouch for is what was stored.
        for name, data in feats.items():
            digests = np.array(feature_checksums(data), dtype=object)
            f.create_dataset(f"checksums/{name}", data=digests, dtype=_STR)
