"""Ray Serve shell around an engine: one deployment per LLM annotator.

Each replica holds one started engine and asks Ray for its resources (``num_gpus: 1`` on a
cluster). Calls are batched by the caller (a Ray Data stage sends a batch of texts per call);
no HTTP route is exposed unless the application is run with one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from molal_ray.config import AnnotatorConfig, TaskConfig
from molal_ray.config.task import FewShotExample
from molal_ray.engines.base import Engine, build_engine
from molal_ray.exceptions import AnnotatorError, ConfigError, SchemaError
from molal_ray.serve.fingerprint import fingerprint, fingerprint_key
from molal_ray.serve.loopback import bind_replica_servers_to_loopback
from molal_ray.serve.stats import REPORT_EVERY_S, stats_actor

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
    return {
        "probs": probs,
        "votes": votes,
        "n_invalid": n_invalid,
        "n_samples": n_samples,
        "error": errors,
        "warning": warnings,
    }


class AnnotatorDeployment:
    """A Serve deployment class (decorated in :mod:`molal_ray.serve.app`)."""

    async def __init__(  # type: ignore[misc]  # Serve awaits it
        self,
        annotator: dict[str, Any],
        task: dict[str, Any],
        engine_cls: type[Engine] | None = None,
    ) -> None:
        bind_replica_servers_to_loopback()  # the local runtime: nothing of ours listens beyond 127.0.0.1
        self.annotator = AnnotatorConfig.model_validate(annotator)
        self.task = TaskConfig.model_validate(task)
        self.engine = build_engine(self.annotator, self.task, engine_cls)
        await self.engine.start()
        self.in_flight = 0
        self.rows = 0
        self._examples_lock = asyncio.Lock()
        self._examples_digest: str | None = None
        self._reporter = asyncio.get_running_loop().create_task(self._report_loop())
        logger.info("annotator %s ready (%s engine)", self.annotator.name, self.engine.engine_type)

    async def annotate(
        self, sample_ids: list[str], texts: list[str], examples: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Annotate one batch; returns columns (see :func:`pack_annotations`). ``examples``
        (``sample_id, text, label`` dicts): the few-shot demonstrations to choose from, for a task
        whose ``few_shot.examples`` is ``loop`` (the loop sends its labels so far with each call)."""
        if len(sample_ids) != len(texts):
            raise SchemaError(f"annotate: got {len(sample_ids)} ids and {len(texts)} texts; expected equal counts")
        if examples is not None:
            await self._use_examples(examples)
        self.in_flight += 1
        try:
            annotations = await self.engine.annotate(sample_ids, texts)
        finally:
            self.in_flight -= 1
        if len(annotations) != len(texts):
            raise AnnotatorError(
                f"engine {self.engine.engine_type} returned {len(annotations)} annotations for {len(texts)} texts"
            )
        self.rows += len(texts)
        return pack_annotations(annotations, self.task.num_classes)

    async def _use_examples(self, examples: list[dict[str, Any]]) -> None:
        """Switch the engine's demonstrations to these (embedded once per new set, not per call)."""
        selector = getattr(self.engine, "selector", None)
        if selector is None:  # an engine without prompts (replay): nothing to show
            return
        digest = hashlib.blake2b(json.dumps(examples, sort_keys=True).encode(), digest_size=16).hexdigest()
        async with self._examples_lock:
            if digest != self._examples_digest:
                items = [FewShotExample.model_validate(e) for e in examples]
                await asyncio.to_thread(selector.replace, items)
                self._examples_digest = digest

    async def _report_loop(self) -> None:
        """Report the replica's counters to the application's stats actor (for `annotators status`)."""
        try:
            from ray import serve

            ctx = serve.get_replica_context()
            actor = stats_actor(ctx.app_name)
            replica = str(ctx.replica_id.unique_id)
        except Exception as exc:  # noqa: BLE001 - counters are optional; answering is not
            logger.warning("annotator %s: no live counters (%s)", self.annotator.name, exc)
            return
        while True:
            try:
                actor.report.remote(replica, self.annotator.name, self.in_flight, self.rows)
            except Exception:  # noqa: BLE001 - the stats actor may be gone; keep answering
                pass
            await asyncio.sleep(REPORT_EVERY_S)

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def info(self) -> dict[str, Any]:
        """What the replica answers with: its fingerprint (task and engine settings) and config."""
        fp = fingerprint(self.annotator, self.task)
        return {
            **self.engine.info(),
            "labels": self.task.labels,
            "fingerprint": fp,
            "fingerprint_key": fingerprint_key(fp),
        }

    async def __del__(self) -> None:  # pragma: no cover - best effort on replica shutdown
        try:
            self._reporter.cancel()
            await self.engine.stop()
        except Exception:  # noqa: BLE001
            pass


class AnnotatorsIngress:
    """Ingress of the annotator application: lists annotators and routes calls by name.

    Pipelines talk to the annotator deployments directly (``serve.get_deployment_handle``);
    this ingress is for clients that know only the application.
    """

    def __init__(self, names: list[str], *handles: Any) -> None:
        bind_replica_servers_to_loopback()
        self.handles = dict(zip(names, handles))

    async def annotators(self) -> list[str]:
        return list(self.handles)

    async def annotate(
        self, annotator: str, sample_ids: list[str], texts: list[str], examples: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        if annotator not in self.handles:
            raise ConfigError(f"annotator: got {annotator!r}; expected one of {sorted(self.handles)}")
        return await self.handles[annotator].annotate.remote(sample_ids, texts, examples)
