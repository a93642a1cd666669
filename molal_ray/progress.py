"""Progress display of a label run: rich bars on a terminal, a line every few seconds elsewhere."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class LabelProgress:
    """Callable progress sink: ``(rows written per annotator, rows expected per annotator)``."""

    def __init__(self, console: Console | None = None, log_every_s: float = 10.0) -> None:
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self.log_every_s = log_every_s
        self.t0 = time.monotonic()
        self._last_log = 0.0
        self._tasks: dict[str, int] = {}
        self._progress = Progress(
            TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>9} rows/s"), TimeElapsedColumn(),
            console=self.console, transient=False) if self.live else None

    def __enter__(self) -> "LabelProgress":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, written: dict[str, int], total: int) -> None:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        if self._progress is not None:
            for name, rows in written.items():
                if name not in self._tasks:
                    self._tasks[name] = self._progress.add_task(name, total=total, rate="0.0")
                self._progress.update(self._tasks[name], completed=rows, total=total,
                                      rate=f"{rows / elapsed:.1f}")
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_every_s:
            self._last_log = now
            done = sum(written.values())
            parts = " ".join(f"{k}={v}" for k, v in written.items())
            print(f"[label] {done} rows written ({done / elapsed:.1f} rows/s) of {total} per annotator: {parts}",
                  file=sys.stderr, flush=True)
