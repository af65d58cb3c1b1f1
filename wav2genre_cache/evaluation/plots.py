"""Figures drawn in more than one place (matplotlib lives here and in report/ only)."""

from __future__ import annotations

from pathlib import Path


def draw_curve(history: list[dict], path: Path, model: str) -> Path:
    """Training loss and validation track accuracy per epoch, the best epoch marked: a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(
        epochs, [h["train_loss"] for h in history], marker="o", color="tab:red", label="train loss"
    )
    ax.set(xlabel="epoch", ylabel="training loss (cross-entropy)")
    ax.set_xticks(epochs)
    lines = ax.get_legend_handles_labels()
    if any("valid_track_accuracy" in h for h in history):
        ax2 = ax.twinx()
        acc = [h.get("valid_track_accuracy") for h in history]
        ax2.plot(epochs, acc, marker="s", color="tab:blue", label="validation track accuracy")
        best = [h["epoch"] for h in history if h.get("best")]
        if best:
            b = best[-1]
            ax2.plot(
                [b],
                [acc[epochs.index(b)]],
                marker="*",
                markersize=16,
                color="gold",
                markeredgecolor="black",
                linestyle="none",
                label=f"best (epoch {b})",
            )
        ax2.set(ylabel="validation track accuracy", ylim=(0, 1.02))
        more = ax2.get_legend_handles_labels()
        lines = (lines[0] + more[0], lines[1] + more[1])
    ax.legend(*lines, loc="best")
    ax.set_title(f"Fine-tuning {model}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
