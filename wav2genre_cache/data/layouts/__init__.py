"""The dataset layouts, one module each, in one table; detect_layout guesses a DATA's layout.

Adding a layout: a module that defines LAYOUT (see layout.Layout), and one line in LAYOUTS.
"""

from __future__ import annotations

from pathlib import Path

from wav2genre_cache.data.layouts import csv_manifest, fma, folder, gtzan, msd, mtg_jamendo
from wav2genre_cache.data.layouts.layout import Layout
from wav2genre_cache.errors import DatasetError

# Every layout by name, in the order messages list them.
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        gtzan.LAYOUT,
        folder.LAYOUT,
        csv_manifest.LAYOUT,
        fma.LAYOUT,
        msd.LAYOUT,
        mtg_jamendo.LAYOUT,
    )
}


def detect_layout(data: Path) -> str:
    """Guess the dataset layout of DATA: csv, fma, mtg-jamendo, msd, gtzan or folder."""
    data = Path(data)
    if not data.is_file() and not data.is_dir():
        raise DatasetError(f"{data}: no such file or folder")
    for layout in sorted(LAYOUTS.values(), key=lambda layout: layout.detect_rank):
        if layout.detect(data):
            return layout.name
    raise DatasetError(f"{data}: a dataset is a folder or a .csv manifest")
