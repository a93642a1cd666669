"""The error a child process only logged: vLLM starts its engine core (and on its CPU build a worker)
in processes of their own; when one fails to start, the parent raises "Engine core initialization
failed. See root cause above", and the root cause is a traceback those processes logged (vLLM's
logger writes to standard output, Python's tracebacks to standard error). :class:`OutputTap`
passes file descriptors 1 and 2 through pipes while an engine starts, so that every line still
reaches where it went and the last lines are kept; :func:`root_cause` reads the first exception
in them that is not a wrapper of another."""

from __future__ import annotations

import collections
import os
import threading
import time
from types import TracebackType

from molal_ray.exceptions import exceptions_in


def root_cause(lines: list[str]) -> str | None:
    """``Type: message`` of the first exception in ``lines`` that is not a wrapper's pointer to
    another (:func:`~molal_ray.exceptions.exceptions_in`); None when there is none."""
    found = exceptions_in(lines)
    return found[0] if found else None


class OutputTap:
    """While the ``with`` block runs, each of ``fds`` (standard output and error) is a pipe that a
    thread forwards to where it went before, keeping the last ``keep`` lines of all of them
    (:meth:`lines`). Child processes started inside inherit the pipes and keep writing to them
    after the block: the threads forward for as long as any writer lives, so their output is never
    blocked or lost."""

    def __init__(self, fds: tuple[int, ...] = (1, 2), keep: int = 2000) -> None:
        self.fds = fds
        self.kept: collections.deque[str] = collections.deque(maxlen=keep)
        self._saved: dict[int, int] = {}
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def __enter__(self) -> OutputTap:
        for fd in self.fds:
            read_fd, write_fd = os.pipe()
            self._saved[fd] = os.dup(fd)
            out = os.dup(self._saved[fd])  # the thread's own copy: it outlives the block
            os.dup2(write_fd, fd)
            os.close(write_fd)
            threading.Thread(target=self._forward, args=(read_fd, out), daemon=True, name=f"output-tap-{fd}").start()
        return self

    def _forward(self, read_fd: int, out: int) -> None:
        pending = b""
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                try:
                    os.write(out, chunk)
                except OSError:
                    pass  # where it went is gone: keep reading, so that writers never block
                pending += chunk
                *done, pending = pending.split(b"\n")
                with self._lock:
                    self.kept.extend(d.decode("utf-8", "replace") for d in done)
                    self._last = time.monotonic()
        if pending:
            with self._lock:
                self.kept.append(pending.decode("utf-8", "replace"))
        os.close(out)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)  # this process writes where it did again; children keep the pipes
            os.close(saved)
        self._saved = {}

    def lines(self, settle_s: float = 0.3, at_most_s: float = 3.0) -> list[str]:
        """The lines kept, once nothing new has come for ``settle_s`` (a child that just failed may
        still be writing its traceback), waiting at most ``at_most_s``."""
        t0 = time.monotonic()
        while time.monotonic() - self._last < settle_s and time.monotonic() - t0 < at_most_s:
            time.sleep(0.05)
        with self._lock:
            return list(self.kept)
