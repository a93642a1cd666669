"""Where everything lives in an output folder: one place that names every path.

A label output (``molal-ray label``; also a loop's ``annotations/``)::

    manifest.json     format version, labels, annotators, pool bucket count
    parts/            the annotation table: Parquet parts and compacted files, per pool bucket
    pool/             the prepared pool (``pipeline/pool_store.py``)
    summary.json      the label summary
    cascade.json      the stages a cascaded job asked (``molal-ray aggregate`` reads it)
    unreadable/       table files that could not be read, set aside (their pairs are asked again)

A loop output (``molal-ray run``)::

    pool/                 the prepared pool
    pool_flagged.parquet  pool rows left out of the loop, with why
    state/state.json      the loop state (``loop/state.py``): what a resume continues from
    annotations/          the loop's own label output (above)
    train/                each round's classifier
    review/               the samples routed to people, by round (``review/backend.py``)
    report.json, report.html, curves.png, summary.md
    molal-ray.log         the command line's log (kept when the output is overwritten)

A predictions output (``molal-ray predict``)::

    manifest.json     the table kind (predictions), labels, the model's fingerprint, pool bucket count
    parts/            the predictions table: one row per pool row, in parts per pool bucket
    pool/             the prepared pool
    summary.json      the predict summary
    escalation/       with --escalate: the label output of the escalated rows (and the people-labelled
                      rows the aggregator is fitted on), and mixture.parquet, their aggregated labels
    labels/           with --escalate: the final table (predictions, escalated rows relabelled)
    review/           with --people: the rows sent to people (review files; or a Label Studio project)

Beside any of these folders ``OUT``: ``OUT.lock`` while a job writes it (``lock.py``) and, by default,
``_embeddings/`` (embeddings shared by every loop on the same pool and encoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from molal_ray.storage import Location, resolve


@dataclass(frozen=True)
class LabelLayout:
    """The paths of a label output folder."""

    root: Location

    MANIFEST: ClassVar[str] = "manifest.json"
    PARTS: ClassVar[str] = "parts"
    POOL: ClassVar[str] = "pool"
    SUMMARY: ClassVar[str] = "summary.json"
    CASCADE: ClassVar[str] = "cascade.json"
    UNREADABLE: ClassVar[str] = "unreadable"

    @classmethod
    def at(cls, path: str | Location) -> LabelLayout:
        return cls(resolve(path))

    @property
    def manifest(self) -> Location:
        return self.root.join(self.MANIFEST)

    @property
    def parts(self) -> Location:
        return self.root.join(self.PARTS)

    @property
    def pool(self) -> Location:
        return self.root.join(self.POOL)

    @property
    def summary(self) -> Location:
        return self.root.join(self.SUMMARY)

    @property
    def cascade(self) -> Location:
        return self.root.join(self.CASCADE)

    @property
    def unreadable(self) -> Location:
        return self.root.join(self.UNREADABLE)

    def holds_table(self) -> bool:
        """Whether the folder is a label output (rather than a single table file)."""
        return self.parts.is_dir() or self.manifest.exists()


@dataclass(frozen=True)
class LoopLayout:
    """The paths of a loop output folder."""

    root: Location

    STATE: ClassVar[str] = "state"
    STATE_FILE: ClassVar[str] = "state.json"
    ANNOTATIONS: ClassVar[str] = "annotations"
    TRAIN: ClassVar[str] = "train"
    REVIEW: ClassVar[str] = "review"
    POOL: ClassVar[str] = "pool"
    FLAGGED_POOL: ClassVar[str] = "pool_flagged.parquet"
    LOG: ClassVar[str] = "molal-ray.log"
    REPORT_JSON: ClassVar[str] = "report.json"
    REPORT_HTML: ClassVar[str] = "report.html"
    CURVES: ClassVar[str] = "curves.png"
    SUMMARY_MD: ClassVar[str] = "summary.md"
    MODEL: ClassVar[str] = "model"
    LABELS: ClassVar[str] = "labels.parquet"

    @classmethod
    def at(cls, path: str | Location) -> LoopLayout:
        return cls(resolve(path, field="output.path"))

    @property
    def state(self) -> Location:
        return self.root.join(self.STATE)

    @property
    def state_file(self) -> Location:
        return self.root.join(self.STATE, self.STATE_FILE)

    @property
    def annotations(self) -> LabelLayout:
        return LabelLayout(self.root.join(self.ANNOTATIONS))

    @property
    def train(self) -> Location:
        return self.root.join(self.TRAIN)

    @property
    def review(self) -> Location:
        return self.root.join(self.REVIEW)

    @property
    def pool(self) -> Location:
        return self.root.join(self.POOL)

    @property
    def flagged_pool(self) -> Location:
        return self.root.join(self.FLAGGED_POOL)

    @property
    def log(self) -> Location:
        return self.root.join(self.LOG)

    @property
    def model(self) -> Location:
        """The exported classifier (``molal_ray/products``): a portable folder."""
        return self.root.join(self.MODEL)

    @property
    def labels(self) -> Location:
        """Every labelled row with its source (``molal_ray.products.export``)."""
        return self.root.join(self.LABELS)

    def report(self, name: str) -> Location:
        """One of the report's files (``REPORT_JSON``, ``REPORT_HTML``, ``CURVES``, ``SUMMARY_MD``)."""
        return self.root.join(name)

    @property
    def run_folders(self) -> tuple[str, ...]:
        """What a new loop in this folder must not inherit (removed on ``output.mode: overwrite``;
        the prepared pool is kept: it is checked against the pool and reused)."""
        return (self.STATE, self.ANNOTATIONS, self.TRAIN, self.REVIEW, self.MODEL)


@dataclass(frozen=True)
class PredictLayout(LabelLayout):
    """The paths of a predictions output folder (its table is laid out as a label output's)."""

    ESCALATION: ClassVar[str] = "escalation"
    LABELS: ClassVar[str] = "labels"
    MIXTURE: ClassVar[str] = "mixture.parquet"
    REVIEW: ClassVar[str] = "review"

    @property
    def escalation(self) -> LabelLayout:
        return LabelLayout(self.root.join(self.ESCALATION))

    @property
    def mixture(self) -> Location:
        """The escalated rows' aggregated labels (the aggregator's output table)."""
        return self.root.join(self.ESCALATION, self.MIXTURE)

    @property
    def labels(self) -> LabelLayout:
        return LabelLayout(self.root.join(self.LABELS))

    @property
    def review(self) -> Location:
        """The review files of the escalated rows sent to people (``--people``)."""
        return self.root.join(self.REVIEW)
