"""The csv layout: a manifest with columns path,label|labels[,split][,artist][,track_id], and
any other columns (album, ...) kept as each track's metadata."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from wav2genre_cache.audio.decode import is_uri
from wav2genre_cache.data.csv_rows import checked_label, read_rows
from wav2genre_cache.data.layouts.layout import Layout
from wav2genre_cache.data.tracks import (
    SPLITS,
    TAG_SEPARATOR,
    SourceTracks,
    Track,
    join_tags,
    tags_of,
)
from wav2genre_cache.errors import DatasetError

# The columns the layout reads itself; any other is a track's metadata.
_KNOWN = {"path", "label", "labels", "split", "artist", "track_id"}


def detect(root: Path) -> bool:
    """A .csv file."""
    return root.is_file() and root.suffix.lower() == ".csv"


def read(manifest: Path, split_dir: Path | None = None) -> SourceTracks:
    """A manifest with columns path,label|labels[,split][,artist][,track_id]; paths relative to it.

    Other columns (album, a session, a label house) are kept as each track's metadata, which
    --group-by can name to keep a value's tracks on one side of the split and the folds.

    A path may be a URI (s3://bucket/key.mp3, gs://..., file://...): decoding fetches it.
    A `labels` column ("|"-separated tags) makes the manifest multi-label; it wins over `label`.
    """
    rows = read_rows(manifest, "manifest", {"path"})
    columns = set(rows[0][1]) if rows else {"path", "label"}
    if not {"label", "labels"} & columns:
        raise DatasetError(f"{manifest}: missing column(s) ['label']; need path,label (or labels)")
    multi_label = "labels" in columns
    tracks = []
    for line, row in rows:
        where = f"{manifest}, line {line}"
        if not row["path"].strip():
            raise DatasetError(f"{where}: empty path")
        label = row.get("label", "")
        if multi_label:
            tags = row["labels"].split(TAG_SEPARATOR)
            label = join_tags(tags) or join_tags(label.split(TAG_SEPARATOR))
            if not label:
                raise DatasetError(f"{where}: {row['path']!r} has no label or labels")
            for tag in tags_of(label):
                checked_label(tag, where)
        else:
            checked_label(label, where)
        uri = is_uri(row["path"])
        path = Path(unquote(row["path"].split("://", 1)[1]) if uri else row["path"])
        split = row.get("split", "")
        if split and split not in SPLITS:
            raise DatasetError(f"{where}: split {split!r} for {row['path']}; use {SPLITS}")
        # A URI's id: bucket and key without the scheme (s3://b/x/y.mp3 -> b/x/y).
        track_id = row.get("track_id", "") or path.with_suffix("").as_posix()
        if not uri and not path.is_absolute():
            path = manifest.parent / path
        metadata = tuple((k, v.strip()) for k, v in row.items() if k not in _KNOWN and v.strip())
        tracks.append(
            Track(
                track_id,
                row["path"] if uri else str(path),
                label,
                split,
                row.get("artist", ""),
                metadata=metadata,
            )
        )
    return SourceTracks(tracks, "csv", multi_label)


LAYOUT = Layout("csv", detect, read, detect_rank=0)
