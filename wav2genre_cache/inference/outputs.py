"""predict's output files for catalogues: one row per input file, in .csv, .jsonl, .json or .parquet.

A row names the file, its top labels as [{"label", "score"}] (a Hugging Face pipeline's shape),
a tagger's tags, the duration, the per-segment timeline of `predict --json`, the error of a file
that could not be used, and the bundle that made it (a readable id and bundle.json's sha256).

.csv and .jsonl are appended and flushed row by row, so a killed run keeps every finished row
and `--resume` goes on from there (a half-written last line is dropped first). .json and
.parquet are one document each: written once, atomically, at the end.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from wav2genre_cache._io import atomic_write, atomic_write_json, sha256_file
from wav2genre_cache.errors import OptionError, OutputError
from wav2genre_cache.inference.inputs import SkippedInput

APPENDED = (".csv", ".jsonl")  # written row by row
WHOLE = (".json", ".parquet")  # written at the end
FORMATS = APPENDED + WHOLE
# The CSV cells that hold JSON: lists of varying length, which no flat column can hold.
CSV_JSON_CELLS = ("tags", "timeline")
MANIFEST = "manifest.json"  # an ONNX export's (predict --runtime onnx) checksummed root file


@dataclass(frozen=True)
class BundleStamp:
    """Which model made a row: a readable id, and the sha256 of the bundle's bundle.json."""

    id: str
    sha256: str


def bundle_stamp(bundle_dir: Path, meta: dict) -> BundleStamp:
    """The stamp of a bundle: bundle.json (an ONNX export's manifest.json) holds the checksum of
    every other file, so its own sha256 names the exact model; the id (backbone:layer:head) is
    for people."""
    name = f"{meta.get('backbone', '?')}:layer{meta.get('layer', '?')}:{meta.get('head', '?')}"
    root = Path(bundle_dir) / "bundle.json"
    return BundleStamp(name, sha256_file(root if root.is_file() else root.with_name(MANIFEST)))


def model_block(meta: dict, stamp: BundleStamp) -> dict:
    """What `predict --json` says of the model with each entry: which one (id, checksum,
    backbone, layer, head) and its test figures, each with its n and 95 % interval."""
    metrics = meta.get("metrics") or {}
    grouping = metrics.get("grouping") or {}
    return {
        "bundle_id": stamp.id,
        "bundle_sha256": stamp.sha256,
        **{k: meta.get(k) for k in ("backbone", "layer", "head")},
        # test_tracks is the n of every test_* figure; *_ci its 95 % interval.
        **{k: v for k, v in metrics.items() if k.startswith("test_")},
        "selected_on": metrics.get("selected_on"),
        "test_artists_heard": grouping.get("test_artists_heard"),
        "unmeasured_labels": sorted(grouping.get("unmeasured_labels") or []),
    }


def output_format(path: Path) -> str:
    """The format of an output file, from its extension; refused if unknown or unavailable."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise OptionError(
            f"--output {path}: unknown format {suffix or '(no extension)'!r}; "
            f"name the file .csv, .jsonl, .json or .parquet"
        )
    if suffix == ".parquet":
        _pyarrow(path)
    return suffix


def check_output(path: Path, resume: bool) -> str:
    """Refuse, before any work, an output that exists without --resume; return its format."""
    suffix = output_format(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; --output names a file")
    if path.exists() and not resume:
        raise OutputError(
            f"{path} already exists; use --resume to add the files it lacks, or another file"
        )
    return suffix


def output_row(entry: dict, stamp: BundleStamp) -> dict:
    """One file's row, from its `predict --json` entry."""
    failed = "error" in entry
    return {
        "file": entry["file"],
        "label": entry.get("label"),
        "top": None if failed else _scored(entry["top"]),
        "tags": _scored(entry["tags"]) if "tags" in entry else None,  # taggers only
        "duration": entry.get("duration"),
        "timeline": None if failed else [_segment(s) for s in entry["timeline"]],
        # One line: a CSV record or a JSON line is then one line of the file, always.
        "error": " ".join(entry["error"].splitlines()) if failed else None,
        "bundle_id": stamp.id,
        "bundle_sha256": stamp.sha256,
    }


def _scored(items: list[dict]) -> list[dict]:
    """--json's {label, probability[, threshold]} as {label, score[, threshold]}."""
    return [
        {"label": t["label"], "score": t["probability"]}
        | ({"threshold": t["threshold"]} if "threshold" in t else {})
        for t in items
    ]


def _segment(segment: dict) -> dict:
    """A timeline segment: start, end, label, every label's score (and a tagger's tags)."""
    row = {
        "start": segment["start"],
        "end": segment["end"],
        "label": segment["label"],
        "scores": segment["probabilities"],
    }
    if "tags" in segment:
        row["tags"] = _scored(segment["tags"])
    return row


def csv_columns(top_k: int) -> list[str]:
    """The CSV header: flat label_i/score_i columns (pandas reads them typed, a spreadsheet
    sorts them), JSON cells for the lists that vary in length."""
    ranked = [c for i in range(1, top_k + 1) for c in (f"label_{i}", f"score_{i}")]
    return [
        "file",
        "label",
        *ranked,
        "tags",
        "duration",
        "timeline",
        "error",
        "bundle_id",
        "bundle_sha256",
    ]


def csv_record(row: dict, top_k: int) -> dict[str, object]:
    """A row as CSV cells: top labels flattened, lists as compact JSON, None as empty."""
    record = {k: v for k, v in row.items() if k != "top"}
    for i, t in enumerate((row["top"] or [])[:top_k], start=1):
        record[f"label_{i}"], record[f"score_{i}"] = t["label"], t["score"]
    for key in CSV_JSON_CELLS:
        if row[key] is not None:
            record[key] = json.dumps(row[key], separators=(",", ":"))
    return {k: "" if v is None else v for k, v in record.items()}


class OutputRows:
    """An output file being written: the rows already in it, and the rows this run adds.

    Use it as a context manager. .csv and .jsonl get each row appended and flushed at once;
    .json and .parquet are written on a clean exit only, atomically (never half a file).
    """

    def __init__(self, path: Path, stamp: BundleStamp, top_k: int, resume: bool):
        self.path, self.top_k = path, top_k
        self.format = check_output(path, resume)
        self.repaired = False  # whether a killed run's half-written last line was dropped
        existing = self._read_existing(stamp) if path.exists() else []
        self.done = {str(row["file"]) for row in existing}
        self.rows = existing if self.format in WHOLE else []
        self._fh = None

    def __enter__(self) -> OutputRows:
        if self.format in APPENDED:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # surrogateescape: a file name of undecodable bytes is written back as those bytes
            self._fh = self.path.open("a", encoding="utf-8", errors="surrogateescape", newline="")
            if self.format == ".csv":
                self._csv = csv.DictWriter(
                    self._fh, fieldnames=csv_columns(self.top_k), lineterminator="\n"
                )
                if new:
                    self._csv.writeheader()
                    self._fh.flush()
        return self

    def __exit__(self, kind, *_exc) -> None:
        if self._fh is not None:
            self._fh.close()
        elif kind is None:
            self._save()

    def write(self, row: dict) -> None:
        """Add a row: on disk now for .csv and .jsonl, at the end for .json and .parquet."""
        self.done.add(row["file"])
        if self.format == ".csv":
            self._csv.writerow(csv_record(row, self.top_k))
        elif self.format == ".jsonl":
            self._fh.write(json.dumps(row) + "\n")  # ASCII: any file name, one line
        else:
            self.rows.append(row)
            return
        self._fh.flush()  # a killed run keeps the row (the OS has it; no fsync per row)

    def _save(self) -> None:
        if self.format == ".json":
            atomic_write_json(self.path, self.rows)
        else:
            pa, pq = _pyarrow(self.path)
            table = pa.Table.from_pylist(self.rows)
            atomic_write(self.path, lambda tmp: pq.write_table(table, tmp))

    def _read_existing(self, stamp: BundleStamp) -> list[dict]:
        """The rows already in the file, checked to be this bundle's (a killed run's half
        row dropped first)."""
        if self.format in APPENDED:
            self.repaired = drop_partial_last_line(self.path)
        header = None
        try:
            if self.format == ".csv":
                rows, header = self._read_csv()
            elif self.format == ".jsonl":
                rows = _read_jsonl(self.path)
            elif self.format == ".json":
                rows = json.loads(self.path.read_text(encoding="utf-8"))
                rows = rows if isinstance(rows, list) else [rows]
            else:
                rows = _pyarrow(self.path)[1].read_table(self.path).to_pylist()
        except (ValueError, OSError) as exc:  # pyarrow's errors derive from these too
            raise OutputError(
                f"{self.path}: cannot be read to resume ({exc}); use another file"
            ) from None
        _check_stamp(self.path, rows, stamp)  # another bundle: said before other differences
        if header is not None and header != csv_columns(self.top_k):
            raise OutputError(
                f"{self.path}: its columns are not the ones this run writes (made with another "
                f"--top-k?: it has {sum(c.startswith('label_') for c in header)} label columns, "
                f"this run {self.top_k}); use the same options, or another file"
            )
        return rows

    def _read_csv(self) -> tuple[list[dict], list[str] | None]:
        with self.path.open(encoding="utf-8", errors="surrogateescape", newline="") as fh:
            reader = csv.DictReader(fh)
            return list(reader), reader.fieldnames


def _check_stamp(path: Path, rows: list, stamp: BundleStamp) -> None:
    """Refuse rows that are not predict's, or that another bundle made."""
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or "file" not in row or "bundle_sha256" not in row:
            raise OutputError(f"{path}: row {n} is not a row of predict --output; use another file")
    other = next((r for r in rows if r["bundle_sha256"] != stamp.sha256), None)
    if other is not None:
        raise OutputError(
            f"{path} was made by another bundle ({other.get('bundle_id')}, bundle.json sha256 "
            f"{str(other['bundle_sha256'])[:12]}...), not this one ({stamp.id}, "
            f"{stamp.sha256[:12]}...); resume it with that bundle, or write to another file"
        )


def _read_jsonl(path: Path) -> list[dict]:
    """The rows of a .jsonl file; a line that is not JSON is refused, naming its number."""
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise OutputError(
                    f"{path}, line {n}: not a JSON row; the file was edited or is not predict's "
                    "output: use another file"
                ) from None
    return rows


def drop_partial_last_line(path: Path) -> bool:
    """Cut a half-written last line (the row a killed run was writing) off path: every whole
    row ends with a newline. True if something was cut."""
    with path.open("rb+") as fh:
        end = fh.seek(0, 2)
        pos = end
        while pos > 0:
            start = max(0, pos - (1 << 16))
            fh.seek(start)
            block = fh.read(pos - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            pos = start
        else:
            keep = 0
        if keep == end:
            return False
        fh.truncate(keep)
        return True


def pending_inputs(
    inputs: Iterable[Path | SkippedInput], done: set[str]
) -> list[Path | SkippedInput]:
    """The inputs whose file has no row yet, each file once (rows are matched by path)."""
    seen, todo = set(done), []
    for item in inputs:
        name = str(item.path if isinstance(item, SkippedInput) else item)
        if name not in seen:
            seen.add(name)
            todo.append(item)
    return todo


def _pyarrow(path: Path):
    """pyarrow and pyarrow.parquet, or OutputError saying how to install them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise OutputError(
            f"{path}: writing .parquet needs pyarrow, which is not installed: pip install "
            "pyarrow (or name the file .csv, .jsonl or .json)"
        ) from None
    return pyarrow, pyarrow.parquet
