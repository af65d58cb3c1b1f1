"""What a person watching `finetune` sees: a progress bar per step, and the training curve."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


class EpochBar:
    """A progress bar over every optimizer step: epoch, step, loss, segments per second, time left."""

    def __init__(self, console: Console, epochs: int, total: int, done: int, enabled: bool = True):
        self.epochs = epochs
        self.progress = Progress(
            TextColumn("[bold]fine-tune[/bold] epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} segments/s"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self.task = self.progress.add_task(
            "fine-tune", total=total, completed=done, epoch=1, epochs=epochs, loss="-", rate="-"
        )
        self._epoch = -1
        self._since = 0.0

    def __enter__(self) -> EpochBar:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def step(self, epoch: int, loss: float, segments: int) -> None:
        """One optimizer step done: the epoch's running loss and its segments so far."""
        import time

        if epoch != self._epoch:  # a new epoch: its rate is measured from here
            self._epoch, self._since = epoch, time.perf_counter()
        rate = segments / max(time.perf_counter() - self._since, 1e-9)
        self.progress.update(
            self.task, advance=1, epoch=epoch + 1, loss=f"{loss:.4f}", rate=f"{rate:.1f}"
        )


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
