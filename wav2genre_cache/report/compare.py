"""`compare`: a training run's model-comparison table (Markdown, CSV, JSON) and figures (PNG)."""

from __future__ import annotations

import json
from pathlib import Path

from wav2genre_cache.errors import ReportError
from wav2genre_cache.feature_sets import ENCODER
from wav2genre_cache.report.figures import draw_figures, figure_notes
from wav2genre_cache.report.html import write_html
from wav2genre_cache.report.tables import comparison_table, write_tables


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """Write comparison.{md,csv,json}, the figures and report.html (all of it in one page) into
    RUN_DIR; return what was written."""
    run_dir = Path(run_dir)
    metrics = load_metrics(run_dir)
    figures = draw_figures(metrics, run_dir)
    written = write_tables(
        comparison_table(metrics), metrics, run_dir, figures, figure_notes(metrics)
    )
    written["html"] = write_html(written["md"].read_text(), run_dir)
    return written | figures


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
