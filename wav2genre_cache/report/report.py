"""`compare`: a training run's model-comparison table (Markdown, CSV, JSON) and figures (PNG)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from wav2genre_cache.errors import ReportError
from wav2genre_cache.feature_sets import ENCODER, feature_set_name

# Which model a row is, then its figures, then its calibration and cost.
_ROW = ["best", "encoder", "feature_set", "head", "layer", "augmented"]
_CALIBRATION_AND_COST = ["ece_before", "ece_after", "fit_seconds"]
COLUMNS = [
    *_ROW,
    "track_accuracy",
    "track_macro_f1",
    "track_macro_auc",
    "segment_accuracy",
    "valid_track_accuracy",
    *_CALIBRATION_AND_COST,
]
# A tagger's table: ranked by macro PR-AUC (the MTG-Jamendo convention), with micro-F1 at the
# tags' thresholds; its "accuracy" is exact-match accuracy.
TAG_COLUMNS = [
    *_ROW,
    "track_macro_pr_auc",
    "track_macro_auc",
    "track_micro_f1",
    "track_macro_f1",
    "valid_track_macro_pr_auc",
    *_CALIBRATION_AND_COST,
]


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
    from wav2genre_cache.data.splits import split_digest
    from wav2genre_cache.store.cache import EmbeddingCache

    tracks = EmbeddingCache(cache_path).tracks
    return split_digest(list(zip(tracks["track_id"], tracks["split"], strict=True)))


def comparison_table(metrics: dict) -> pd.DataFrame:
    """One row per head x layer x feature set, best first by the selection score."""
    tags = bool(metrics.get("multi_label"))
    rows = []
    for r in metrics["results"]:
        track = r["test"]["track"]
        calibration = r.get("calibration") or {}
        row = {
            "best": "*" if r.get("best_overall") else "",
            "encoder": _encoder_cell(r),
            "feature_set": r["feature_set"],
            "head": r["head"],
            "layer": "weighted" if r["layer"] == -1 else r["layer"],
            "augmented": {True: "yes", False: "no"}.get(r.get("augmented"), "-"),
            "track_accuracy": track["accuracy"],
            "track_macro_f1": track["macro_f1"],
            "track_macro_auc": track["macro_auc"],
            "track_macro_pr_auc": track.get("macro_pr_auc"),
            "track_micro_f1": track.get("micro_f1"),
            "segment_accuracy": r["test"]["segment"]["accuracy"],
            "valid_track_accuracy": (r.get("valid") or {}).get("accuracy"),
            "valid_track_macro_pr_auc": (r.get("valid") or {}).get("macro_pr_auc"),
            "ece_before": calibration.get("ece_before"),
            "ece_after": calibration.get("ece_after"),
            "fit_seconds": r["fit_seconds"],
        }
        rows.append(row)
    df = pd.DataFrame(rows, columns=TAG_COLUMNS if tags else COLUMNS)
    rank = (
        ["valid_track_macro_pr_auc", "track_macro_pr_auc"]
        if tags
        else ["valid_track_accuracy", "track_accuracy"]
    )
    return df.sort_values(rank, ascending=False, na_position="last", kind="stable").reset_index(
        drop=True
    )


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
    lines += _data_notes(metrics)
    lines += _finetune_note(metrics)
    lines += ["", "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    lines += _per_source_section(metrics)
    lines += _search_section(metrics)
    return "\n".join(lines) + "\n"


def _data_notes(metrics: dict) -> list[str]:
    """What the data was: tags and how they are scored, sources, duplicates, calibration."""
    lines = []
    if metrics.get("multi_label"):
        lines += [
            "",
            f"Multi-label run ({len(metrics['labels'])} tags): rows are ranked by macro PR-AUC "
            "over tags (mean average precision, the MTG-Jamendo convention); F1 is at each "
            "tag's threshold chosen on validation; `accuracy` there is exact-match accuracy.",
        ]
    if metrics.get("calibration") and metrics["calibration"] != "none":
        lines += [
            "",
            f"Scores are calibrated on validation (`--calibration {metrics['calibration']}`"
            + (
                ": temperature scaling; for tags, isotonic regression with 1,000+ validation tracks"
                if metrics["calibration"] == "auto"
                else ""
            )
            + "); `ece_before` / `ece_after` are the expected calibration error of the test "
            "tracks before and after (15 bins; for tags, over every track and tag; with few "
            "test tracks it is a noisy estimate).",
        ]
    sources = [s for s in metrics.get("sources", []) if s]
    if len(sources) > 1:
        lines += ["", f"Datasets: {', '.join(sources)} (per-dataset figures below the table)."]
    for note in metrics.get("notes", []):
        lines += ["", f"Note: {note}."]
    return lines


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
            lines.append(
                f"| {r['head']} | {r['feature_set']} | {layer} | {source or '-'} | "
                + " | ".join(cells)
                + " |"
            )
    return lines


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
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def draw_figures(metrics: dict, run_dir: Path) -> dict[str, Path]:
    """Ablation curve, head comparison, the best model's confusion and ROC (a tagger's per-tag
    AUC and tag errors), and its reliability before and after calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = metrics["results"]
    labels = metrics["labels"]
    note = " (untrained backbone)" if metrics.get("untrained_backbone") else ""
    tags = bool(metrics.get("multi_label"))
    # What the curves and bars show: accuracy, or for taggers macro PR-AUC (whose chance level
    # is each tag's share of the test tracks, averaged).
    primary, primary_name = ("macro_pr_auc", "macro PR-AUC") if tags else ("accuracy", "accuracy")
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
            [_num(r["test"]["track"][primary]) for r in rs],
            marker="o",
            label=head,
        )
    ax.axhline(_chance(best, labels, tags), color="grey", linestyle=":", label="chance")
    ax.set_xticks(sorted({r["layer"] for r in curve}))
    ax.set(
        xlabel="layer (0 = encoder input, then transformer layers)",
        ylabel=f"test track {primary_name}",
        # Only the first letter raised: str.capitalize would lower "PR-AUC" to "pr-auc".
        title=f"{primary_name[0].upper()}{primary_name[1:]} by layer for each head: "
        f"{_feature_title(best['feature_set'], metrics)}{note}",
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
    second, second_name = ("macro_auc", "macro ROC-AUC") if tags else ("macro_f1", "macro-F1")
    first_bars = [_num(r["test"]["track"][primary]) for r in best_rows]
    second_bars = [_num(r["test"]["track"][second]) for r in best_rows]
    x = np.arange(len(best_rows))
    ax.bar(x - 0.2, first_bars, 0.4, label=primary_name)
    ax.bar(x + 0.2, second_bars, 0.4, label=second_name)
    ax.set_xticks(x, names)
    ax.set(
        ylabel="test (track level)",
        title=f"Best model of each head and feature set{note}",
        ylim=(0, 1.05),
    )
    ax.legend()
    out["heads"] = _save(fig, run_dir / "model_comparison.png")

    detail = best["test_detail"]
    if tags:
        out["tag_auc"] = _tag_auc_figure(detail, best, labels, note, run_dir)
        out["tag_errors"] = _tag_errors_figure(detail, best, labels, note, run_dir)
    else:
        out.update(_confusion_and_roc(detail, best, labels, note, run_dir))
    if detail.get("reliability"):
        out["reliability"] = _reliability_figure(detail["reliability"], best, tags, note, run_dir)
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
        from wav2genre_cache.evaluation.plots import draw_curve

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


def _num(value) -> float:
    """A figure from metrics.json as a float: undefined ones (null there) are NaN."""
    return float("nan") if value is None else float(value)


def _chance(best: dict, labels: list[str], tags: bool) -> float:
    """The chance level of the plotted figure: 1/classes, or a tagger's mean tag frequency."""
    if not tags:
        return 1 / len(labels)
    y = np.asarray(best.get("test_detail", {}).get("y_true", []), dtype=float)
    return float(y.mean()) if y.size else 0.0


def _confusion_and_roc(detail: dict, best: dict, labels: list[str], note: str, run_dir: Path):
    """A single-label model's confusion matrix and one-vs-rest ROC curves."""
    import matplotlib.pyplot as plt

    out = {}
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

    return out


def _tag_auc_figure(detail: dict, best: dict, labels: list[str], note: str, run_dir: Path):
    """Per-tag ROC-AUC and PR-AUC bars of a tagger, sorted by PR-AUC."""
    import matplotlib.pyplot as plt

    pr = {t: _num(v) for t, v in detail.get("pr_auc_per_class", {}).items()}
    roc = {t: _num(v) for t, v in detail.get("auc_per_class", {}).items()}
    scored = [t for t in labels if t in pr and not np.isnan(pr[t])]
    scored.sort(key=lambda t: -pr[t])
    fig, ax = plt.subplots(figsize=(max(7, 0.35 * len(scored) + 3), 4.8))
    x = np.arange(len(scored))
    ax.bar(x - 0.2, [pr[t] for t in scored], 0.4, label="PR-AUC")
    ax.bar(x + 0.2, [roc.get(t, np.nan) for t in scored], 0.4, label="ROC-AUC")
    ax.set_xticks(x, scored, rotation=60, ha="right", fontsize=8)
    ax.set(
        ylabel="test (track level)",
        ylim=(0, 1.05),
        title=f"Per-tag AUC: {best['head']}, layer {best['layer']}, macro PR-AUC "
        f"{_num(detail['macro_pr_auc']):.2f}, ROC-AUC {_num(detail['macro_auc']):.2f}{note}",
    )
    ax.legend()
    return _save(fig, run_dir / "tag_auc.png")


def _tag_errors_figure(detail: dict, best: dict, labels: list[str], note: str, run_dir: Path):
    """Which tags are mistaken for which: rows the true tag, columns the tag wrongly added
    (the diagonal: the tag missed), counts of test tracks."""
    import matplotlib.pyplot as plt

    cm = np.array(detail["cooccurrence_errors"], dtype=float)
    size = max(5, 0.4 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(cm, cmap="Reds")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set(
        xlabel="tag predicted but absent (diagonal: the tag missed)",
        ylabel="a true tag of the track",
        title=f"Tag errors by co-occurrence: {best['head']}, layer {best['layer']}{note}",
    )
    fig.colorbar(im, ax=ax, fraction=0.046, label="test tracks")
    return _save(fig, run_dir / "tag_errors.png")


def _reliability_figure(curves: dict, best: dict, tags: bool, note: str, run_dir: Path):
    """Reliability diagram of the best model's test tracks, before and after calibration."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for when, style in (("before", "o--"), ("after", "s-")):
        bins = curves[when]
        points = [
            (c, a)
            for c, a, n in zip(bins["confidence"], bins["accuracy"], bins["count"], strict=True)
            if n
        ]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=f"{when} (ECE {bins['ece']:.3f})")
    ax.set(
        xlabel="score (tag probability)" if tags else "confidence (top label's probability)",
        ylabel="fraction that is right",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"Reliability before and after calibration: {best['head']}{note}",
    )
    ax.legend(loc="upper left")
    return _save(fig, run_dir / "reliability.png")
