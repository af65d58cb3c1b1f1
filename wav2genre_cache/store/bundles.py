"""Bundles: a trained head with what predict needs to embed audio as its cache was embedded.

A bundle is a folder: bundle.json (labels, layer, feature set, the backbone and segment settings
of the cache, test metrics, and a sha256 for every file of the head) beside the head's own files
and README.md, its model card (model_card.py; documentation, never read when loading).
train-heads writes them; predict and serve read them, and nothing here touches a cache.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from wav2genre_cache._io import (
    atomic_write_json,
    name_in_folder_problem,
    read_json_object,
    sha256_file,
)
from wav2genre_cache._version import __version__
from wav2genre_cache.errors import BundleError
from wav2genre_cache.feature_sets import ENCODER
from wav2genre_cache.heads.registry import head_files, load_head, save_head
from wav2genre_cache.store.model_card import write_model_card

BUNDLE_FORMAT = "wav2genre-bundle"
BUNDLE_VERSION = 2  # 2: a sha256 for every file of the head
FINETUNED = "finetuned"  # bundle.json's "kind" of a fine-tuned encoder with its head
RECREATE = "re-run train-heads on the cache (wav2genre train-heads CACHE --out RUN_DIR)"


@dataclass(frozen=True)
class BundleScoring:
    """How a bundle's scores are read: one label or tags, their calibration, tag thresholds."""

    multi_label: bool = False  # tags: independent per-tag scores
    calibration: dict | None = None  # the map fitted on held-out tracks (Calibrator.as_json)
    thresholds: list[float] | None = None  # a tagger's, per tag


def write_bundle(
    directory: Path,
    head,
    name: str,
    *,
    params: dict,
    layer: int,
    labels: list[str],
    feature_set: str,
    cache_attrs: dict,
    metrics: dict,
    scoring: BundleScoring = BundleScoring(),
    card: dict | None = None,
) -> Path:
    """Write a fitted head with everything `predict` needs to reproduce the embedding.

    cache_attrs are the attributes of the cache it was trained on (backbone, segment settings,
    dtype, front end); metrics its test (and validation) scores, shown by serve; scoring how its
    scores are read; card what the model card says of the data and how the model was chosen
    (model_card's keys).
    """
    if directory.exists():
        shutil.rmtree(directory)
    files = save_head(head, name, directory)
    attrs = cache_attrs
    bundle = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "package_version": __version__,
        "head": name,
        "params": params,
        # head_file/head_sha256 are the first format's fields, kept for readers of it; `files`
        # checksums every file the head consists of, since load_head trusts each one.
        "head_file": files[0],
        "head_sha256": sha256_file(directory / files[0]),
        "files": {f: sha256_file(directory / f) for f in files},
        "labels": labels,
        "feature_set": feature_set,
        "layer": layer,
        "sample_rate": attrs["sample_rate"],
        "segment_seconds": attrs["segment_seconds"],
        "hop_seconds": attrs["hop_seconds"],
        "backbone": attrs["backbone"],
        "backbone_revision": attrs["backbone_revision"],
        # How predict must feed the backbone (caches before log-mel encoders hold neither).
        "frontend": attrs.get("frontend", "waveform"),
        "window": attrs.get("window", "alone"),
        "dtype": attrs["dtype"],
        "metrics": metrics,
        "multi_label": scoring.multi_label,
        "calibration": scoring.calibration,
        "thresholds": scoring.thresholds,
    }
    atomic_write_json(directory / "bundle.json", bundle)
    write_model_card(directory, bundle, card)
    return directory


def write_finetuned_bundle(
    directory: Path, model, extractor, meta: dict, card: dict | None = None
) -> Path:
    """Write a fine-tuned encoder and head (safetensors, configs in JSON) with its bundle.json.

    meta holds labels, layer, sample rate and segment settings, backbone, front end, metrics
    and "model" (how finetuned.load_model rebuilds it); the sha256 of every file is added here.
    card is what the model card says of the data (model_card's keys).
    """
    from wav2genre_cache.encoders.finetuned import save_model

    if directory.exists():
        shutil.rmtree(directory)
    files = save_model(model, extractor, directory)
    bundle = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "package_version": __version__,
        "kind": FINETUNED,
        "head": FINETUNED,
        "files": {f: sha256_file(directory / f) for f in files},
        "feature_set": ENCODER,
        "dtype": "float32",  # fine-tuned weights are float32, whatever the training precision
        **meta,
    }
    atomic_write_json(directory / "bundle.json", bundle)
    write_model_card(directory, bundle, card)
    return directory


def load_bundle(directory: str | Path) -> tuple[dict, object]:
    """Read bundle.json and its head, checking every file of the head is the one that was written.

    bundle.json itself is the root of trust: it holds the checksums, so it cannot vouch for
    itself (its labels, layer and checksums are only as safe as the folder it lives in).
    """
    directory = Path(directory)
    meta_file = directory / "bundle.json"
    meta = read_bundle_json(directory)
    if meta.get("kind") == FINETUNED:
        return meta, _load_finetuned(directory, meta_file, meta)
    needed = head_files(meta.get("head"))  # raises HeadError for an unknown head
    head_file = _bundle_file_name(meta_file, meta.get("head_file"), "head file")
    checksums = _checksums(directory, meta_file, meta, head_file, needed)
    _verify(directory, checksums)  # every file, before load_head reads any of them
    head = load_head(meta["head"], directory / head_file)
    classes = getattr(head, "classes_", None)
    if classes is not None and len(classes) and int(max(classes)) >= len(meta["labels"]):
        raise BundleError(
            f"{meta_file}: 'labels' lists {len(meta['labels'])} labels, but the head predicts "
            f"{len(classes)}; the file was edited, or belongs to another head"
        )
    return meta, head


def read_bundle_json(directory: str | Path) -> dict:
    """A bundle's bundle.json, its fields checked, without loading (or checking) the model."""
    directory = Path(directory)
    meta_file = directory / "bundle.json"
    if not meta_file.is_file():
        raise BundleError(
            f"{directory}: not a bundle (no bundle.json); pass a run folder's best/ or bundles/<head>/ folder"
        )
    meta = read_json_object(meta_file, BundleError, "a wav2genre bundle", BUNDLE_FORMAT)
    _check_fields(meta_file, meta)
    return meta


# bundle.json's fields that predict reads, with their types (every kind of bundle, then heads).
_FIELDS = {"format_version": int, "labels": list}
_HEAD_FIELDS = {
    "head": str,
    "layer": int,
    "feature_set": str,
    "backbone": str,
    "dtype": str,
    "segment_seconds": (int, float),
    "hop_seconds": (int, float),
}


def _check_fields(meta_file: Path, meta: dict) -> None:
    """Each field predict reads present, of its type and sane, or one line naming it; a bundle
    of a newer format refused with the version it needs."""
    fields = _FIELDS | ({} if meta.get("kind") == FINETUNED else _HEAD_FIELDS)
    meta.setdefault("format_version", 1)  # the first bundles had none
    for name, kind in fields.items():
        value = meta.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BundleError(f"{meta_file}: field {name!r} is {value!r}, not {_type_name(kind)}")
    if meta["format_version"] > BUNDLE_VERSION:
        raise BundleError(
            f"{meta_file}: bundle format version {meta['format_version']}; this wav2genre-cache "
            f"({__version__}) reads versions up to {BUNDLE_VERSION}: upgrade it to load this bundle"
        )
    labels = meta["labels"]
    if (
        not labels
        or not all(isinstance(x, str) and x for x in labels)
        or len(set(labels)) < len(labels)
    ):
        raise BundleError(f"{meta_file}: field 'labels' is not a list of distinct label names")
    for name in ("segment_seconds", "hop_seconds"):
        if name in fields and not meta[name] > 0:
            raise BundleError(f"{meta_file}: field {name!r} is {meta[name]!r}, not positive")


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {int: "a whole number", float: "a number", str: "text", list: "a list"}[k] for k in kinds
    )


def _load_finetuned(directory: Path, meta_file: Path, meta: dict):
    """(model, front end) of a fine-tuned bundle, every file checked before any is read."""
    from wav2genre_cache.encoders.finetuned import CONFIG_FILE, MODEL_FILE, load_model

    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise BundleError(f"{meta_file}: 'files' is not a map of file names to sha256 checksums")
    checksums = {_bundle_file_name(meta_file, k, "file"): v for k, v in files.items()}
    unchecked = [f for f in (MODEL_FILE, CONFIG_FILE) if f not in checksums]
    if unchecked:
        raise BundleError(
            f"{meta_file}: has no checksum for {', '.join(unchecked)}; refusing to load it"
        )
    _verify(directory, checksums)
    # Whatever sits in the folder unlisted (a preprocessor config added later) is not read.
    extra = {"preprocessor_config.json"} - set(checksums)
    if any((directory / name).exists() for name in extra):
        raise BundleError(
            f"{directory}: holds {', '.join(sorted(extra))}, which bundle.json has no checksum for; "
            "refusing to load it"
        )
    from safetensors import SafetensorError

    try:
        return load_model(directory, meta)
    except (ValueError, KeyError, TypeError, RuntimeError, OSError, SafetensorError) as exc:
        raise BundleError(f"{directory}: cannot load the fine-tuned model ({exc})") from None


def _verify(directory: Path, checksums: dict[str, str]) -> None:
    """Every listed file present and unaltered, or BundleError naming the first that is not."""
    for name, expected in checksums.items():
        path = directory / name
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle")
        if sha256_file(path) != expected:
            raise BundleError(
                f"{path}: the file was altered after training (checksum mismatch); refusing to load it"
            )


def _checksums(
    directory: Path, meta_file: Path, meta: dict, head_file: str, needed: tuple[str, ...]
) -> dict[str, str]:
    """The expected sha256 of every file the head reads, or BundleError if one has none."""
    if "files" in meta:
        files = meta["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise BundleError(
                f"{meta_file}: 'files' is not a map of file names to sha256 checksums"
            )
        checksums = {_bundle_file_name(meta_file, k, "file"): v for k, v in files.items()}
        unchecked = [f for f in (head_file, *needed) if f not in checksums]
        if unchecked:
            raise BundleError(
                f"{meta_file}: has no checksum for {', '.join(unchecked)}, which the "
                f"{meta['head']} head reads; refusing to load it"
            )
        return checksums
    if meta.get("format_version", 1) >= 2:
        raise BundleError(f"{meta_file}: has no 'files' checksums; refusing to load it")
    # The first format checksummed head_file only: fine for a one-file head, but a file it
    # left unchecked (an XGBoost head's head_params.json) could have been changed unnoticed.
    unchecked = [f for f in needed if f != head_file]
    if unchecked:
        raise BundleError(
            f"{directory}: a bundle of an older format whose {', '.join(unchecked)} has no "
            f"checksum, so a change to it would go unnoticed; re-create the bundle: {RECREATE}"
        )
    return {head_file: meta.get("head_sha256")}


def _bundle_file_name(meta_file: Path, name: object, what: str) -> str:
    """A file name from bundle.json, accepted only if it names a plain file in the bundle folder."""
    problem = name_in_folder_problem(name)
    if problem:
        problem = problem.replace("its folder", "the bundle folder")
        raise BundleError(f"{meta_file} names {what} {name!r}, {problem}; refusing it")
    return name
