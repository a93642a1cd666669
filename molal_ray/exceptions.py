"""The project's own exceptions. Messages read: what / got / expected."""

from __future__ import annotations

import re
from collections.abc import Iterable


def one_line(exc: BaseException | str) -> str:
    """A message on one line: another library's multi-line error, or one holding control
    characters from a corrupt file, quoted inside ours."""
    text = " ".join(str(exc).split())
    return "".join(ch if ch.isprintable() else "?" for ch in text) or type(exc).__name__


# An exception as a traceback's last line or a log line names it, after any log prefix:
# ``KeyError: ...``, ``pkg.mod.SomeError: ...``, ``httpx.UnsupportedProtocol: ...``.
_EXCEPTION_LINE = re.compile(
    r"(?:^|[\s\]])(?:(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception|Exit))"  # KeyError, pkg.SomeError
    r"|[a-z_]\w*(?:\.[A-Za-z_]\w*)*\.([A-Z]\w*)"  # httpx.UnsupportedProtocol
    r"): (.+)$"
)
# Messages that point at another error instead of being one (a wrapper's).
_POINTERS = ("traceback (most recent call last)", "see root cause", "see stack trace", "failed core proc")


def exceptions_in(lines: Iterable[str]) -> list[str]:
    """``Type: message`` of each exception that ``lines`` (a traceback, a process's log) name,
    in order, leaving out those whose message only points at another: a chained traceback's last
    is the one raised last, a failed start's first is often its root cause."""
    found = []
    for line in lines:
        m = _EXCEPTION_LINE.search(line.strip())
        if m and not any(p in m.group(3).lower() for p in _POINTERS):
            found.append(f"{m.group(1) or m.group(2)}: {m.group(3).strip()}")
    return found


class MolalError(Exception):
    """Base class of every error molal_ray raises on purpose."""


def ours_inside(exc: BaseException | None) -> MolalError | None:
    """The error of ours inside another, or None: raised in a Ray task or actor (a Ray Data
    stage, the coordinator), it reaches the driver wrapped (``RayTaskError.cause``, or a
    ``__cause__``), with the remote traceback in the wrapper's text."""
    found = exc if isinstance(exc, MolalError) else None
    cur, seen = exc, set()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        cause = getattr(cur, "cause", None)  # ray.exceptions.RayTaskError
        cur = cause if isinstance(cause, BaseException) else cur.__cause__
        if isinstance(cur, MolalError):
            found = cur
    return found


class ConfigError(MolalError, ValueError):
    """A configuration value is wrong (raised at load time, with the field's path)."""


class SchemaError(MolalError, ValueError):
    """A table (pool, annotation table, gold file) lacks a column or holds bad values."""


class AnnotatorError(MolalError, RuntimeError):
    """An annotator (engine or deployment) failed to start or to answer."""


class StorageError(MolalError, OSError):
    """The storage an output or input lives on could not be written or listed (an object store
    that stopped answering, a full or read-only disk); what was written before is kept."""


class PoolExhaustedError(MolalError, ValueError):
    """A query asked for more samples than the unlabeled pool holds."""

    def __init__(self, available: int, requested: int) -> None:
        super().__init__(f"Pool exhausted: {available} available / {requested} requested")
        self.available = available
        self.requested = requested

    def __reduce__(self) -> tuple[type[PoolExhaustedError], tuple[int, int]]:  # it crosses from the actor
        return PoolExhaustedError, (self.available, self.requested)


class AggregationError(MolalError, ValueError):
    """Aggregation cannot proceed with the given table and gold labels."""


class TrainingError(MolalError, RuntimeError):
    """Training the classifier failed (bad training rows, or its workers ended)."""


class ReviewError(MolalError, ValueError):
    """A review file is wrong (a label outside the label set, an unknown id, ...); nothing was used."""


class ReviewServerError(ReviewError):
    """The labeling server (Label Studio) cannot be reached, refused the token, or failed."""


class ReviewPending(MolalError):
    """The loop stopped for people: the round's samples wait for their labels (in the review file,
    or in a Label Studio project when ``path`` is its address); ``reason`` says why it stopped
    waiting (the wait ran out, the server could not be reached)."""

    def __init__(self, round_: int, n: int, path: str, reason: str | None = None) -> None:
        if path.startswith(("http://", "https://")):
            msg = (
                f"round {round_}: {n} samples wait for people in the Label Studio project {path}"
                + (f" ({reason})" if reason else "")
                + "; run again with --resume once they are labelled"
            )
        else:
            msg = (
                f"round {round_}: {n} samples need a person's label: fill the label column of {path} (or "
                f"import a Label Studio export: molal-ray review import EXPORT.json --loop OUTPUT "
                f"--round {round_}), then run again with --resume"
            )
        super().__init__(msg)
        self.round = round_
        self.n = n
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type[ReviewPending], tuple[int, int, str, str | None]]:  # it crosses from the actor
        return ReviewPending, (self.round, self.n, self.path, self.reason)
