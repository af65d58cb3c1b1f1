"""`compare`: a training run's model-comparison table (Markdown, CSV, JSON) and figures (PNG)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import Wav2GenreError
from .feature_sets import ENCODER, feature_set_name

COLUMNS = [
    "best",
    "encoder",
    "feature_set",
    "head",
    "layer",
    "augmented",
    "track_accuracy",
    "track_macro_f1",
    "track_macro_auc",
    "segment_accuracy",
    "valid_track_accuracy",
    "fit_seconds",
]


class ReportError(Wav2GenreError):
    """A run folder that cannot be reported on; the message says why."""


def load_metrics(run_dir: str | Path) -> dict:
    """Read RUN_DIR/metrics.json (train-heads) and RUN_DIR/finetune.json (finetune), merged."""
    path = Path(run_dir) / "metrics.json"
    tuned = Path(run_dir) / "finetune.json"
    if not path.is_file() and not tuned.is_file():
        raise ReportError(
            f"{path}: not found; run `wav2genre train-heads CACHE --out {run_dir}` "
            f"(or `wav2genre finetune DATA --out {run_dir}`) first"
        )
    if not path.is_file():
        return _finetune_only(json.loads(tuned.read_text()))
    metrics = json.loads(path.read_text())
    if tuned.is_file():
        ft = json.loads(tuned.read_text())
        metrics["results"] = metrics["results"] + ft["results"]
        metrics["finetune"] = _finetune_summary(ft, _cache_split_digest(metrics.get("cache")))
    return metrics


def _finetune_only(ft: dict) -> dict:
    """A run folder that only fine-tuned: its row is the best, the header comes from finetune.json."""
    rows = [{**r, "best_overall": True} for r in ft["results"]]
    return {
        "backbone": ft["backbone"],
        "untrained_backbone": ft.get("untrained_backbone", False),
        "feature_sets": [ENCODER],
        "labels": ft["labels"],
        "selected_on": rows[0]["selected_on"],
        "counts": ft["counts"],
        "results": rows,
        "finetune": _finetune_summary(ft, None),
    }


def _finetune_summary(ft: dict, frozen_digest: str | None) -> dict:
    """What the report says of the fine-tuning: curve, speed, memory, and whether the split matches."""
    return {
        "split_matches": None if frozen_digest is None else frozen_digest == ft.get("split_digest"),
        "history": ft.get("history", []),
        "seconds_per_epoch": ft.get("seconds_per_epoch"),
        "memory": ft.get("memory"),
        "device": ft.get("device"),
        "precision": ft.get("precision"),
        "backbone": ft.get("backbone"),
    }


def _cache_split_digest(cache_path: str | None) -> str | None:
    """The split digest of the cache the frozen heads were trained on, if it is still there."""
    if not cache_path or not Path(cache_path).is_file():
        return None
    from .cache import EmbeddingCache
    from .datasets import split_digest

    tracks = EmbeddingCache(cache_path).tracks
    return split_digest(list(zip(tracks["track_id"], tracks["split"], strict=True)))


def comparison_table(metrics: dict) -> pd.DataFrame:
    """One row per head x layer x feature set, best first by the selection score."""
    rows = []
    for r in metrics["results"]:
        rows.append(
            {
                "best": "*" if r.get("best_overall") else "",
                "encoder": _encoder_cell(r),
                "feature_set": r["feature_set"],
                "head": r["head"],
                "layer": "weighted" if r["layer"] == -1 else r["layer"],
                "augmented": {True: "yes", False: "no"}.get(r.get("augmented"), "-"),
                "track_accuracy": r["test"]["track"]["accuracy"],
                "track_macro_f1": r["test"]["track"]["macro_f1"],
                "track_macro_auc": r["test"]["track"]["macro_auc"],
                "segment_accuracy": r["test"]["segment"]["accuracy"],
                "valid_track_accuracy": (r.get("valid") or {}).get("accuracy"),
                "fit_seconds": r["fit_seconds"],
            }
        )
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(
        ["valid_track_accuracy", "track_accuracy"],
        ascending=False,
        na_position="last",
        kind="stable",
    ).reset_index(drop=True)


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


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """Write comparison.{md,csv,json} and the figures into RUN_DIR; return what was written."""
    run_dir = Path(run_dir)
    metrics = load_metrics(run_dir)
    table = comparison_table(metrics)
    written = {}
    table.to_csv(run_dir / "comparison.csv", index=False)
    written["csv"] = run_dir / "comparison.csv"
    (run_dir / "comparison.json").write_text(
        json.dumps(json.loads(table.to_json(orient="records")), indent=1)
    )
    written["json"] = run_dir / "comparison.json"
    (run_dir / "comparison.md").write_text(markdown(table, metrics))
    written["md"] = run_dir / "comparison.md"
    written.update(draw_figures(metrics, run_dir))
    return written


def markdown(table: pd.DataFrame, metrics: dict) -> str:
    """The comparison as a Markdown document with a short header on how it was made."""
    lines = ["# Model comparison", ""]
    counts = metrics["counts"]
    lines.append(
        f"Backbone `{metrics['backbone']}`, feature sets `{', '.join(metrics['feature_sets'])}`; tracks: "
        f"{counts['train']} train, {counts['valid']} valid, {counts['test']} test. Metrics are on the "
        f"test split at track level (mean of segment probabilities); layers and hyper-parameters "
        f"were selected on `{metrics['selected_on']}`. `*` marks the selected best model"
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
    lines += _finetune_note(metrics)
    lines += ["", "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    lines += _search_section(metrics)
    return "\n".join(lines) + "\n"


def _finetune_note(metrics: dict) -> list[str]:
    """How the fine-tuned rows were made, and whether they share the frozen rows' split."""
    ft = metrics.get("finetune")
    if not ft:
        return []
    same = {
        True: "They were trained and tested on the same split as the frozen heads.",
        False: "**They were trained on a different split from the frozen heads: compare with care.**",
        None: "",
    }[ft["split_matches"]]
    frozen_from = metrics.get("backbone")
    if frozen_from and frozen_from != ft["backbone"]:
        same = (
            f"**They were fine-tuned from {ft['backbone']}, and the frozen rows embedded with "
            f"{frozen_from}: compare with care.**"
        )
    memory = ft.get("memory") or {}
    gpu = f", peak GPU memory {memory['peak_gpu_mb']:,.0f} MB" if "peak_gpu_mb" in memory else ""
    return [
        "",
        f"Rows marked fine-tuned trained {ft['backbone']} itself from audio (`wav2genre finetune`; "
        f"bundle `bundles/finetuned`, curve `finetune_curve.png`): {ft['seconds_per_epoch']} s "
        f"per epoch on {ft['device']} in {ft['precision']}, peak resident memory "
        f"{memory.get('peak_rss_mb', 0):,.0f} MB{gpu}. {same}".rstrip(),
    ]


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
        "| trial | parameters | valid accuracy | valid macro-F1 | fit seconds |",
        "|---|---|---|---|---|",
    ]
    for i, t in enumerate(r["trials"]):
        lines.append(
            f"| {i} | `{json.dumps(t['params'])}` | {t['valid_accuracy']:.3f} | "
            f"{t['valid_macro_f1']:.3f} | {t['fit_seconds']:.1f} |"
        )
    return lines


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def draw_figures(metrics: dict, run_dir: Path) -> dict[str, Path]:
    """Ablation curve, head comparison, and the best model's confusion matrix and ROC curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = metrics["results"]
    labels = metrics["labels"]
    note = " (untrained backbone)" if metrics.get("untrained_backbone") else ""
    out = {}

    best = next(r for r in results if r.get("best_overall"))
    # The ablation curve: one line per head over the layers of the best model's feature set
    # and augmentation setting (other feature sets have one layer and show in the bar chart).
    curve = [
        r
        for r in results
        if r["feature_set"] == best["feature_set"]
        and r.get("augmented", True) == best.get("augmented", True)
        and r["layer"] >= 0
    ]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for head in dict.fromkeys(r["head"] for r in curve):
        rs = sorted((r for r in curve if r["head"] == head), key=lambda r: r["layer"])
        ax.plot(
            [r["layer"] for r in rs],
            [r["test"]["track"]["accuracy"] for r in rs],
            marker="o",
            label=head,
        )
    ax.axhline(1 / len(labels), color="grey", linestyle=":", label="chance")
    ax.set_xticks(sorted({r["layer"] for r in curve}))
    ax.set(
        xlabel="layer (0 = encoder input, then transformer layers)",
        ylabel="test track accuracy",
        title=f"Accuracy by layer for each head: {_feature_title(best['feature_set'], metrics)}{note}",
        ylim=(0, 1.02),
    )
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    out["ablation"] = _save(fig, run_dir / "accuracy_by_layer.png")

    best_rows = [r for r in results if r.get("best_of_head")]
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(best_rows)), 4.5))
    names = [
        ("fine-tuned" if r.get("fine_tuned") else r["head"])
        + f"\n{r['feature_set']} "
        + ("all layers" if r["layer"] == -1 else f"L{r['layer']}")
        for r in best_rows
    ]
    acc = [r["test"]["track"]["accuracy"] for r in best_rows]
    f1 = [r["test"]["track"]["macro_f1"] for r in best_rows]
    x = np.arange(len(best_rows))
    ax.bar(x - 0.2, acc, 0.4, label="accuracy")
    ax.bar(x + 0.2, f1, 0.4, label="macro-F1")
    ax.set_xticks(x, names)
    ax.set(
        ylabel="test (track level)",
        title=f"Best model of each head and feature set{note}",
        ylim=(0, 1.05),
    )
    ax.legend()
    out["heads"] = _save(fig, run_dir / "model_comparison.png")

    detail = best["test_detail"]
    cm = np.array(detail["confusion"], dtype=float)
    cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(5, 0.55 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i, j] > 0:
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if cm[i, j] > 0.5 else "black",
                )
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title=f"Confusion (row-normalised): {best['head']}, layer {best['layer']}{note}",
    )
    fig.colorbar(im, ax=ax, fraction=0.046)
    out["confusion"] = _save(fig, run_dir / "confusion_matrix.png")

    fig, ax = plt.subplots(figsize=(7, 6))
    for label, curve in detail.get("roc", {}).items():
        auc = detail["auc_per_class"].get(label)
        ax.plot(curve["fpr"], curve["tpr"], label=f"{label} (AUC {auc:.2f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    macro = detail.get("macro_auc")
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"One-vs-rest ROC: {best['head']}, layer {best['layer']}, macro AUC {macro:.2f}{note}"
        if macro is not None
        else "One-vs-rest ROC",
    )
    ax.legend(fontsize=8, loc="lower right")
    out["roc"] = _save(fig, run_dir / "roc_curves.png")

    weighted = [r for r in results if r.get("layer_weights") and r.get("best_of_head")]
    if weighted:
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / len(weighted)
        for i, r in enumerate(weighted):
            w = r["layer_weights"]
            ax.bar(
                np.arange(len(w)) + i * width, w, width, label=f"{r['head']} ({r['feature_set']})"
            )
        ax.axhline(
            1 / len(weighted[0]["layer_weights"]), color="grey", linestyle=":", label="uniform"
        )
        ax.set_xticks(np.arange(len(weighted[0]["layer_weights"])))
        ax.set(
            xlabel="layer", ylabel="learned weight (softmax)", title=f"Learned layer weights{note}"
        )
        ax.legend()
        out["layer_weights"] = _save(fig, run_dir / "layer_weights.png")
    history = (metrics.get("finetune") or {}).get("history")
    if history:
        from .finetune_progress import draw_curve

        out["finetune_curve"] = draw_curve(
            history, run_dir / "finetune_curve.png", metrics["finetune"]["backbone"]
        )
    return out


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _feature_title(feature_set: str, metrics: dict) -> str:
    """The encoder's feature set is named after the backbone that made it (Whisper, ...)."""
    backbone = metrics.get("backbone")
    if feature_set_name(feature_set) == ENCODER and backbone and backbone != "none":
        return f"{backbone} layers"
    return feature_set
