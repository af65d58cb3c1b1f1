"""`compare`'s tables: the model comparison as comparison.md, comparison.csv and comparison.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from wav2genre_cache.feature_sets import ENCODER, feature_set_name
from wav2genre_cache.report.notes import (
    OVERLAPS,
    SELECTED,
    data_notes,
    finetune_note,
    intervals_note,
    selection_sentence,
)

# Which model a row is, then its figures, then its calibration and cost. A figure's 95 %
# interval follows it as <figure>_low and <figure>_high; n is the number of test tracks.
_ROW = ["best", "encoder", "feature_set", "head", "layer", "augmented", "n"]
_CALIBRATION_AND_COST = ["ece_before", "ece_after", "fit_seconds"]
_WITH_INTERVAL = {
    "track_accuracy": "accuracy_ci",
    "track_macro_f1": "macro_f1_ci",
    "track_macro_pr_auc": "macro_pr_auc_ci",
}
COLUMNS = [
    *_ROW,
    "track_accuracy",
    "track_accuracy_low",
    "track_accuracy_high",
    "track_macro_f1",
    "track_macro_f1_low",
    "track_macro_f1_high",
    "track_macro_auc",
    "segment_accuracy",
    "valid_track_accuracy",
    "cv_track_accuracy",
    "cv_se",
    *_CALIBRATION_AND_COST,
]
# A tagger's table: ranked by macro PR-AUC (the MTG-Jamendo convention), with micro-F1 at the
# tags' thresholds; its "accuracy" is exact-match accuracy.
TAG_COLUMNS = [
    *_ROW,
    "track_macro_pr_auc",
    "track_macro_pr_auc_low",
    "track_macro_pr_auc_high",
    "track_macro_auc",
    "track_micro_f1",
    "track_macro_f1",
    "valid_track_macro_pr_auc",
    *_CALIBRATION_AND_COST,
]


def comparison_table(metrics: dict) -> pd.DataFrame:
    """One row per head x layer x feature set, best first by the selection score; rows whose
    interval of the ranking figure overlaps the selected model's are marked `~`."""
    tags = bool(metrics.get("multi_label"))
    rows = []
    for r in metrics["results"]:
        track = r["test"]["track"]
        calibration = r.get("calibration") or {}
        row = {
            "best": SELECTED if r.get("best_overall") else "",
            "encoder": _encoder_cell(r),
            "feature_set": r["feature_set"],
            "head": r["head"],
            "layer": "weighted" if r["layer"] == -1 else r["layer"],
            "augmented": {True: "yes", False: "no"}.get(r.get("augmented"), "-"),
            "n": track.get("n"),
            "track_accuracy": track["accuracy"],
            "track_macro_f1": track["macro_f1"],
            "track_macro_auc": track["macro_auc"],
            "track_macro_pr_auc": track.get("macro_pr_auc"),
            "track_micro_f1": track.get("micro_f1"),
            "segment_accuracy": r["test"]["segment"]["accuracy"],
            "valid_track_accuracy": (r.get("valid") or {}).get("accuracy"),
            "valid_track_macro_pr_auc": (r.get("valid") or {}).get("macro_pr_auc"),
            "cv_track_accuracy": (r.get("selection") or {}).get("accuracy_mean"),
            "cv_se": (r.get("selection") or {}).get("accuracy_se"),
            "ece_before": calibration.get("ece_before"),
            "ece_after": calibration.get("ece_after"),
            "fit_seconds": r["fit_seconds"],
        }
        for column, key in _WITH_INTERVAL.items():
            row[f"{column}_low"], row[f"{column}_high"] = track.get(key) or (None, None)
        rows.append(row)
    df = pd.DataFrame(rows, columns=TAG_COLUMNS if tags else COLUMNS)
    if not tags and df["cv_track_accuracy"].isna().all():  # chosen on validation
        df = df.drop(columns=["cv_track_accuracy", "cv_se"])
    _mark_overlaps(df, "track_macro_pr_auc" if tags else "track_accuracy")
    rank = (
        ["valid_track_macro_pr_auc", "track_macro_pr_auc"]
        if tags
        else ["cv_track_accuracy", "valid_track_accuracy", "track_accuracy"]
    )
    rank = [column for column in rank if column in df]  # cv_*: only where cross-validation chose
    return df.sort_values(rank, ascending=False, na_position="last", kind="stable").reset_index(
        drop=True
    )


def _mark_overlaps(df: pd.DataFrame, figure: str) -> None:
    """Mark `~` each row whose interval of `figure` overlaps the selected row's."""
    selected = df.index[df["best"] == SELECTED]
    if len(selected) != 1 or df[f"{figure}_low"].isna().all():
        return
    low, high = df.loc[selected[0], [f"{figure}_low", f"{figure}_high"]]
    overlaps = (df[f"{figure}_high"] >= low) & (df[f"{figure}_low"] <= high)
    df.loc[overlaps & (df["best"] != SELECTED), "best"] = OVERLAPS


def _encoder_cell(row: dict) -> str:
    """frozen, or fine-tuned with how many of its top layers were trained."""
    tuned = row.get("fine_tuned")
    if not tuned:
        return "frozen"
    # Of the layers that run: a model pooling layer 6 of 12 runs (and may train) six.
    n, of = tuned["unfreeze"], tuned.get("running_layers", tuned["transformer_layers"])
    if n == 0:
        return "fine-tuned (head only)"
    return f"fine-tuned (top {n} of {of})" if n < of else f"fine-tuned (all {of})"


def write_tables(
    table: pd.DataFrame,
    metrics: dict,
    run_dir: Path,
    figures: dict[str, Path] | None = None,
    figure_notes: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Write comparison.{csv,json,md} into RUN_DIR (the Markdown linking the figures drawn and
    saying why the others were not); return what was written."""
    written = {}
    table.to_csv(run_dir / "comparison.csv", index=False)
    written["csv"] = run_dir / "comparison.csv"
    (run_dir / "comparison.json").write_text(
        json.dumps(json.loads(table.to_json(orient="records")), indent=1)
    )
    written["json"] = run_dir / "comparison.json"
    text = markdown(table, metrics) + _figures_section(figures or {}, figure_notes or {})
    (run_dir / "comparison.md").write_text(text)
    written["md"] = run_dir / "comparison.md"
    return written


def markdown(table: pd.DataFrame, metrics: dict) -> str:
    """The comparison as a Markdown document with a short header on how it was made."""
    lines = ["# Model comparison", ""]
    counts = metrics["counts"]
    lines.append(
        f"Backbone `{metrics['backbone']}`, feature sets `{', '.join(metrics['feature_sets'])}`; tracks: "
        f"{counts['train']} train, {counts['valid']} valid, {counts['test']} test. Metrics are on the "
        f"test split at track level (mean of segment probabilities). {selection_sentence(metrics)} "
        "`*` marks the selected best model"
        + (
            " among the encoder rows (the one in `best/`, which predict and serve embed audio for)."
            if len(metrics.get("feature_sets", [])) > 1
            and ENCODER in map(feature_set_name, metrics["feature_sets"])
            else "."
        )
    )
    if metrics.get("untrained_backbone"):
        lines += [
            "",
            "**These numbers come from an untrained (random) backbone: they test the pipeline, "
            "not the method.**",
        ]
    lines += data_notes(metrics)
    lines += intervals_note(table, metrics)
    lines += finetune_note(metrics)
    shown = _with_intervals(table)
    lines += ["", "| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for row in shown.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    lines += _per_source_section(metrics)
    lines += _search_section(metrics)
    return "\n".join(lines) + "\n"


def _with_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """The table as Markdown shows it: each figure with its interval in one cell."""
    shown = table.copy()
    for column in _WITH_INTERVAL:
        if f"{column}_low" not in shown:
            continue
        low, high = shown.pop(f"{column}_low"), shown.pop(f"{column}_high")
        shown[column] = [
            _cell(v) if pd.isna(lo) else f"{_cell(v)} [{lo:.2f}, {hi:.2f}]"
            for v, lo, hi in zip(shown[column], low, high, strict=True)
        ]
    return shown


def _figures_section(figures: dict[str, Path], notes: dict[str, str]) -> str:
    """comparison.md's figures, each linked beside the file (and the sentences of those that
    were not drawn)."""
    if not figures and not notes:
        return ""
    lines = ["", "## Figures", ""]
    lines += [f"![{name}]({path.name})\n" for name, path in figures.items()]
    lines += ["", *notes.values()] if notes else []
    return "\n".join(lines) + "\n"


def _per_source_section(metrics: dict) -> list[str]:
    """Each dataset's test figures for the best model of each head."""
    rows = [r for r in metrics["results"] if r.get("best_of_head") and r["test"].get("per_source")]
    if not rows:
        return []
    figures = (
        ["n", "macro_pr_auc", "macro_auc", "macro_f1"]
        if metrics.get("multi_label")
        else ["n", "accuracy", "macro_f1", "macro_auc"]
    )
    lines = [
        "",
        "## Per dataset (test tracks, best model of each head)",
        "",
        "| head | feature_set | layer | dataset | " + " | ".join(figures) + " |",
        "|" + "---|" * (4 + len(figures)),
    ]
    for r in rows:
        layer = "weighted" if r["layer"] == -1 else r["layer"]
        for source, m in r["test"]["per_source"].items():
            cells = [_cell(m.get(k)) for k in figures]
            if m.get("accuracy_ci") and "accuracy" in figures:
                low, high = m["accuracy_ci"]
                cells[figures.index("accuracy")] += f" [{low:.2f}, {high:.2f}]"
            lines.append(
                f"| {r['head']} | {r['feature_set']} | {layer} | {source or '-'} | "
                + " | ".join(cells)
                + " |"
            )
    return lines


def _search_section(metrics: dict) -> list[str]:
    """The FCNN hyper-parameter search of the best FCNN row: space, trials, chosen values."""
    search = metrics.get("fcnn_search")
    rows = [
        r
        for r in metrics["results"]
        if r["head"] == "fcnn" and r.get("best_of_head") and r.get("trials")
    ]
    if not search or not rows:
        return []
    r = rows[0]
    lines = [
        "",
        f"## FCNN hyper-parameter search ({search['trials']} trials, {r['feature_set']} layer {r['layer']})",
        "",
        "Search space: " + "; ".join(f"{k} {v}" for k, v in search["space"].items()) + ".",
        f"Chosen on validation: `{json.dumps(r['params'])}` (empty: the defaults).",
        "",
    ]
    pair = (
        ("macro_pr_auc", "macro_auc", "macro PR-AUC", "macro ROC-AUC")
        if metrics.get("multi_label")
        else ("accuracy", "macro_f1", "accuracy", "macro-F1")
    )
    lines += [
        f"| trial | parameters | valid {pair[2]} | valid {pair[3]} | fit seconds |",
        "|---|---|---|---|---|",
    ]
    for i, t in enumerate(r["trials"]):
        lines.append(
            f"| {i} | `{json.dumps(t['params'])}` | {t[f'valid_{pair[0]}']:.3f} | "
            f"{t[f'valid_{pair[1]}']:.3f} | {t['fit_seconds']:.1f} |"
        )
    return lines


def _cell(v) -> str:
    """A table cell: floats to three places, missing values as a dash."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)
