"""A quiet console for the command line: Ray's own chatter goes to the run's log file.

Without ``-v`` a healthy run prints only our progress and results. Three things keep Ray quiet:
its Python loggers in the driver are set to WARNING (:func:`quiet_ray_loggers`); lines that Ray
forwards to the driver from other processes (``(raylet) ...`` start-up notices such as "N worker
processes have been started", ``(pid=...)`` worker output) are written to the log file instead
of the terminal (:func:`forwarded_lines_to`); and the log lines Ray's C++ core writes straight to
the process's standard error (``[date time E pid tid] core_worker.cc:NNN: ...``, such as the
notice that Ray Data's restartable actors keep their arguments in the object store), which no
Python stream sees, are taken off the terminal too (:func:`drop_native_log_lines`; Ray's own
session log keeps them). ``-v`` shows everything.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

RAY_LOGGERS = ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune", "ray.air", "ray.util")
# Notices about settings we chose on purpose: token authentication on, Ray Data's bars off (ours
# replace them), and Ray Data's own actor restarts (its constructor arguments live in the object
# store; ray-project/ray#53727).
RAY_NOTICES = ("ray._private.authentication.authentication_token_setup", "ray.data._internal.progress")
# Loggers that print, traceback and all, an error the driver then receives as an exception anyway
# (a Ray Data stage that failed); for an error of ours the caller says it once (the command line:
# one line), so :class:`OursSaidOnce` drops their records of it. Ray's own errors still show.
RAY_REPEATS = ("ray.data._internal.execution.streaming_executor_state", "ray.data.exceptions")


class OursSaidOnce(logging.Filter):
    """Drops a record logged while an error of ours is raised or handled (its ``exc_info``, or
    the exception being handled where the record is made)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from molal_ray.exceptions import ours_inside

        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return ours_inside(exc) is None


def said_once() -> None:
    """Install :class:`OursSaidOnce` on Ray Data's loggers that repeat a stage's error (once)."""
    for name in RAY_REPEATS:
        log = logging.getLogger(name)
        if not any(isinstance(f, OursSaidOnce) for f in log.filters):
            log.addFilter(OursSaidOnce())


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FORWARDED = re.compile(r"^(?:\x1b\[[0-9;]*m)*\((?:raylet|autoscaler|gcs_server|(?:\S.*? )?pid=\d+(?:, ip=[^)\s]+)?)\)")


# glog-style lines of Ray's C++ core at INFO, WARNING or ERROR (FATAL ones stay on the terminal).
_NATIVE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [IWE] \d+ \d+\] [\w./-]+\.(?:cc|h):\d+: ")


def is_native_log(line: str) -> bool:
    """Whether a line is a log line of Ray's C++ core (not a fatal one)."""
    return bool(_NATIVE.match(line))


class _Sinks:
    native: IO[str] | None = None  # where :func:`drop_native_log_lines` sends them (the run's log file)
    installed = False


def _pump_native(read_fd: int, terminal_fd: int) -> None:
    """Copy what native code writes to file descriptor 2 to the terminal, except Ray's C++ log
    lines (to the current sink, or dropped). A partial line that cannot be one passes at once
    (a prompt, a progress line)."""
    buf = b""
    while chunk := os.read(read_fd, 65536):
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if is_native_log(line):
                sink = _Sinks.native
                if sink is not None:
                    try:
                        sink.write(line + "\n")
                        sink.flush()
                    except (OSError, ValueError):  # the log file closed meanwhile
                        pass
            else:
                os.write(terminal_fd, raw + b"\n")
        if buf and not buf.startswith(b"["):
            os.write(terminal_fd, buf)
            buf = b""


def drop_native_log_lines() -> None:
    """From now on until the process ends, Ray's C++ log lines (written by native code to file
    descriptor 2, past every Python stream) leave the terminal: file descriptor 2 becomes a pipe
    read by a thread that passes everything else on, and Python's ``sys.stderr`` writes to the
    terminal directly (so that it still looks like one to a progress display). Inside
    :func:`forwarded_lines_to` the lines go to its sink (the run's log file); elsewhere they are
    dropped (Ray's session log has them). Does nothing unless ``sys.stderr`` is the process's
    own standard error (a command run inside a test runner keeps its streams)."""
    if _Sinks.installed:
        return
    try:
        if sys.stderr.fileno() != 2:
            return
        sys.stderr.flush()
        terminal = os.dup(2)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return
    read_fd, write_fd = os.pipe()
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    sys.stderr = open(terminal, "w", buffering=1, encoding=encoding, errors="backslashreplace", closefd=False)  # noqa: SIM115
    os.dup2(write_fd, 2)
    os.close(write_fd)
    threading.Thread(target=_pump_native, args=(read_fd, terminal), name="molal-native-stderr", daemon=True).start()
    _Sinks.installed = True


class _Quiet:
    level: int | None = None  # what quiet_ray_loggers set in this process, if it ran


def quiet_ray_loggers(level: int = logging.WARNING) -> None:
    """Ray's driver-side loggers (they carry their own levels and handlers) at ``level``, and its
    notices about our own settings at ERROR. Ray Data and Serve set their loggers' levels when
    they are imported: Ray Data is imported first; Serve (a third of a second, which a job
    without annotators, such as ``predict``, does not need) is quieted when it is imported, by
    :func:`serve_imported`."""
    import ray.data  # noqa: F401

    _Quiet.level = level
    _set_ray_levels(level)
    # Ray Data's advice when a small pool gives an actor pool fewer blocks than actors.
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)


def serve_imported() -> None:
    """After ``ray.serve``'s import, which sets its logger's level: the level
    :func:`quiet_ray_loggers` set in this process again (nothing when it did not run)."""
    if _Quiet.level is not None:
        _set_ray_levels(_Quiet.level)


def _set_ray_levels(level: int) -> None:
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for name in RAY_NOTICES:
        logging.getLogger(name).setLevel(max(level, logging.ERROR))


def is_forwarded(line: str) -> bool:
    """Whether a line is one Ray forwards from another process (raylet, a worker, an actor)."""
    return bool(_FORWARDED.match(line))


class _Router:
    """A text stream that passes lines through, except Ray's forwarded lines, which go to ``sink``."""

    def __init__(self, stream: IO[str], sink: IO[str] | None) -> None:
        self._stream = stream
        self._sink = sink
        self._buf = ""

    def write(self, s: str) -> int:
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if is_forwarded(line):
                if self._sink is not None:
                    self._sink.write(_ANSI.sub("", line) + "\n")
                    self._sink.flush()
            else:
                self._stream.write(line + "\n")
        return len(s)

    def flush(self) -> None:
        if self._buf and not is_forwarded(self._buf):
            self._stream.write(self._buf)
            self._buf = ""
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def forwarded_lines_to(sink: IO[str] | None, enabled: bool = True) -> Iterator[None]:
    """While inside, Ray's forwarded lines on stdout and stderr go to ``sink`` (None: dropped),
    and so do its C++ log lines once :func:`drop_native_log_lines` is on."""
    if not enabled:
        yield
        return
    saved = sys.stdout, sys.stderr
    saved_native = _Sinks.native
    sys.stdout, sys.stderr = _Router(sys.stdout, sink), _Router(sys.stderr, sink)
    _Sinks.native = sink
    try:
        yield
    finally:
        for s in (sys.stdout, sys.stderr):
            s.flush()
        sys.stdout, sys.stderr = saved
        _Sinks.native = saved_native


def drop_forwarded_lines() -> None:
    """From now on until the process ends, Ray's forwarded lines are dropped from stdout and
    stderr: what Ray prints while it shuts down at exit (its deduplicated warnings) stays off the
    console of a quiet command (Ray's own log files keep them)."""
    if not isinstance(sys.stdout, _Router):
        sys.stdout = _Router(sys.stdout, None)
    if not isinstance(sys.stderr, _Router):
        sys.stderr = _Router(sys.stderr, None)


@contextmanager
def log_file(path: str | None, verbose: bool) -> Iterator[IO[str] | None]:
    """Our loggers and Ray's at INFO into ``path`` (when given) for the command's duration; the
    console keeps WARNING (INFO with ``verbose``)."""
    if path is None:
        yield None
        return
    import os

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in root.handlers:  # the console's handlers keep the console's level
        if not isinstance(h, logging.FileHandler):
            h.setLevel(logging.INFO if verbose else logging.WARNING)
    root.addHandler(handler)
    saved = root.level
    root.setLevel(logging.INFO)
    try:
        yield handler.stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
        handler.close()
