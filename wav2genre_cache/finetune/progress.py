"""What a person watching `finetune` sees: a progress bar per optimizer step."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from wav2genre_cache._io import Pace


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
        self._since, self._base = 0.0, 0
        self._plain = Pace() if enabled and not console.is_terminal else None  # a log: lines

    def __enter__(self) -> EpochBar:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def step(self, epoch: int, loss: float, segments: int) -> None:
        """One optimizer step done: the epoch's running loss and its segments so far."""
        import time

        now = time.perf_counter()
        if epoch != self._epoch:
            # A new epoch: its rate is measured from the end of its first step, whose own
            # start the bar does not see (that step alone gave millions of segments/s).
            self._epoch, self._since, self._base = epoch, now, segments
            rate = "-"
        else:
            rate = f"{(segments - self._base) / max(now - self._since, 1e-9):.1f}"
        self.progress.update(self.task, advance=1, epoch=epoch + 1, loss=f"{loss:.4f}", rate=rate)
        task = self.progress.tasks[0]
        if self._plain is not None and self._plain(force=task.completed == task.total):
            self.progress.console.print(
                f"fine-tune: epoch {epoch + 1}/{self.epochs}, step {int(task.completed)}/"
                f"{int(task.total)}, loss {loss:.4f}, {rate} segments/s",
                highlight=False,
            )
