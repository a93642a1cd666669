"""Where a round's samples go for review (``review.backend``) and the wait for people's labels.

A backend pushes a batch of :class:`~molal_ray.review.files.ReviewItem` under a name (a loop's
``round-N``) and pulls what people have done with them so far. Two backends:

- :class:`FileReview` (``files``): ``NAME.csv`` (a reviewer fills ``label``), a Label Studio import
  file and labeling config beside it; people's labels come back in the filled CSV or in
  ``NAME.labels.csv`` (written by ``molal-ray review import``).
- :class:`~molal_ray.review.label_studio.LabelStudioReview` (``label_studio``): tasks of a project
  on a running Label Studio.

:func:`wait_for_people` polls a backend until every sample is labelled or skipped, or the wait
runs out; it is pure control flow (its clock and sleep are arguments, for tests).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from molal_ray.review.files import ReviewItem


@dataclass
class ReviewProgress:
    """What people did with a batch so far: ``labels`` (sample id -> label name) and the samples
    a reviewer ``skipped`` (no label will come; the mixture's label stays)."""

    labels: dict[str, str]
    skipped: set[str] = field(default_factory=set)

    def done(self, ids: Sequence[str]) -> int:
        return sum(1 for i in ids if i in self.labels or i in self.skipped)

    def complete(self, ids: Sequence[str]) -> bool:
        return self.done(ids) == len(ids)


class ReviewBackend(Protocol):
    where: str  # where people review (a folder, or a project's address), for messages

    def push(self, name: str, items: Sequence[ReviewItem]) -> str:
        """Hand these samples to people (again: nothing twice); returns where they are."""

    def pull(self, name: str, ids: Sequence[str]) -> ReviewProgress:
        """People's labels of these samples so far, each checked against the label set."""

    def close(self) -> None:
        """Release what the backend holds (a connection)."""


def batch_name(round_: int) -> str:
    """The name of a loop round's batch of routed samples (its files, its Label Studio tasks' data.batch)."""
    return f"round-{round_}"


class FileReview:
    """``review.backend: files``: the review files in a folder (a :class:`Location`): per batch
    ``NAME.csv`` (to fill in), ``NAME.labelstudio.json`` (tasks to import), and the labels read
    back, ``NAME.labels.csv``."""

    CONFIG = "labelstudio-config.xml"

    def __init__(self, folder: Any, labels: Sequence[str]) -> None:
        self.folder = folder
        self.labels = list(labels)
        self.where = folder.uri

    def sent(self, name: str) -> Any:
        """The CSV a batch's samples were written to."""
        return self.folder.join(f"{name}.csv")

    def returned(self, name: str) -> Any:
        """The checked labels of a batch (``molal-ray review import`` writes it)."""
        return self.folder.join(f"{name}.labels.csv")

    def push(self, name: str, items: Sequence[ReviewItem]) -> str:
        from molal_ray.review.files import csv_text, labelstudio_config, labelstudio_tasks

        self.folder.mkdirs()
        self.folder.join(f"{name}.labelstudio.json").write_text(
            json.dumps(labelstudio_tasks(items, batch=name), indent=1)
        )
        self.folder.join(self.CONFIG).write_text(labelstudio_config(self.labels))
        target = self.sent(name)
        if not target.exists():  # never overwrite labels a reviewer may be filling in
            target.write_text(csv_text(items))
        return str(target.uri)

    def pull(self, name: str, ids: Sequence[str]) -> ReviewProgress:
        """``NAME.labels.csv`` when it holds them all, else the filled part of ``NAME.csv``."""
        from molal_ray.review.files import read_review

        best: dict[str, str] = {}
        for loc in (self.returned(name), self.sent(name)):
            if loc.exists():
                labels = read_review(loc.uri, self.labels, ids)
                if set(ids) <= set(labels):
                    return ReviewProgress(labels)
                best = best or labels
        return ReviewProgress(best)

    def close(self) -> None:
        pass


def make_backend(cfg: Any, folder: Any, labels: Sequence[str], token: str | None = None) -> ReviewBackend:
    """The backend of a ``review`` config (:class:`~molal_ray.config.review.ReviewConfig`);
    ``token``: Label Studio's (else read from ``cfg.token_env`` here)."""
    if cfg.backend == "label_studio":
        from molal_ray.review.label_studio import LabelStudioReview

        return LabelStudioReview(cfg, labels, token=token)
    return FileReview(folder, labels)


def wait_for_people(
    backend: ReviewBackend,
    name: str,
    ids: Sequence[str],
    *,
    poll_s: float,
    wait_s: float,
    status: Callable[[str], None] = lambda s: None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ReviewProgress:
    """Pull until every sample of ``ids`` is labelled or skipped, or ``wait_s`` seconds passed;
    returns the last progress (complete or not). ``status`` gets a line after every look
    ("3/10 labelled in ..."). A server that cannot be reached raises (the caller pauses)."""
    deadline = clock() + wait_s
    while True:
        got = backend.pull(name, ids)
        status(f"waiting for people: {got.done(ids)}/{len(ids)} labelled in {backend.where}")
        if got.complete(ids) or clock() + poll_s > deadline:
            return got
        sleep(poll_s)


def review_round(
    backend: ReviewBackend,
    cfg: Any,
    round_: int,
    items: Sequence[ReviewItem],
    status: Callable[[str], None] | None = None,
) -> ReviewProgress:
    """People's labels of a loop round's routed ``items``: pulled from ``backend``; when some are
    missing, pushed there and (``label_studio``) waited for, ``cfg.poll_s`` apart up to
    ``cfg.wait_s`` (``cfg``: :class:`~molal_ray.config.review.ReviewConfig`). Raises
    :class:`~molal_ray.exceptions.ReviewPending` while any is neither labelled nor skipped, and
    when the server cannot be reached: the caller uses and saves nothing of the round then."""
    from molal_ray.exceptions import ReviewPending, ReviewServerError

    name, ids = batch_name(round_), [it.sample_id for it in items]
    try:
        got = backend.pull(name, ids)
        if got.complete(ids):
            return got
        where = backend.push(name, items)
        if cfg.backend == "files":
            raise ReviewPending(round_, len(ids), where)
        got = wait_for_people(
            backend, name, ids, poll_s=cfg.poll_s, wait_s=cfg.wait_s, status=status or (lambda line: None)
        )
    except ReviewServerError as exc:
        raise ReviewPending(round_, len(ids), backend.where, f"the loop stopped waiting: {exc}") from None
    if not got.complete(ids):
        raise ReviewPending(
            round_, len(ids), where, f"{got.done(ids)}/{len(ids)} labelled after waiting {cfg.wait_s:g} s"
        )
    return got
