"""Progress display of a label run: rich bars on a terminal, a line every few seconds elsewhere."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class _Live:
    """A rich display started and stopped as a context (None off a terminal)."""

    _progress: Progress | None = None

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()


class LabelProgress(_Live):
    """Callable progress sink: ``(rows written per annotator, rows expected per annotator)``."""

    def __init__(
        self, console: Console | None = None, log_every_s: float = 10.0, command: str = "label", per: str = "annotator"
    ) -> None:
        self.command, self.per = command, per  # how the line off a terminal names the run and its workers
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self.log_every_s = log_every_s
        self.t0 = time.monotonic()
        self._last_log = 0.0
        self._tasks: dict[str, TaskID] = {}
        self._progress = (
            Progress(
                TextColumn("{task.description:<14}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>9} rows/s"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            if self.live
            else None
        )

    def __call__(self, written: dict[str, int], total: int) -> None:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        if self._progress is not None:
            for name, rows in written.items():
                if name not in self._tasks:
                    self._tasks[name] = self._progress.add_task(name, total=total, rate="0.0")
                self._progress.update(self._tasks[name], completed=rows, total=total, rate=f"{rows / elapsed:.1f}")
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_every_s:
            self._last_log = now
            done = sum(written.values())
            parts = " ".join(f"{k}={v}" for k, v in written.items())
            print(
                f"[{self.command}] {done} rows written ({done / elapsed:.1f} rows/s) of {total} "
                f"per {self.per}: {parts}",
                file=sys.stderr,
                flush=True,
            )


PHASE_NAMES = {
    "query": "choosing queries",
    "annotate": "annotating",
    "aggregate": "aggregating",
    "train": "training",
    "score": "scoring",
}


class LoopProgress(_Live):
    """The loop's display on standard output: on a terminal one live line (round, phase, a bar
    over the rounds, elapsed time) with one printed line per finished round above it; elsewhere
    only the lines."""

    def __init__(self, rounds: int, console: Console | None = None) -> None:
        self.console = console or Console()
        self.rounds = rounds
        self.t0 = time.monotonic()
        self._progress = (
            Progress(
                TextColumn("{task.description:<52}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            if self.console.is_terminal
            else None
        )
        self._task = self._progress.add_task("starting", total=rounds + 1) if self._progress else None

    def phase(self, round_: int | None, name: str) -> None:
        text = name if round_ is None else f"round {round_}/{self.rounds}: {PHASE_NAMES.get(name, name)}"
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=text)
        elif name.startswith("waiting for people"):  # off a terminal too: people's progress is news
            print(text, flush=True)

    def round_done(self, m: dict) -> None:
        ann = "" if m.get("annotation_accuracy") is None else f"  labels acc {m['annotation_accuracy']:.3f}"
        secs = ", ".join(f"{k} {v:.0f}s" for k, v in m.get("phase_s", {}).items() if v >= 0.5)
        line = (
            f"round {m['round']}: labelled {m['n_labeled']}  test acc {m['test_accuracy']:.3f}  "
            f"macro-F1 {m['test_macro_f1']:.3f}{ann}  ({secs}; {m['elapsed_s']:.0f}s in all)"
        )
        if self._progress is not None and self._task is not None:
            self._progress.console.print(line, highlight=False)
            self._progress.advance(self._task)
        else:
            print(line, flush=True)
