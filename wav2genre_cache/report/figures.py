"""`compare`'s figures (PNG): ablation curve, head comparison, the best model's confusion and ROC
(a tagger's per-tag AUC and tag errors), reliability, learned layer weights, fine-tuning curve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wav2genre_cache.evaluation.plots import draw_curve
from wav2genre_cache.feature_sets import ENCODER, feature_set_name


@dataclass(frozen=True)
class _Run:
    """What every figure of one run reads."""

    metrics: dict  # the run's merged metrics (compare.load_metrics)
    run_dir: Path  # where the PNGs are written
    best: dict  # the result row of the selected best model
    tags: bool  # a multi-label run: macro PR-AUC and per-tag figures
    note: str  # appended to every title: the number of test tracks, an untrained backbone

    @classmethod
    def of(cls, metrics: dict, run_dir: Path) -> _Run:
        best = next(r for r in metrics["results"] if r.get("best_overall"))
        n = best["test"]["track"].get("n")
        notes = [f"n = {n} test tracks"] if n is not None else []
        notes += ["untrained backbone"] if metrics.get("untrained_backbone") else []
        return cls(
            metrics=metrics,
            run_dir=run_dir,
            best=best,
            tags=bool(metrics.get("multi_label")),
            note=f" ({', '.join(notes)})" if notes else "",
        )

    @property
    def labels(self) -> list[str]:
        return self.metrics["labels"]

    @property
    def detail(self) -> dict:
        return self.best["test_detail"]

    @property
    def primary(self) -> tuple[str, str]:
        """The figure the curves and bars show, and its name: accuracy, or for taggers macro
        PR-AUC (whose chance level is each tag's share of the test tracks, averaged)."""
        return ("macro_pr_auc", "macro PR-AUC") if self.tags else ("accuracy", "accuracy")

    @property
    def best_model(self) -> str:
        return f"{self.best['head']}, layer {self.best['layer']}"


# Each figure's file, by the name draw_figures and figure_notes give it.
FIGURE_FILES = {
    "ablation": "accuracy_by_layer.png",
    "heads": "model_comparison.png",
    "confusion": "confusion_matrix.png",
    "roc": "roc_curves.png",
    "tag_auc": "tag_auc.png",
    "tag_errors": "tag_errors.png",
    "reliability": "reliability.png",
    "layer_weights": "layer_weights.png",
    "finetune_curve": "finetune_curve.png",
}


def figure_notes(metrics: dict) -> dict[str, str]:
    """The figures that would carry no information, each with the sentence said instead."""
    run = _Run.of(metrics, Path("."))
    notes = {}
    layers = {r["layer"] for r in _ablation_rows(run)}
    if len(layers) < 2:
        notes["ablation"] = (
            f"No accuracy-by-layer figure: the run trained on {len(layers)} layer(s) of its "
            "feature set, so there is no curve over layers to draw."
        )
    n = run.best["test"]["track"].get("n")
    aucs = [_num(v) for v in run.detail.get("auc_per_class", {}).values()]
    kind, what = ("tag_auc", "tag") if run.tags else ("roc", "label")
    if run.tags:
        aucs += [_num(v) for v in run.detail.get("pr_auc_per_class", {}).values()]
    if not aucs:
        notes[kind] = f"No {what} AUC figure: no {what} has both kinds of test track."
    elif all(a == 1.0 for a in aucs):
        notes[kind] = (
            f"No {what} AUC figure: every {what} in test ranks its {n} test tracks perfectly "
            "(AUC 1.00): the curves would all be one corner, and with so few tracks that says "
            "little beyond the table's figures."
        )
    return notes


def draw_figures(metrics: dict, run_dir: Path) -> dict[str, Path]:
    """Ablation curve, head comparison, the best model's confusion and ROC (a tagger's per-tag
    AUC and tag errors), and its reliability before and after calibration; a figure that
    figure_notes finds empty is not drawn (and an earlier file of it is removed)."""
    run = _Run.of(metrics, Path(run_dir))
    skip = figure_notes(metrics)
    for name in skip:
        (run.run_dir / FIGURE_FILES[name]).unlink(missing_ok=True)
    out = {"heads": _heads_figure(run)}
    if "ablation" not in skip:
        out["ablation"] = _ablation_figure(run)
    if run.tags:
        if "tag_auc" not in skip:
            out["tag_auc"] = _tag_auc_figure(run)
        out["tag_errors"] = _tag_errors_figure(run)
    else:
        out["confusion"] = _confusion_figure(run)
        if "roc" not in skip:
            out["roc"] = _roc_figure(run)
    if run.detail.get("reliability"):
        out["reliability"] = _reliability_figure(run)
    weighted = [r for r in metrics["results"] if r.get("layer_weights") and r.get("best_of_head")]
    if weighted:
        out["layer_weights"] = _layer_weights_figure(weighted, run)
    history = (metrics.get("finetune") or {}).get("history")
    if history:
        out["finetune_curve"] = draw_curve(
            history, run.run_dir / "finetune_curve.png", metrics["finetune"]["backbone"]
        )
    return out


def _ablation_figure(run: _Run) -> Path:
    """One line per head over the layers of the best model's feature set and augmentation
    setting (other feature sets have one layer and show in the bar chart)."""
    best = run.best
    primary, primary_name = run.primary
    curve = _ablation_rows(run)
    fig, ax = _pyplot().subplots(figsize=(8, 4.5))
    for head in dict.fromkeys(r["head"] for r in curve):
        rs = sorted((r for r in curve if r["head"] == head), key=lambda r: r["layer"])
        ax.plot(
            [r["layer"] for r in rs],
            [_num(r["test"]["track"][primary]) for r in rs],
            marker="o",
            label=head,
        )
    ax.axhline(_chance(best, run.labels, run.tags), color="grey", linestyle=":", label="chance")
    ax.set_xticks(sorted({r["layer"] for r in curve}))
    ax.set(
        xlabel="layer (0 = encoder input, then transformer layers)",
        ylabel=f"test track {primary_name}",
        # Only the first letter raised: str.capitalize would lower "PR-AUC" to "pr-auc".
        title=f"{primary_name[0].upper()}{primary_name[1:]} by layer for each head: "
        f"{_feature_title(best['feature_set'], run.metrics)}{run.note}",
        ylim=(0, 1.02),
    )
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, run.run_dir / "accuracy_by_layer.png")


def _ablation_rows(run: _Run) -> list[dict]:
    """The rows of the best model's feature set and augmentation setting, on one layer each."""
    best = run.best
    return [
        r
        for r in run.metrics["results"]
        if r["feature_set"] == best["feature_set"]
        and r.get("augmented", True) == best.get("augmented", True)
        and r["layer"] >= 0
    ]


def _heads_figure(run: _Run) -> Path:
    """Two bars (the primary figure and a second) for the best model of each head."""
    best_rows = [r for r in run.metrics["results"] if r.get("best_of_head")]
    fig, ax = _pyplot().subplots(figsize=(max(7, 1.3 * len(best_rows)), 4.5))
    names = [
        ("fine-tuned" if r.get("fine_tuned") else r["head"])
        + f"\n{r['feature_set']} "
        + ("all layers" if r["layer"] == -1 else f"L{r['layer']}")
        for r in best_rows
    ]
    primary, primary_name = run.primary
    second, second_name = ("macro_auc", "macro ROC-AUC") if run.tags else ("macro_f1", "macro-F1")
    x = np.arange(len(best_rows))
    values = [_num(r["test"]["track"][primary]) for r in best_rows]
    ax.bar(x - 0.2, values, 0.4, label=primary_name, yerr=_error_bars(best_rows, primary, values))
    ax.bar(x + 0.2, [_num(r["test"]["track"][second]) for r in best_rows], 0.4, label=second_name)
    ax.set_xticks(x, names)
    ax.set(
        ylabel="test (track level; bars: 95 % interval)",
        title=f"Best model of each head and feature set{run.note}",
        ylim=(0, 1.2),  # a band above 1 for the legend: it never covers a bar or an interval
    )
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.legend(loc="upper center", ncol=2)
    return _save(fig, run.run_dir / "model_comparison.png")


def _error_bars(rows: list[dict], figure: str, values: list[float]) -> np.ndarray | None:
    """[2, rows] distances from each value down and up to its 95 % interval (None if none)."""
    intervals = [r["test"]["track"].get(f"{figure}_ci") for r in rows]
    if any(ci is None for ci in intervals):
        return None
    low, high = np.array(intervals, dtype=float).T
    return np.clip(np.stack([np.array(values) - low, high - np.array(values)]), 0, None)


def _layer_weights_figure(weighted: list[dict], run: _Run) -> Path:
    """The learned softmax layer weights of each head that weighs every layer."""
    fig, ax = _pyplot().subplots(figsize=(8, 4))
    width = 0.8 / len(weighted)
    for i, r in enumerate(weighted):
        w = r["layer_weights"]
        ax.bar(np.arange(len(w)) + i * width, w, width, label=f"{r['head']} ({r['feature_set']})")
    ax.axhline(1 / len(weighted[0]["layer_weights"]), color="grey", linestyle=":", label="uniform")
    ax.set_xticks(np.arange(len(weighted[0]["layer_weights"])))
    ax.set(
        xlabel="layer", ylabel="learned weight (softmax)", title=f"Learned layer weights{run.note}"
    )
    ax.legend()
    return _save(fig, run.run_dir / "layer_weights.png")


def _pyplot():
    """matplotlib.pyplot on the Agg backend: figures go to files, never to a window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Lay out, write as a 110-dpi PNG and close one figure; return its path."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
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


def _confusion_figure(run: _Run) -> Path:
    """A single-label model's confusion matrix, row-normalised."""
    labels = run.labels
    cm = np.array(run.detail["confusion"], dtype=float)
    cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(5, 0.55 * len(labels) + 2)
    fig, ax = _pyplot().subplots(figsize=(size, size * 0.9))
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
        title=f"Confusion (row-normalised): {run.best_model}{run.note}",
    )
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, run.run_dir / "confusion_matrix.png")


def _roc_figure(run: _Run) -> Path:
    """A single-label model's one-vs-rest ROC curves."""
    detail = run.detail
    fig, ax = _pyplot().subplots(figsize=(7, 6))
    for label, curve in detail.get("roc", {}).items():
        auc = detail["auc_per_class"].get(label)
        ax.plot(curve["fpr"], curve["tpr"], label=f"{label} (AUC {auc:.2f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    macro = detail.get("macro_auc")
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"One-vs-rest ROC: {run.best_model}, macro AUC {macro:.2f}{run.note}"
        if macro is not None
        else "One-vs-rest ROC",
    )
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, run.run_dir / "roc_curves.png")


def _tag_auc_figure(run: _Run) -> Path:
    """Per-tag ROC-AUC and PR-AUC bars of a tagger, sorted by PR-AUC."""
    detail = run.detail
    pr = {t: _num(v) for t, v in detail.get("pr_auc_per_class", {}).items()}
    roc = {t: _num(v) for t, v in detail.get("auc_per_class", {}).items()}
    scored = [t for t in run.labels if t in pr and not np.isnan(pr[t])]
    scored.sort(key=lambda t: -pr[t])
    fig, ax = _pyplot().subplots(figsize=(max(7, 0.35 * len(scored) + 3), 4.8))
    x = np.arange(len(scored))
    ax.bar(x - 0.2, [pr[t] for t in scored], 0.4, label="PR-AUC")
    ax.bar(x + 0.2, [roc.get(t, np.nan) for t in scored], 0.4, label="ROC-AUC")
    ax.set_xticks(x, scored, rotation=60, ha="right", fontsize=8)
    ax.set(
        ylabel="test (track level; bars: 95 % interval)",
        ylim=(0, 1.05),
        title=f"Per-tag AUC: {run.best_model}, macro PR-AUC "
        f"{_num(detail['macro_pr_auc']):.2f}, ROC-AUC {_num(detail['macro_auc']):.2f}{run.note}",
    )
    ax.legend()
    return _save(fig, run.run_dir / "tag_auc.png")


def _tag_errors_figure(run: _Run) -> Path:
    """Which tags are mistaken for which: rows the true tag, columns the tag wrongly added
    (the diagonal: the tag missed), counts of test tracks."""
    labels = run.labels
    cm = np.array(run.detail["cooccurrence_errors"], dtype=float)
    size = max(5, 0.4 * len(labels) + 2)
    fig, ax = _pyplot().subplots(figsize=(size, size * 0.9))
    im = ax.imshow(cm, cmap="Reds")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set(
        xlabel="tag predicted but absent (diagonal: the tag missed)",
        ylabel="a true tag of the track",
        title=f"Tag errors by co-occurrence: {run.best_model}{run.note}",
    )
    fig.colorbar(im, ax=ax, fraction=0.046, label="test tracks")
    return _save(fig, run.run_dir / "tag_errors.png")


def _reliability_figure(run: _Run) -> Path:
    """Reliability diagram of the best model's test tracks, before and after calibration: over
    equal-count bins, each point with its count and 95 % interval (runs from before those bins:
    the 15 equal-width bins of the ECE)."""
    curves, by_count = run.detail["reliability"], run.detail.get("reliability_by_count")
    fig, ax = _pyplot().subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for when, style in (("before", "o--"), ("after", "s-")):
        label = f"{when} (ECE {curves[when]['ece']:.3f})"
        if by_count:
            b = by_count[when]
            acc = np.array(b["accuracy"])
            yerr = [acc - np.array(b["low"]), np.array(b["high"]) - acc]
            low, high = min(b["count"]), max(b["count"])
            size = f"{low}" if low == high else f"{low}-{high}"
            label += f"; {len(acc)} bin{'s' * (len(acc) > 1)} of {size}"
            ax.errorbar(b["confidence"], acc, yerr=yerr, fmt=style, capsize=3, label=label)
            continue
        bins = curves[when]
        points = [
            (c, a)
            for c, a, n in zip(bins["confidence"], bins["accuracy"], bins["count"], strict=True)
            if n
        ]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label)
    ax.set(
        xlabel="score (tag probability)" if run.tags else "confidence (top label's probability)",
        ylabel="fraction that is right"
        + (" (equal-count bins; bars: 95 % interval)" if by_count else ""),
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"Reliability before and after calibration: {run.best['head']}{run.note}",
    )
    ax.legend(loc="upper left")
    return _save(fig, run.run_dir / "reliability.png")
