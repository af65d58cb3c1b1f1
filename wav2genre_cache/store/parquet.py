"""The Ray engine's output: Parquet shards, usable on their own, merged into the HDF5 cache.

A shard folder (`CACHE.h5.shards/`) holds `config.json` (the embed settings, as in the cache)
and, per block k of consecutive tracks, two files named by the block's number and a digest of
its track ids (`<k>-<digest>`, so that no block ever overwrites another's file):

- `segments-<k>-<digest>.parquet`: one row per segment: `track_id` (string), `segment` (int32,
  its index in the track, views in order), `start` (float64, seconds into the audio), `view`
  (int16: 0 the original, 1..K augmented copies), and one column per feature set (`encoder`,
  `handcrafted`, `logmel`) of Arrow's fixed-shape tensor type `[layers, dim]`, float32 (a block
  whose tracks all failed has no segments, and no feature columns).
- `tracks-<k>-<digest>.parquet`: one row per track: `track_id`, `path`, `label`, `split`,
  `artist`, `status` (ok | failed | excluded), `reason` (why a track failed: the failures table is
  `status == "failed"`), `content_hash` (of the decoded audio), `source` (the dataset of a
  multi-dataset run), `duration` (float64 seconds), `n_segments` (int64).

Each file is written under a temporary name and renamed; the tracks file goes last, so a block
is complete exactly when its tracks file exists, and a killed run redoes only the blocks with a
track in no tracks file. A track in two files (a resumed run with other blocks) is the same
track embedded twice alike; the merge takes one. Spark, DuckDB or pandas read the folder as
two tables (`segments-*.parquet`, `tracks-*.parquet`); the merge into HDF5 rounds the features
to float16, as the local engine's cache stores them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from wav2genre_cache._io import atomic_write, kill_point
from wav2genre_cache.store.cache import TRACK_COLUMNS, TrackResult
from wav2genre_cache.store.cache_writer import finish_cache, open_shard_folder


def shard_dir(out: str | Path) -> Path:
    """Where the Parquet shards of cache `out` go."""
    return Path(str(out) + ".shards")


class ParquetShards:
    """The Ray engine's shard folder: resumable blocks of tracks, then one merge into `out`."""

    def __init__(self, out: str | Path, config: dict):
        self.out = Path(out)
        self.dir = shard_dir(out)
        self.config = config

    def open(self) -> set[str]:
        """Create or resume the folder; return the ids of the tracks already embedded."""
        import pyarrow.parquet as pq

        open_shard_folder(self.dir, self.config)

        done: set[str] = set()
        for tracks_file in self.dir.glob("tracks-*.parquet"):
            done.update(pq.read_table(tracks_file, columns=["track_id"])["track_id"].to_pylist())
        return done

    def write(self, block: int, results: list[TrackResult]) -> None:
        """Write block number `block` of finished tracks: its segments, then (marking it done)
        its tracks."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        kill_point(f"shard:{block}")
        columns = {
            "track_id": pa.array([r.track_id for r in results for _ in r.starts], pa.string()),
            "segment": pa.array([i for r in results for i in range(len(r.starts))], pa.int32()),
            "start": pa.array([s for r in results for s in r.starts], pa.float64()),
            "view": pa.array([v for r in results for v in r.views], pa.int16()),
        }
        for name in self.config["features"]:
            parts = [r.features[name] for r in results if len(r.starts)]
            if parts:
                columns[name] = _tensor_column(np.concatenate(parts).astype(np.float32))
        digest = hashlib.sha1("\n".join(r.track_id for r in results).encode()).hexdigest()[:12]
        name = f"{block:09d}-{digest}.parquet"
        atomic_write(
            self.dir / f"segments-{name}", lambda tmp: pq.write_table(pa.table(columns), tmp)
        )
        tracks = {c: pa.array([getattr(r, c) for r in results], pa.string()) for c in TRACK_COLUMNS}
        tracks["duration"] = pa.array([r.duration for r in results], pa.float64())
        tracks["n_segments"] = pa.array([len(r.starts) for r in results], pa.int64())
        atomic_write(self.dir / f"tracks-{name}", lambda tmp: pq.write_table(pa.table(tracks), tmp))

    def finalize(self, order: list[str]) -> Path:
        """Merge every complete block into the HDF5 cache `out`, tracks in `order`."""
        import pyarrow.parquet as pq

        kill_point("finalize")
        rows: dict[str, dict] = {}
        seg_of: dict[str, tuple[Path, int, int]] = {}
        for tracks_file in sorted(self.dir.glob("tracks-*.parquet")):
            segments_file = tracks_file.with_name(tracks_file.name.replace("tracks-", "segments-"))
            table = pq.read_table(tracks_file).to_pylist()
            offsets = np.concatenate([[0], np.cumsum([r["n_segments"] for r in table])])
            for i, row in enumerate(table):
                rows[row["track_id"]] = row
                seg_of[row["track_id"]] = (segments_file, int(offsets[i]), int(offsets[i + 1]))
        finish_cache(self.out, self.config, order, rows, seg_of, _ParquetShard)
        kill_point("merged")  # the shards are kept: nothing is left to remove
        return self.out


class _ParquetShard:
    """A segments file as a SegmentSource for cache_writer.write_cache."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.table = pq.read_table(path)

    def starts(self, a: int, b: int) -> np.ndarray:
        return self.table["start"].to_numpy()[a:b]

    def views(self, a: int, b: int) -> np.ndarray:
        return self.table["view"].to_numpy()[a:b]

    def features(self, name: str, a: int, b: int) -> np.ndarray:
        # numpy's float16 rounding, as the local engine's shards store them.
        return tensor_column_to_numpy(self.table[name].slice(a, b - a)).astype(np.float16)

    def close(self) -> None:
        self.table = None


def _tensor_column(values: np.ndarray):
    """A [rows, layers, dim] float32 array as an Arrow fixed-shape tensor column."""
    import pyarrow as pa

    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(values))


def tensor_column_to_numpy(column) -> np.ndarray:
    """An Arrow fixed-shape tensor column (chunked or not) as one [rows, ...] numpy array."""
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    arrays = [c.to_numpy_ndarray() for c in chunks if len(c)]
    if not arrays:
        shape = column.type.shape
        return np.zeros((0, *shape), np.float32)
    return np.concatenate(arrays)
