"""The project's CSV files (manifests, label maps) read row by row, each row with its line, and
the labels in them checked: one line naming the file, the line and the problem."""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path

from wav2genre_cache.errors import DatasetError


def read_rows(path: Path, what: str, required: set[str]) -> list[tuple[int, dict[str, str]]]:
    """(line, {column: value}) of each non-blank row; column names trimmed; a row with more or
    fewer fields than the header, or a missing required column, refused naming the line."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [name.strip() for name in next(reader, [])]
            rows = [(reader.line_num, fields) for fields in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read the {what} ({exc})") from None
    missing = required - set(header)
    if missing:
        raise DatasetError(f"{path}: missing column(s) {sorted(missing)} in the header {header}")
    out = []
    for line, fields in rows:
        if not any(field.strip() for field in fields):
            continue  # a blank line
        if len(fields) != len(header):
            raise DatasetError(
                f"{path}, line {line}: {len(fields)} fields where the header has {len(header)} "
                f"({', '.join(header)}); quote a value that holds a comma"
            )
        out.append((line, dict(zip(header, fields, strict=True))))
    return out


def checked_label(label: str, where: str) -> str:
    """label, or DatasetError at `where` (file, line) if it is empty or holds a control character
    (a newline or a tab in a label breaks every table it appears in)."""
    if not label.strip():
        raise DatasetError(f"{where}: empty label")
    bad = next((c for c in label if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise DatasetError(f"{where}: label {label!r} holds a control character ({bad!r})")
    return label
