"""Find the labelled tracks of datasets (GTZAN, folder, CSV, FMA, MSD, MTG-Jamendo), map their
labels onto one taxonomy and split them by track."""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd

from wav2genre_cache.audio.decode import AUDIO_EXTENSIONS, is_uri
from wav2genre_cache.errors import DatasetError

SPLITS = ("train", "valid", "test")
EXCLUDED = "excluded"  # in the data but outside the chosen split (e.g. faults in GTZAN-ff)
TAG_SEPARATOR = "|"  # a multi-label track's label is its tags, sorted and joined by this
LAYOUTS = ("gtzan", "folder", "csv", "fma", "msd", "mtg-jamendo")
_GTZAN_NAME = re.compile(r"^(?P<genre>[a-z]+)\.\d{5}$")
_FMA_SPLITS = {"training": "train", "validation": "valid", "test": "test"}
_MSD_ID = re.compile(r"TR[A-Z0-9]{16}")
# tagtraum's CD2C (the cleaned variant) is preferred over CD2 when both are there.
_MSD_ANNOTATIONS = ("msd_tagtraum_cd2c.cls", "msd_tagtraum_cd2.cls")
_MSD_ARTISTS = "unique_tracks.txt"
# The first of these found is read: the mtg-jamendo-dataset repository holds them all.
_MTG_TSVS = (
    "autotagging_moodtheme.tsv",
    "autotagging_genre.tsv",
    "autotagging_instrument.tsv",
    "autotagging_top50tags.tsv",
    "autotagging.tsv",
)
_MTG_HEADER = ["TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION", "TAGS"]
_MTG_SPLITS = {"train": "train", "validation": "valid", "test": "test"}
_MTG_CATEGORY = "---"  # mood/theme---happy: category, then tag
# What a reader's counts mean, as a note for the user (only counts above zero are noted).
_COUNT_NOTES = {
    "no_audio": "{n} annotated tracks have no audio, left out",
    "unannotated_audio": "{n} audio files have no annotation, ignored",
}


@dataclass(frozen=True)
class Track:
    """One labelled audio file of a dataset."""

    track_id: str
    path: str
    label: str  # a multi-label track's tags, sorted and joined by TAG_SEPARATOR
    split: str = ""
    artist: str = ""
    source: str = ""  # the source name of the dataset it comes from (see read_datasets)


@dataclass
class SourceTracks:
    """One dataset as its reader found it: tracks, whether they are tagged, what was left out."""

    tracks: list[Track]
    layout: str
    multi_label: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # keys of _COUNT_NOTES


@dataclass
class Catalogue:
    """The tracks of a run's datasets: labels mapped, splits assigned, what was left out."""

    tracks: list[Track]  # splits assigned; .source set; multi-label tracks "|"-joined
    multi_label: bool  # any source is multi-label (then single-label tracks are one-tag tracks)
    sources: list[str]  # source names in DATA order
    notes: list[str] = field(default_factory=list)  # counts for the user, one line each
    counts: dict = field(default_factory=dict)  # the same as numbers, JSON-able

    @property
    def layouts(self) -> list[str]:
        """Each dataset's layout (as detected where it was auto), in DATA order."""
        return [self.counts["sources"][name]["layout"] for name in self.sources]


def tags_of(label: str) -> list[str]:
    """A label's tags: the "|"-joined tags of a multi-label track, or a single label alone."""
    return [t for t in label.split(TAG_SEPARATOR) if t]


def join_tags(tags: Iterable[str]) -> str:
    """Tags as one label: stripped, deduplicated, sorted and joined by TAG_SEPARATOR."""
    return TAG_SEPARATOR.join(sorted({t.strip() for t in tags} - {""}))


def detect_layout(data: Path) -> str:
    """Guess the dataset layout of DATA: csv, fma, mtg-jamendo, msd, gtzan or folder."""
    data = Path(data)
    if data.is_file():
        if data.suffix.lower() == ".csv":
            return "csv"
        raise DatasetError(f"{data}: a dataset is a folder or a .csv manifest")
    if not data.is_dir():
        raise DatasetError(f"{data}: no such file or folder")
    if (data / "fma_metadata" / "tracks.csv").is_file():
        return "fma"
    # Annotation files are looked for before the audio: listing a large tree takes long.
    if _find_mtg_tsv(data) is not None:
        return "mtg-jamendo"
    if _find_msd_annotations(data) is not None:
        return "msd"
    files = _audio_files(data)
    if files and all(
        _GTZAN_NAME.match(p.stem) and p.stem.split(".")[0] == p.parent.name for p in files
    ):
        return "gtzan"
    return "folder"


def discover(
    data: str | Path, layout: str = "auto", split_dir: str | Path | None = None
) -> list[Track]:
    """List the tracks of DATA in a stable order; layout is auto or one of LAYOUTS."""
    return read_source(data, layout, split_dir).tracks


def read_source(
    data: str | Path, layout: str = "auto", split_dir: str | Path | None = None
) -> SourceTracks:
    """Read one dataset: its tracks in a stable order, whether it is multi-label, its counts."""
    data = Path(data)
    layout = detect_layout(data) if layout == "auto" else layout
    if layout not in _READERS:
        raise DatasetError(
            f"unknown dataset layout {layout!r}; use one of auto, {', '.join(_READERS)}"
        )
    read = _READERS[layout](data, None if split_dir is None else Path(split_dir))
    read.layout = layout  # gtzan and folder share a reader
    if not read.tracks:
        raise DatasetError(f"{data}: no audio files found (layout {layout})")
    ids = [t.track_id for t in read.tracks]
    if len(set(ids)) != len(ids):
        dup = sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
        raise DatasetError(f"{data}: duplicate track ids {dup}")
    return read


def source_names(datas: Sequence[str | Path]) -> list[str]:
    """Each DATA's source name: its folder's name or its CSV's stem; repeats get -2, -3, ..."""
    names: list[str] = []
    for data in datas:
        path = Path(data)
        base = path.stem if path.is_file() else (path.name or path.resolve().name)
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names.append(name)
    return names


def read_datasets(
    datas: str | Path | Sequence[str | Path],
    layout: str = "auto",
    label_map: str | Path | None = None,
    split: str = "random",
    seed: int = 0,
    split_dir: str | Path | None = None,
) -> Catalogue:
    """Read one or more datasets as one catalogue: labels mapped, each source split, ids unique.

    One DATA without a label map gives exactly assign_splits(discover(DATA)) (with .source set);
    several DATA prefix each track id with its source name: <source>/<track id>.
    """
    datas = [datas] if isinstance(datas, str | Path) else list(datas)
    if not datas:
        raise DatasetError("no dataset given")
    names = source_names(datas)
    reads = [read_source(d, layout, split_dir) for d in datas]
    mapping = None if label_map is None else _read_label_map(Path(label_map), names)
    split_file = _split_file(split)
    if split == "gtzan-ff":
        if split_dir is None:
            raise DatasetError("--split gtzan-ff needs --split-dir DIR with *_filtered.txt lists")
        if not any(_is_gtzan(r.tracks) for r in reads):
            raise DatasetError(
                "--split gtzan-ff: no dataset holds GTZAN tracks (named <genre>.NNNNN)"
            )
    several = len(datas) > 1
    tracks: list[Track] = []
    bare_ids: list[str] = []
    notes: list[str] = []
    per_source: dict[str, dict] = {}
    for name, read in zip(names, reads, strict=True):
        counts: dict = {"layout": read.layout, "multi_label": read.multi_label, **read.counts}
        notes += [
            f"{name}: " + _COUNT_NOTES[k].format(n=n) for k, n in read.counts.items() if n > 0
        ]
        own = read.tracks
        if mapping is not None:
            own, map_counts, map_notes = _map_labels(own, name, read.multi_label, mapping)
            counts.update(map_counts)
            notes += map_notes
            if not own:
                raise DatasetError(f"{name}: the label map {label_map} keeps none of its tracks")
        if split_file is None:
            own = _split_source(own, name, split, seed, split_dir)
        bare_ids += [t.track_id for t in own]
        tracks += [
            replace(t, track_id=f"{name}/{t.track_id}" if several else t.track_id, source=name)
            for t in own
        ]
        per_source[name] = counts
    if split_file is not None:
        tracks = _apply_split_file(tracks, bare_ids, _read_split_csv(split_file), split_file)
    for name, counts in per_source.items():
        splits = Counter(t.split for t in tracks if t.source == name)
        counts["tracks"] = sum(splits.values())
        counts["splits"] = {s: splits[s] for s in (*SPLITS, EXCLUDED) if splits[s]}
    return Catalogue(
        tracks,
        any(r.multi_label for r in reads),
        names,
        notes,
        {"tracks": len(tracks), "sources": per_source},
    )


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
    """Stratified by label (a multi-label track's rarest tag); whole artists go to one side."""
    rng = np.random.default_rng(seed)
    # A multi-label track is stratified on its rarest tag (ties: the first in order): the
    # common tags reach every split anyway, the rare ones only if they are spread on purpose.
    # A single label is its own only tag, so single-label splits are as they always were.
    tag_count = Counter(tag for t in tracks for tag in tags_of(t.label))
    strata = [
        min(tags_of(t.label), key=lambda tag: (tag_count[tag], tag), default=t.label)
        for t in tracks
    ]
    # A unit is one artist's tracks (or one track without an artist); it goes to one side,
    # stratified by its most common stratum.
    units: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(tracks):
        units[t.artist or f"\0track{i}"].append(i)
    by_label: dict[str, list[list[int]]] = defaultdict(list)
    for members in units.values():
        label = Counter(strata[i] for i in members).most_common(1)[0][0]
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


def _split_file(method: str) -> Path | None:
    """The CSV of track_id,split a split method names, None for the named methods."""
    if method in ("random", "keep", "gtzan-ff"):
        return None
    path = Path(method)
    if path.is_file():
        return path
    raise DatasetError(f"unknown split {method!r}; use random, gtzan-ff or a CSV track_id,split")


def _split_source(
    tracks: list[Track], name: str, method: str, seed: int, split_dir: str | Path | None
) -> list[Track]:
    """One source's split: its own where it has one, else random; gtzan-ff for GTZAN tracks."""
    if method == "keep" and any(not t.split for t in tracks):
        raise DatasetError(f"{name}: some tracks have no split in the dataset; use --split random")
    if method == "gtzan-ff" and _is_gtzan(tracks):
        return assign_splits(tracks, "gtzan-ff", seed, split_dir)
    # Sources are split one by one, so artists of two sources never share a group.
    return assign_splits(tracks, "keep" if method == "keep" else "random", seed)


def _is_gtzan(tracks: list[Track]) -> bool:
    # By name, not layout: a manifest listing GTZAN's files takes its fault-filtered split too
    # (as assign_splits always did); a source with no GTZAN name is split as the others are.
    return any(_GTZAN_NAME.match(Path(t.track_id).name) for t in tracks)


def _apply_split_file(
    tracks: list[Track], bare_ids: list[str], mapping: dict[str, str], path: Path
) -> list[Track]:
    """Splits from a CSV track_id,split whose ids are <source>/<id>, <id> or a file's name."""
    out = []
    for t, bare in zip(tracks, bare_ids, strict=True):
        key = next((k for k in (t.track_id, bare, Path(bare).name) if k in mapping), None)
        out.append(replace(t, split=EXCLUDED if key is None else mapping[key]))
    if not any(t.split in SPLITS for t in out):
        raise DatasetError(f"no track of the dataset is named in {path}")
    return out


def _read_label_map(path: Path, sources: list[str]) -> dict[tuple[str, str], str]:
    """MAP.csv (source,label,target) as {(source or "*", label): target}; "" drops the label."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read the label map ({exc})") from None
    missing = {"source", "label", "target"} - set(df.columns)
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {sorted(missing)}; a label map has source,label,target"
        )
    mapping: dict[tuple[str, str], str] = {}
    where: dict[tuple[str, str], int] = {}
    unknown = set()
    # Line numbers assume one line per row (the header is line 1).
    for line, row in enumerate(df.itertuples(index=False), 2):
        source = row.source.strip() or "*"
        label, target = row.label.strip(), row.target.strip()
        if not label:
            if not row.source.strip() and not target:
                continue  # a blank row
            raise DatasetError(f"{path}, line {line}: no label")
        if TAG_SEPARATOR in target:
            raise DatasetError(
                f"{path}, line {line}: target {target!r} holds {TAG_SEPARATOR!r}; "
                "a label maps to one target"
            )
        if source != "*" and source not in sources:
            unknown.add(source)
        key = (source, label)
        if key in mapping and mapping[key] != target:
            raise DatasetError(
                f"{path}, line {line}: label {label!r} of source {source!r} maps to "
                f"{target!r} here and to {mapping[key]!r} on line {where[key]}"
            )
        mapping[key] = target
        where.setdefault(key, line)
    if unknown:
        raise DatasetError(
            f"{path}: unknown source(s) {sorted(unknown)}; the sources are {', '.join(sources)}"
        )
    return mapping


def _map_labels(
    tracks: list[Track], source: str, multi_label: bool, mapping: dict[tuple[str, str], str]
) -> tuple[list[Track], dict, list[str]]:
    """Labels (each tag of a multi-label track) mapped; tracks left with none dropped."""
    dropped: Counter[str] = Counter()  # a row maps the label to nothing
    unmapped: Counter[str] = Counter()  # no row for the label
    out = []
    for t in tracks:
        targets = set()
        for label in tags_of(t.label) if multi_label else [t.label]:
            # A row for this source wins over a row for any source ("*").
            target = mapping.get((source, label), mapping.get(("*", label)))
            if target is None:
                unmapped[label] += 1
            elif not target:
                dropped[label] += 1
            else:
                targets.add(target)
        if targets:
            out.append(replace(t, label=join_tags(targets)))
    lost = len(tracks) - len(out)
    notes = [
        f"{source}: {n} tracks with label {k!r} mapped to nothing, dropped"
        for k, n in sorted(dropped.items())
    ]
    notes += [
        f"{source}: {n} tracks with label {k!r} not in the label map, dropped"
        for k, n in sorted(unmapped.items())
    ]
    if lost:
        notes.append(f"{source}: {lost} tracks left with no label, left out")
    counts = {
        "labels_dropped": dict(sorted(dropped.items())),
        "labels_unmapped": dict(sorted(unmapped.items())),
        "tracks_without_label": lost,
    }
    return out, counts, notes


def _audio_files(root: Path) -> list[Path]:
    # Unreadable files and broken links are listed too, so that they get reported, not ignored.
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and not p.is_dir()
    )


def _read_lines(path: Path, errors: str = "strict") -> list[str]:
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first line.
        return path.read_text(encoding="utf-8-sig", errors=errors).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None


def _read_folder(data: Path, split_dir: Path | None = None) -> SourceTracks:
    """One sub-folder per label; the GTZAN layout is the special case <genre>/<genre>.NNNNN.*."""
    tracks = []
    for p in _audio_files(data):
        rel = p.relative_to(data)
        if len(rel.parts) < 2:
            continue  # files at the top level have no label folder
        label = rel.parts[0]
        track_id = p.stem if _GTZAN_NAME.match(p.stem) else rel.with_suffix("").as_posix()
        tracks.append(Track(track_id, str(p), label))
    return SourceTracks(tracks, "folder")


def _read_csv(manifest: Path, split_dir: Path | None = None) -> SourceTracks:
    """A manifest with columns path,label|labels[,split][,artist][,track_id]; paths relative to it.

    A path may be a URI (s3://bucket/key.mp3, gs://..., file://...): decoding fetches it.
    A `labels` column ("|"-separated tags) makes the manifest multi-label; it wins over `label`.
    """
    try:
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DatasetError(f"{manifest}: cannot read CSV ({exc})") from None
    columns = set(df.columns)
    missing = ({"path"} - columns) | ({"label"} if not {"label", "labels"} & columns else set())
    if missing:
        raise DatasetError(
            f"{manifest}: missing column(s) {sorted(missing)}; need path,label (or labels)"
        )
    multi_label = "labels" in columns
    tracks = []
    for line, row in enumerate(df.itertuples(index=False), 2):
        label = getattr(row, "label", "")
        if multi_label:
            tags = row.labels.split(TAG_SEPARATOR)
            label = join_tags(tags) or join_tags(label.split(TAG_SEPARATOR))
            if not label:
                raise DatasetError(f"{manifest}, line {line}: {row.path!r} has no label or labels")
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
        tracks.append(Track(track_id, where, label, split, getattr(row, "artist", "")))
    return SourceTracks(tracks, "csv", multi_label)


def _read_fma(root: Path, split_dir: Path | None = None) -> SourceTracks:
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
    return SourceTracks(tracks, "fma")


def _find_msd_annotations(data: Path) -> Path | None:
    """tagtraum's genre file at DATA's top level or one folder down, CD2C before CD2."""
    if not data.is_dir():
        return None
    for name in _MSD_ANNOTATIONS:
        found = sorted(data.glob(name)) + sorted(data.glob(f"*/{name}"))
        if found:
            return found[0]
    return None


def _read_msd(data: Path, split_dir: Path | None = None) -> SourceTracks:
    """MSD: tagtraum genres (the majority one), previews named by MSD track id anywhere under DATA."""
    cls = _find_msd_annotations(data)
    if cls is None:
        raise DatasetError(
            f"{data}: no {' or '.join(_MSD_ANNOTATIONS)} at its top level or one folder down"
        )
    genres = _read_tagtraum(cls)
    audio: dict[str, Path] = {}
    artist_files = []
    # One walk finds both the previews and unique_tracks.txt: the MSD tree can be large.
    for p in sorted(data.rglob("*")):
        if p.name == _MSD_ARTISTS:
            artist_files.append(p)
        elif p.suffix.lower() in AUDIO_EXTENSIONS and _MSD_ID.fullmatch(p.stem) and not p.is_dir():
            if p.stem in audio:
                raise DatasetError(
                    f"{data}: two audio files for track {p.stem}: {audio[p.stem]}, {p}"
                )
            audio[p.stem] = p
    artists = _read_msd_artists(artist_files[0]) if artist_files else {}
    tracks = [
        Track(tid, str(audio[tid]), genre, artist=artists.get(tid, ""))
        for tid, genre in sorted(genres.items())
        if tid in audio
    ]
    if not tracks:
        raise DatasetError(
            f"{data}: none of the {len(genres)} tracks of {cls.name} has audio under it "
            "(previews named by MSD track id, e.g. TRAAAAK128F9318786.mp3)"
        )
    counts = {
        "no_audio": len(genres) - len(tracks),
        "unannotated_audio": len(audio.keys() - genres.keys()),
    }
    return SourceTracks(tracks, "msd", False, counts)


def _read_tagtraum(path: Path) -> dict[str, str]:
    """TRACKID<TAB>majority genre[<TAB>minority genre] lines; # starts a comment."""
    genres: dict[str, str] = {}
    for line_no, line in enumerate(_read_lines(path), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if not 2 <= len(fields) <= 3 or not _MSD_ID.fullmatch(fields[0]) or not fields[1]:
            raise DatasetError(
                f"{path}, line {line_no}: expected TRACKID<TAB>genre[<TAB>minority genre], "
                f"got {line[:80]!r}"
            )
        if fields[0] in genres:
            raise DatasetError(f"{path}, line {line_no}: track {fields[0]} is annotated twice")
        genres[fields[0]] = fields[1]
    return genres


def _read_msd_artists(path: Path) -> dict[str, str]:
    """Artist of each MSD track from TRACKID<SEP>SONGID<SEP>artist<SEP>title lines."""
    artists = {}
    # Only grouping needs the names, so a stray byte is replaced rather than refused.
    for line_no, line in enumerate(_read_lines(path, errors="replace"), 1):
        if not line.strip():
            continue
        fields = line.split("<SEP>")
        if len(fields) < 4:
            raise DatasetError(
                f"{path}, line {line_no}: expected TRACKID<SEP>SONGID<SEP>artist<SEP>title"
            )
        artists[fields[0]] = fields[2]
    return artists


def _find_mtg_tsv(data: Path) -> Path | None:
    """The first of _MTG_TSVS at DATA's top level or in DATA/data."""
    if not data.is_dir():
        return None
    for name in _MTG_TSVS:
        for folder in (data, data / "data"):
            if (folder / name).is_file():
                return folder / name
    return None


def _read_mtg_jamendo(data: Path, split_dir: Path | None = None) -> SourceTracks:
    """MTG-Jamendo: autotagging*.tsv (tags from the 6th field on), audio, official splits."""
    tsv = _find_mtg_tsv(data)
    if tsv is None:
        raise DatasetError(f"{data}: none of {', '.join(_MTG_TSVS)} at its top level or in data/")
    rows = _read_mtg_tsv(tsv)
    # A file of one category (mood/theme---happy, mood/theme---sad) keeps the tag alone; one
    # that mixes categories keeps them, since a name may be in two (genre---x, mood/theme---x).
    categories = {
        tag.split(_MTG_CATEGORY, 1)[0] if _MTG_CATEGORY in tag else None
        for *_, tags in rows
        for tag in tags
    }
    strip = len(categories) == 1 and None not in categories
    split_of = _read_mtg_splits(tsv, split_dir)
    tracks, no_audio = [], 0
    for track_id, artist, rel, tags in rows:
        path = _mtg_audio(data, rel)
        if path is None:
            no_audio += 1
            continue
        if strip:
            tags = [t.split(_MTG_CATEGORY, 1)[1] for t in tags]
        split = "" if split_of is None else split_of.get(track_id, EXCLUDED)
        tracks.append(Track(track_id, str(path), join_tags(tags), split, artist))
    if not tracks and rows:
        raise DatasetError(
            f"{data}: none of the {len(rows)} tracks of {tsv.name} has audio in "
            f"{data / 'audio'} or {data} (PATH as in the tsv, e.g. {rows[0][2]})"
        )
    return SourceTracks(tracks, "mtg-jamendo", True, {"no_audio": no_audio})


def _read_mtg_tsv(path: Path) -> list[tuple[str, str, str, list[str]]]:
    """(track id, artist id, PATH, tags) rows; tags are the 6th and following fields."""
    lines = _read_lines(path)
    if not lines or lines[0].split("\t")[:6] != _MTG_HEADER:
        raise DatasetError(f"{path}: line 1 is not the header {' '.join(_MTG_HEADER)} (tabs)")
    rows = []
    seen: set[str] = set()
    for line_no, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        # Not pandas: a row has as many fields as it has tags, one tag per field.
        fields = line.split("\t")
        tags = [t.strip() for t in fields[5:] if t.strip()]
        if len(fields) < 6 or not fields[0] or not fields[3] or not tags:
            raise DatasetError(
                f"{path}, line {line_no}: expected TRACK_ID, ARTIST_ID, ALBUM_ID, PATH, "
                f"DURATION and at least one tag, tab-separated; got {line[:80]!r}"
            )
        if fields[0] in seen:
            raise DatasetError(f"{path}, line {line_no}: track {fields[0]} is listed twice")
        seen.add(fields[0])
        rows.append((fields[0], fields[1], fields[3], tags))
    return rows


def _mtg_audio(data: Path, rel: str) -> Path | None:
    """Where PATH's audio is: under DATA/audio or DATA, as downloaded or as the .low.mp3 copy."""
    path = Path(rel)
    low = path.with_name(f"{path.stem}.low{path.suffix}")
    for root in (data / "audio", data):
        for candidate in (root / path, root / low):
            if candidate.is_file():
                return candidate
    return None


def _read_mtg_splits(tsv: Path, split_dir: Path | None) -> dict[str, str] | None:
    """Track id -> split from splits/split-N/<stem>-{train,validation,test}.tsv; None if none.

    split-0 beside the tsv by default; --split-dir names another split-N folder.
    """
    stem = tsv.stem
    folder = tsv.parent / "splits" / "split-0"
    if split_dir is not None:
        if (split_dir / f"{stem}-train.tsv").is_file():
            folder = split_dir
        elif any(split_dir.glob("autotagging*-train.tsv")):
            # An MTG-Jamendo split folder for other tsvs: the user meant it, for another file.
            raise DatasetError(f"{split_dir}: no {stem}-train.tsv for {tsv}")
    if not (folder / f"{stem}-train.tsv").is_file():
        return None
    split_of: dict[str, str] = {}
    for name, split in _MTG_SPLITS.items():
        f = folder / f"{stem}-{name}.tsv"
        if not f.is_file():
            raise DatasetError(
                f"{f}: missing; a split folder holds {stem}-train|validation|test.tsv"
            )
        for line in _read_lines(f):
            track_id = line.split("\t", 1)[0].strip()
            if not track_id or track_id == _MTG_HEADER[0]:
                continue
            if split_of.get(track_id, split) != split:
                raise DatasetError(
                    f"{f}: track {track_id} is also in the {split_of[track_id]} split"
                )
            split_of[track_id] = split
    return split_of


_READERS = {
    "gtzan": _read_folder,
    "folder": _read_folder,
    "csv": _read_csv,
    "fma": _read_fma,
    "msd": _read_msd,
    "mtg-jamendo": _read_mtg_jamendo,
}


def find_duplicates(tracks) -> tuple[dict, list[str]]:
    """Tracks whose decoded audio is the same (equal content hashes): reported, and kept on one
    side of the split (copies in train, valid and test all go to train; in valid and test, to
    valid), so no test score is a copy of a training example.

    Returns a JSON-able report with the corrected splits under "split", and notes for the user.
    """
    split = tracks.split.to_numpy().astype(object).copy()
    ok = (tracks.status.to_numpy() == "ok") & (tracks.content_hash.to_numpy() != "")
    groups: dict[str, list[int]] = {}
    for i in np.flatnonzero(ok):
        groups.setdefault(tracks.content_hash.iat[i], []).append(int(i))
    groups = {h: rows for h, rows in groups.items() if len(rows) > 1}
    moved = []
    for rows in groups.values():
        sides = [split[i] for i in rows if split[i] in SPLITS]
        if len(set(sides)) < 2:
            continue
        keep = min(sides, key=SPLITS.index)  # the first in SPLITS order: train, valid, test
        for i in rows:
            if split[i] in SPLITS and split[i] != keep:
                moved.append({"track_id": tracks.track_id.iat[i], "from": split[i], "to": keep})
                split[i] = keep
    ids = tracks.track_id.to_numpy()
    report = {
        "groups": [sorted(ids[rows].tolist()) for rows in groups.values()],
        "tracks": sum(len(rows) for rows in groups.values()),
        "moved": moved,
        "split": split,
    }
    notes = []
    if groups:
        notes.append(
            f"{len(groups)} recording(s) appear more than once ({report['tracks']} tracks with "
            f"the same decoded audio); {len(moved)} copies moved so that none straddles a split"
        )
    return report, notes
