"""Ray Serve shell around an engine: one deployment per LLM annotator.

Each replica holds one started engine and asks Ray for its resources (``num_gpus: 1`` on a
cluster). Calls are batched by the caller (a Ray Data stage sends a batch of texts per call);
no HTTP route is exposed unless the application is run with one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from molal_ray.config import AnnotatorConfig, TaskConfig
from molal_ray.engines.base import Engine, build_engine

logger = logging.getLogger("molal_ray.serve")


def pack_annotations(annotations: Sequence[Any], num_classes: int) -> dict[str, Any]:
    """Columnar payload of a batch answer (cheap to serialise): NaN rows where ``error`` is set."""
    n = len(annotations)
    probs = np.full((n, num_classes), np.nan, dtype=np.float32)
    votes = np.full((n, num_classes), np.nan, dtype=np.float32)
    n_invalid = np.zeros(n, dtype=np.int32)
    n_samples = np.zeros(n, dtype=np.int32)
    errors: list[str | None] = []
    warnings: list[str | None] = []
    for i, a in enumerate(annotations):
        if a.error is None:
            probs[i] = a.probs
            votes[i] = a.votes
        n_invalid[i] = a.n_invalid
        n_samples[i] = a.n_samples
        errors.append(a.error)
        warnings.append(a.warning)
    return {"probs": probs, "votes": votes, "n_invalid": n_invalid, "n_samples": n_samples,
            "error": errors, "warning": warnings}


class AnnotatorDeployment:
    """A Serve deployment class (decorated in :mod:`molal_ray.serve.app`)."""

    async def __init__(self, annotator: dict[str, Any], task: dict[str, Any],
                       engine_cls: type[Engine] | None = None) -> None:
        self.annotator = AnnotatorConfig.model_validate(annotator)
        self.task = TaskConfig.model_validate(task)
        self.engine = build_engine(self.annotator, self.task, engine_cls)
        await self.engine.start()
        logger.info("annotator %s ready (%s engine)", self.annotator.name, self.engine.engine_type)

    async def annotate(self, sample_ids: list[str], texts: list[str]) -> dict[str, Any]:
        """Annotate one batch; returns columns (see :func:`pack_annotations`)."""
        if len(sample_ids) != len(texts):
            raise ValueError(f"annotate: got {len(sample_ids)} ids and {len(texts)} texts; expected equal counts")
        annotations = await self.engine.annotate(sample_ids, texts)
        if len(annotations) != len(texts):
            raise RuntimeError(f"engine {self.engine.engine_type} returned {len(annotations)} "
                               f"annotations for {len(texts)} texts")
        return pack_annotations(annotations, self.task.num_classes)

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def info(self) -> dict[str, Any]:
        return {**self.engine.info(), "labels": self.task.labels}

    async def __del__(self) -> None:  # pragma: no cover - best effort on replica shutdown
        try:
            await self.engine.stop()
        except Exception:  # noqa: BLE001
            pass


class AnnotatorsIngress:
    """Ingress of the annotator application: lists annotators and routes calls by name.

    Pipelines talk to the annotator deployments directly (``serve.get_deployment_handle``);
    this ingress is for clients that know only the application.
    """

    def __init__(self, names: list[str], *handles: Any) -> None:
        self.handles = dict(zip(names, handles))

    async def annotators(self) -> list[str]:
        return list(self.handles)

    async def annotate(self, annotator: str, sample_ids: list[str], texts: list[str]) -> dict[str, Any]:
        if annotator not in self.handles:
            raise KeyError(f"annotator: got {annotator!r}; expected one of {sorted(self.handles)}")
        return await self.handles[annotator].annotate.remote(sample_ids, texts)
