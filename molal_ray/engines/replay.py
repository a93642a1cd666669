"""Replay engine: serves recorded annotations by sample id, through the live answer parser.

It lets the whole system run on real annotator behaviour without a GPU. Raw answers go through
the same :class:`AnswerParser` as free-text live engines; an id not in the recording is an
error row (``unknown_sample``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from molal_ray import schema
from molal_ray.annotation import Annotation, votes_from_answers
from molal_ray.annotation.result import normalise_probs
from molal_ray.config import ReplayEngineConfig
from molal_ray.engines.base import Engine
from molal_ray.engines.recording import load_recording
from molal_ray.exceptions import AnnotatorError


class ReplayEngine(Engine):
    engine_type = "replay"
    config_cls = ReplayEngineConfig
    config: ReplayEngineConfig

    def __init__(self, annotator, task) -> None:  # type: ignore[no-untyped-def]
        super().__init__(annotator, task)
        self.source = self.config.source_annotator or annotator.name
        self._records: dict[str, tuple[list[float] | None, list[str] | None]] | None = None

    async def start(self) -> None:
        try:
            records = load_recording(self.config.path, self.source)
        except FileNotFoundError:
            raise AnnotatorError(f"replay engine {self.name}: recording not found: {self.config.path}") from None
        if not records:
            raise AnnotatorError(
                f"replay engine {self.name}: the recording {self.config.path} has no rows of "
                f"annotator {self.source!r}")
        self._records = records

    def _one(self, sample_id: str) -> Annotation:
        assert self._records is not None
        rec = self._records.get(sample_id)
        if rec is None:
            return Annotation.failed(f"{schema.ERR_UNKNOWN_SAMPLE}: {sample_id!r} is not in the recording")
        raw_probs, samples = rec
        C = self.task.num_classes
        if raw_probs is None or len(raw_probs) != C:
            n = None if raw_probs is None else len(raw_probs)
            return Annotation.failed(f"bad_probs: got {n} label probabilities; expected {C}")
        samples = list(samples or [])
        votes, n_invalid = votes_from_answers(self.parser.parse_many(samples), C)
        probs, err = normalise_probs(raw_probs)
        warning = None
        if probs is None:
            # No usable mass: the row keeps its votes; probs become uniform and the row is flagged.
            probs, warning = np.full(C, 1.0 / C), f"uniform_probs: {err}"
        return Annotation(probs=probs, votes=votes, n_invalid=n_invalid, n_samples=len(samples),
                          warning=warning)

    async def annotate(self, sample_ids: Sequence[str], texts: Sequence[str]) -> list[Annotation]:
        if self._records is None:
            raise AnnotatorError(f"replay engine {self.name}: annotate() before start()")
        if self.config.latency_s_per_text > 0:
            await asyncio.sleep(self.config.latency_s_per_text * len(sample_ids))
        return [self._one(i) for i in sample_ids]

    async def check_health(self) -> None:
        if self._records is None:
            raise AnnotatorError(f"replay engine {self.name}: not started")
