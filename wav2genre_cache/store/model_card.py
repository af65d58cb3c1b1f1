"""Model cards: the README.md beside every bundle, for a person and for the Hugging Face Hub.

The card is rendered from bundle.json's fields plus `card`, what only the writer knows (the
data, its split, the selection rule, the command); the hub reads its YAML header. It is
documentation, not part of the model: load_bundle never reads it and bundle.json holds no
checksum of it, so a card edited on the hub, or a bundle written before cards, still loads.

card's keys, each optional: command, data, sources, counts ({split: tracks}), label_counts
({label: {split: tracks}}), per_label_test ({label: {precision, recall, f1, support}}),
grouping, selection ({rule, reason}), notes, test_split, calibration_fitted_on.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

from wav2genre_cache._io import atomic_write_text
from wav2genre_cache.store.hub_metadata import (
    LIBRARY_NAME,
    USAGE_AND_UPLOAD,
    hub_metadata,
    weights_licence,
)

CARD_FILE = "README.md"
SPLITS = ("train", "valid", "test")
REPRODUCE = "wav2genre train-heads CACHE --out RUN"


def command_line() -> str | None:
    """The wav2genre command this process runs, or None when it is a library call (a test)."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if program is None:
        return None
    if program.name == "wav2genre" or (
        program.name == "__main__.py" and program.parent.name == "wav2genre_cache"
    ):
        return shlex.join(["wav2genre", *sys.argv[1:]])
    return None


def label_split_counts(tracks: Iterable[tuple[Iterable[str], str]]) -> dict[str, dict[str, int]]:
    """Tracks per label and split, from each track's labels (a tagger's tags) and split."""
    counts: dict[str, dict[str, int]] = {}
    for labels, split in tracks:
        for label in labels:
            per_split = counts.setdefault(label, dict.fromkeys(SPLITS, 0))
            per_split[split] = per_split.get(split, 0) + 1
    return counts


def write_model_card(directory: Path, bundle: dict, card: dict | None = None) -> Path:
    """Write the bundle's README.md (atomically: a reader never sees half a card)."""
    return atomic_write_text(Path(directory) / CARD_FILE, render_model_card(bundle, card))


def bundle_summary(bundle: dict) -> dict:
    """What a bundle is, in brief (as `info` shows it): head, layer, backbone, labels, test."""
    m = bundle.get("metrics") or {}
    return {
        "name": _title_text(bundle),
        **{k: bundle.get(k) for k in ("head", "feature_set", "layer", "backbone")},
        "layer_name": _layer(bundle),
        "backbone_revision": bundle.get("backbone_revision"),
        "labels": bundle.get("labels"),
        "multi_label": bool(bundle.get("multi_label")),
        "test": {
            k: m.get(f"test_{k}")
            for k in (
                "tracks",
                "track_accuracy",
                "track_accuracy_ci",
                "track_macro_f1",
                "track_macro_f1_ci",
            )
        },
        "unmeasured_labels": list(_grouping(bundle, {}).get("unmeasured_labels") or {}),
        "untrained_backbone": str(bundle.get("backbone") or "").startswith("random-"),
    }


def figure(value, interval=None, n=None) -> str:
    """A figure as the card and `info` print it: '0.812 (95 % CI 0.70-0.89, n = 40)'."""
    if value is None:
        return "n/a"
    text = f"{value:.3f}"
    extras = []
    if interval and None not in interval:
        extras.append(f"95 % CI {interval[0]:.3f}-{interval[1]:.3f}")
    if n is not None:
        extras.append(f"n = {n}")
    return text + (f" ({', '.join(extras)})" if extras else "")


def render_model_card(bundle: dict, card: dict | None = None) -> str:
    """The model card: the hub's YAML header, then the model, data, figures and limitations."""
    card = card or {}
    sections = [
        hub_metadata(bundle, _title_text(bundle), [x for x in card.get("sources") or [] if x]),
        _title(bundle),
        _model(bundle),
        _labels(bundle, card),
        _training_data(bundle, card),
        _evaluation(bundle, card),
        _calibration(bundle, card),
        _limitations(bundle, card),
        _how_made(bundle, card),
        USAGE_AND_UPLOAD,
        _licence(bundle),
    ]
    return "\n\n".join(s.strip("\n") for s in sections) + "\n"


def _title_text(bundle: dict) -> str:
    """The card's one-line name of the model."""
    backbone = bundle.get("backbone") or "unknown backbone"
    if bundle.get("kind") == "finetuned":
        return f"{backbone} fine-tuned for {_task(bundle)}"
    return f"{bundle.get('head')} head on {backbone} {_layer(bundle)} for {_task(bundle)}"


def _task(bundle: dict) -> str:
    return "music tagging" if bundle.get("multi_label") else "music genre classification"


def _layer(bundle: dict) -> str:
    layer = bundle.get("layer")
    if layer == -1:  # stage two's EVERY_LAYER, fine-tuning's WEIGHTED
        return "every layer" + (" (a learned weighted sum)" if bundle.get("kind") else "")
    return f"layer {layer}"


def _in_label_order(bundle: dict, per_label: dict) -> list[str]:
    """per_label's keys in the bundle's label order (the order predict reports them in)."""
    labels = bundle.get("labels") or []
    return [x for x in labels if x in per_label] + [x for x in per_label if x not in labels]


def _grouping(bundle: dict, card: dict) -> dict:
    return card.get("grouping") or (bundle.get("metrics") or {}).get("grouping") or {}


def _title(bundle: dict) -> str:
    m = bundle.get("metrics") or {}
    return (
        f"# {_title_text(bundle)}\n\n"
        f"A {LIBRARY_NAME} bundle (format {bundle.get('format_version')}, package "
        f"{bundle.get('package_version')}): it labels a recording as one of "
        f"{len(bundle.get('labels') or [])} labels. Test track accuracy "
        f"{figure(m.get('test_track_accuracy'), m.get('test_track_accuracy_ci'), m.get('test_tracks'))}."
    )


def _model(bundle: dict) -> str:
    backbone = bundle.get("backbone")
    rows = [
        f"- Backbone: `{backbone}`, revision `{bundle.get('backbone_revision')}`",
        f"- Feature set: {bundle.get('feature_set')}, {_layer(bundle)}",
        f"- Audio: {bundle.get('sample_rate')} Hz, segments of {bundle.get('segment_seconds')} s "
        f"every {bundle.get('hop_seconds') or bundle.get('segment_seconds')} s, {bundle.get('frontend') or 'waveform'} front end; "
        "a track's scores are the mean of its segments'",
    ]
    if bundle.get("kind") == "finetuned":
        rows.append(
            "- Head: the encoder fine-tuned with a small classifier head "
            f"(`{json.dumps(bundle.get('model') or {})}`)"
        )
        rows.append(f"- Training settings: `{json.dumps(bundle.get('params') or {})}`")
    else:
        rows.append(
            f"- Head: {bundle.get('head')}, parameters `{json.dumps(bundle.get('params'))}`"
        )
    rows.append(f"- Weights: {bundle.get('dtype')}; files: {', '.join(bundle.get('files') or {})}")
    return "## Model\n\n" + "\n".join(rows)


def _labels(bundle: dict, card: dict) -> str:
    unmeasured = _grouping(bundle, card).get("unmeasured_labels") or {}
    kind = "tags (several may apply)" if bundle.get("multi_label") else "labels (one per track)"
    rows = [
        f"- {label}" + (" (not measured on test: no test track)" if label in unmeasured else "")
        for label in bundle.get("labels") or []
    ]
    return f"## Labels\n\n{len(rows)} {kind}:\n\n" + "\n".join(rows)


def _training_data(bundle: dict, card: dict) -> str:
    """Where the data came from, how much of each label, and how it was split and grouped."""
    out = ["## Training data", ""]
    sources = [s for s in card.get("sources") or [] if s]
    out.append(f"- Datasets: {', '.join(sources) if sources else 'not recorded'}")
    if card.get("data"):
        out.append(f"- Read from: `{card['data']}`")
    counts = card.get("counts")
    if counts:
        out.append("- Tracks per split: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    out.append(f"- Split and grouping: {_grouping_sentence(_grouping(bundle, card))}")
    selection = card.get("selection") or {}
    selected_on = selection.get("rule") or (bundle.get("metrics") or {}).get("selected_on")
    if selected_on:
        reason = f": {selection['reason']}" if selection.get("reason") else ""
        out.append(f"- Model selection: {selected_on}{reason}")
    label_counts = card.get("label_counts")
    if label_counts:
        out += ["", "Tracks per label and split:", "", "| label | train | valid | test |"]
        out.append("|---|---:|---:|---:|")
        for label in _in_label_order(bundle, label_counts):
            cells = [str(label_counts[label].get(s, 0)) for s in SPLITS]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    notes = card.get("notes") or []
    if notes:
        out += ["", "Notes from training:", "", *(f"- {n}" for n in notes)]
    if not counts and not label_counts:
        out += ["", "Counts per label and split were not recorded with this bundle."]
    return "\n".join(out)


def _grouping_sentence(grouping: dict) -> str:
    if not grouping:
        return "not recorded"
    if grouping.get("by") == "artist":
        heard = grouping.get("test_artists_heard") or 0
        return (
            f"kept apart by artist ({grouping.get('artists')} artists, "
            f"{grouping.get('tracks_without_artist', 0)} tracks without one); "
            + (
                f"{heard} test artists also have training tracks"
                if heard
                else "no test artist is heard in training"
            )
        )
    return (
        "no artist was known, so the split could not keep an artist's tracks on one side; "
        "copies of one recording were kept together"
    )


def _evaluation(bundle: dict, card: dict) -> str:
    """The test figures, each with its n and 95 % interval, and per label."""
    m = bundle.get("metrics") or {}
    n = m.get("test_tracks")
    split = card.get("test_split") or "test"
    rows = [
        ("Track accuracy", m.get("test_track_accuracy"), m.get("test_track_accuracy_ci")),
        ("Track macro-F1", m.get("test_track_macro_f1"), m.get("test_track_macro_f1_ci")),
        ("Track macro ROC AUC", m.get("test_track_macro_auc"), None),
        (
            "Track macro PR AUC",
            m.get("test_track_macro_pr_auc"),
            m.get("test_track_macro_pr_auc_ci"),
        ),
        ("Track micro-F1", m.get("test_track_micro_f1"), None),
        ("Segment accuracy", m.get("test_segment_accuracy"), None),
    ]
    out = [f"## Evaluation ({split} split)", ""]
    if split != "test":
        out += [f"There were no test tracks: these figures are on {split} (optimistic).", ""]
    out += ["| metric | value | 95 % interval | n tracks |", "|---|---:|---:|---:|"]
    for name, value, ci in rows:
        if value is None and name not in ("Track accuracy", "Track macro-F1"):
            continue
        interval = f"{ci[0]:.3f}-{ci[1]:.3f}" if ci and None not in ci else "not computed"
        out.append(f"| {name} | {figure(value)} | {interval} | {n if n is not None else 'n/a'} |")
    valid = m.get("valid")
    if valid:
        out += ["", "Validation: " + ", ".join(f"{k} {figure(v)}" for k, v in valid.items())]
    per_label = card.get("per_label_test")
    if per_label:
        out += ["", "Per label on test:", "", "| label | precision | recall | F1 | test tracks |"]
        out.append("|---|---:|---:|---:|---:|")
        for label in _in_label_order(bundle, per_label):
            s = per_label[label]
            measured = bool(s.get("support"))  # a label without test tracks has no figure
            cells = [figure(s.get(k)) if measured else "-" for k in ("precision", "recall", "f1")]
            out.append(f"| {label} | " + " | ".join(cells) + f" | {s.get('support')} |")
    out += ["", "Intervals are 95 %: Wilson's for accuracy, a bootstrap for F1 (over artists"]
    out[-1] += " where they are known, else over tracks)."
    return "\n".join(out)


def _calibration(bundle: dict, card: dict) -> str:
    c = bundle.get("calibration") or {}
    m = bundle.get("metrics") or {}
    method = c.get("method") or "none"
    text = f"## Calibration\n\nMethod: {method}"
    if method == "temperature":
        text += f" (temperature {c.get('temperature'):.4g})"
    if card.get("calibration_fitted_on"):
        text += f", fitted on {card['calibration_fitted_on']}"
    if m.get("test_ece_before") is not None:
        text += (
            f". Expected calibration error on test: {figure(m['test_ece_before'])} before, "
            f"{figure(m.get('test_ece_after'))} after"
        )
    if bundle.get("thresholds"):
        text += f". Per-tag thresholds: {json.dumps(bundle['thresholds'])}"
    return text + "."


def _limitations(bundle: dict, card: dict) -> str:
    """What the model is for, and what its figures cannot be trusted for."""
    grouping = _grouping(bundle, card)
    m = bundle.get("metrics") or {}
    out = [
        "## Intended use and limitations",
        "",
        f"Intended for {_task(bundle)} of recordings like the training data, into the labels "
        "above only, through `wav2genre predict` or `wav2genre serve` (which embed the audio "
        "exactly as it was embedded for training). It is a research model: it is not meant for "
        "decisions about people or for music unlike its training data.",
        "",
    ]
    if str(bundle.get("backbone") or "").startswith("random-"):
        out.append(
            "- **The backbone is untrained (random weights): this model means nothing.** It "
            "exists to test the pipeline; its figures say nothing about music."
        )
    if grouping and grouping.get("by") != "artist":
        out.append(
            "- No artist was known for the tracks, so one artist may have tracks in both "
            "training and test: the results may be inflated by same-artist tracks."
        )
    if grouping.get("test_artists_heard"):
        out.append(
            f"- {grouping['test_artists_heard']} test artists also have tracks in training or "
            "validation: the test figures are inflated by artists the model has heard."
        )
    unmeasured = grouping.get("unmeasured_labels") or {}
    if unmeasured:
        out.append(
            f"- Unmeasured labels: {', '.join(unmeasured)} had no test track; nothing here "
            "measures how well the model recognises them."
        )
    n = m.get("test_tracks")
    if n is not None:
        out.append(
            f"- The test set holds {n} tracks: read each figure with its interval"
            + (", which is wide at this size." if n < 200 else ".")
        )
    out.append(
        "- Labels are whatever the dataset's annotators chose; genre labels overlap and are "
        "disputed, and the model knows no label outside its list."
    )
    return "\n".join(out)


def _how_made(bundle: dict, card: dict) -> str:
    command = card.get("command")
    if command:
        return f"## How it was made\n\n```\n{command}\n```"
    data = shlex.quote(card["data"]) if card.get("data") else None
    if bundle.get("kind") == "finetuned":
        how = f"wav2genre finetune {data or 'DATA'} --out RUN --model {shlex.quote(str(bundle.get('backbone')))}"
    else:
        how = REPRODUCE.replace("CACHE", data) if data else REPRODUCE
    return (
        "## How it was made\n\nThe command was not recorded (a library call). To reproduce it, "
        f"with the same data and settings (see Training data):\n\n```\n{how}\n```"
    )


def _licence(bundle: dict) -> str:
    _, sentence = weights_licence(str(bundle.get("backbone") or ""))
    whose = (
        "The fine-tuned weights derive from the backbone's, and carry its licence."
        if bundle.get("kind") == "finetuned"
        else "The head was trained on the backbone's features."
    )
    whose += " Their use is also bound by the terms of the training data."
    return f"## Licence\n\n{sentence} {whose} {LIBRARY_NAME} itself is MIT-licensed."
