"""predict's inputs: audio files, folders of them, and CSV manifests of their paths, expanded in
the order given (for both engines: the same list, so the same rows)."""

from __future__ import annotations

from pathlib import Path

from wav2genre_cache.data.csv_rows import read_rows
from wav2genre_cache.errors import DatasetError
from wav2genre_cache.inference.inputs import SkippedInput, expand_inputs


def manifest_paths(manifest: Path) -> list[Path]:
    """The `path` column of a CSV manifest (other columns, a label among them, are ignored);
    relative paths are relative to the manifest's folder, as embed reads them."""
    paths = []
    for line, row in read_rows(manifest, "manifest", {"path"}):
        if not row["path"].strip():
            raise DatasetError(f"{manifest}, line {line}: empty path")
        path = Path(row["path"])
        paths.append(path if path.is_absolute() else manifest.parent / path)
    return paths


def catalogue_inputs(items: list[Path]) -> list[Path | SkippedInput]:
    """expand_inputs over the items, each .csv file read as a manifest of the files to label."""
    expanded: list[Path] = []
    for item in items:
        is_manifest = item.suffix.lower() == ".csv" and item.is_file()
        expanded += manifest_paths(item) if is_manifest else [item]
    return expand_inputs(expanded)
