"""`predict --engine ray`'s finished rows on disk: <output>.shards/, one Parquet file per block
of files as it ends (the rows predict --output writes), kept until they are merged into the
output, so that a killed run loses only the block it was labelling."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

from wav2genre_cache._io import atomic_write, atomic_write_json, read_json_object
from wav2genre_cache.errors import OutputError
from wav2genre_cache.inference.outputs import BundleStamp

CONFIG = "config.json"
FORMAT = "wav2genre predict shards"


class LabelShards:
    """The shards folder of an output file: its config (bundle, top-k) and its row files."""

    def __init__(self, output: Path, stamp: BundleStamp, top_k: int, resume: bool):
        import pyarrow.parquet as pq

        self.dir = output.with_name(output.name + ".shards")
        self.config = {
            "format": FORMAT,
            "bundle_id": stamp.id,
            "bundle_sha256": stamp.sha256,
            "top_k": top_k,
        }
        self.files: list[Path] = []
        self.done: set[str] = set()  # the files with a row in a shard
        if not self.dir.exists():
            return
        if not resume:
            raise OutputError(
                f"{self.dir} holds the rows of an unfinished run: use --resume to go on from "
                "them, or delete the folder"
            )
        config = read_json_object(self.dir / CONFIG, OutputError, "predict's shard config", FORMAT)
        if config != self.config:
            differ = sorted(k for k in self.config if config.get(k) != self.config[k])
            raise OutputError(
                f"{self.dir} was written with another {' and '.join(differ)} "
                f"({', '.join(f'{k}={config.get(k)}' for k in differ)}); resume with those, "
                "or delete the folder"
            )
        self.files = sorted(self.dir.glob("rows-*.parquet"))
        for path in self.files:
            try:
                names = pq.read_table(path, columns=["file"]).column("file").to_pylist()
            except (OSError, ValueError) as exc:
                raise OutputError(
                    f"{path}: cannot be read ({exc}); delete it to redo its files"
                ) from None
            self.done.update(names)

    def write(self, rows: list[dict]) -> Path:
        """One block's rows as the next shard, atomically (a kill leaves it whole or absent)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.dir.exists():
            self.dir.mkdir(parents=True)
            atomic_write_json(self.dir / CONFIG, self.config)
        number = int(self.files[-1].stem.split("-")[1]) + 1 if self.files else 0
        path = self.dir / f"rows-{number:06d}.parquet"
        table = pa.Table.from_pylist(rows)
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        self.files.append(path)
        self.done.update(row["file"] for row in rows)
        return path

    def rows(self) -> Iterator[dict]:
        """Every shard's rows, shard by shard in the order they were written (input order)."""
        import pyarrow.parquet as pq

        for path in self.files:
            yield from pq.read_table(path).to_pylist()

    def remove(self) -> None:
        """Delete the shards folder: its rows are in the output file now."""
        shutil.rmtree(self.dir, ignore_errors=True)
