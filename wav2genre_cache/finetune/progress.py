"""What a person watching `finetune` sees: a progress bar per optimizer step."""

from __future__ import annotations

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
