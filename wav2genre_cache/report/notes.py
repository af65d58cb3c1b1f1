"""comparison.md's sentences around the table: how the model was chosen, what n and the
intervals mean, what the data can and cannot say, the fine-tuned rows."""

from __future__ import annotations

import pandas as pd

# Marks in the `best` column: the selected model, and the rows its interval cannot tell apart.
SELECTED, OVERLAPS = "*", "~"


def selection_sentence(metrics: dict) -> str:
    """Which rule chose heads, layers and hyper-parameters, and why."""
    selection = metrics.get("selection")
    if not selection:  # a run written before selection rules
        return f"Layers and hyper-parameters were selected on `{metrics['selected_on']}`."
    text = f"Selection rule `{selection['rule']}`: {selection['reason']}."
    if selection["rule"] == "cv":
        text += (
            " `cv_track_accuracy` is the folds' mean track accuracy and `cv_se` its standard "
            "error; `valid_track_accuracy` is the folds' held-out tracks scored once."
        )
    return text


def intervals_note(table: pd.DataFrame, metrics: dict) -> list[str]:
    """What n and the brackets mean, and what the figures of a small test split can say."""
    n = table["n"].dropna()
    if n.empty:
        return []
    figure = "macro_pr_auc" if metrics.get("multi_label") else "accuracy"
    note = f"`n` is the number of test tracks ({int(n.max())})"
    if table[f"track_{figure}_low"].isna().all():  # a run written before intervals
        return ["", note + "; this run has no intervals (train it again for them)."]
    return [
        "",
        note + "; `[low, high]` is a 95 % interval (Wilson's for accuracy, a seeded bootstrap "
        "over the test tracks within each label for the others; a bootstrap cannot reach beyond "
        "its sample, so a perfect score gets [1.00, 1.00]: read accuracy's interval there). "
        f"`{OVERLAPS}` marks rows whose "
        f"{figure.replace('_', ' ')} interval overlaps the selected model's: this test split "
        "cannot tell them apart. " + independence_note(metrics.get("grouping")),
    ]


def independence_note(grouping: dict | None) -> str:
    """What the intervals assume of the tracks, by what the run knew of their artists."""
    if grouping and grouping.get("by") == "artist" and not grouping.get("test_artists_heard"):
        return (
            f"The split kept each of the {grouping['artists']} artists on one side, so test "
            "tracks are by artists not heard in training. The bootstraps resample test artists, "
            "then their tracks; Wilson's interval counts tracks as independent, and several "
            "tracks of one test artist make it too narrow."
        )
    if grouping and grouping.get("test_artists_heard"):
        return (
            f"{grouping['test_artists_heard']} test artists also have tracks in training or "
            "validation (see the note above): the figures are inflated by artists the model has "
            "heard, and the intervals, which resample artists, are too narrow as well."
        )
    return (
        "The intervals count tracks as independent: tracks of one artist on both sides of the "
        "split (GTZAN's consecutive ids share artists) inflate the figures and narrow the "
        "intervals."
    )


def data_notes(metrics: dict) -> list[str]:
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
            "Scores are calibrated on "
            + (
                "the cross-validation folds' held-out tracks"
                if metrics.get("selected_on") == "cv"
                else "validation"
            )
            + f" (`--calibration {metrics['calibration']}`"
            + (
                ": temperature scaling; for tags, isotonic regression with 1,000+ validation tracks"
                if metrics["calibration"] == "auto"
                else ""
            )
            + "); `ece_before` / `ece_after` are the expected calibration error of the test "
            "tracks before and after (15 bins; for tags, over every track and tag; with few "
            "test tracks it is a noisy estimate).",
        ]
        skipped = [r for r in metrics["results"] if (r.get("calibration") or {}).get("skipped")]
        if skipped:
            lines[-1] += (
                f" Not calibrated ({len(skipped)} of {len(metrics['results'])} rows): "
                f"{skipped[0]['calibration']['skipped']}."
            )
    sources = [s for s in metrics.get("sources", []) if s]
    if len(sources) > 1:
        lines += ["", f"Datasets: {', '.join(sources)} (per-dataset figures below the table)."]
    for note in metrics.get("notes", []):
        lines += ["", f"Note: {note}."]
    return lines


def finetune_note(metrics: dict) -> list[str]:
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
