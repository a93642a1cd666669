"""The engine interface: what an annotator deployment wraps.

An engine turns a batch of (sample_id, text) into one :class:`Annotation` per text. Engines are
async so that a Serve replica keeps answering health checks while a batch runs; engines whose
work is blocking (torch) run it in a worker thread.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

from molal_ray.annotation import Annotation, AnswerParser
from molal_ray.config import AnnotatorConfig, TaskConfig
from molal_ray.exceptions import ConfigError


class Engine(abc.ABC):
    """Base class of every engine; subclasses register under their config's ``type``."""

    engine_type: ClassVar[str]
    config_cls: ClassVar[type[Any]]

    def __init__(self, annotator: AnnotatorConfig, task: TaskConfig) -> None:
        if not isinstance(annotator.engine, self.config_cls):
            raise ConfigError(
                f"annotators[{annotator.name}].engine: got type {annotator.engine.type!r}; "
                f"expected {self.engine_type!r} for {type(self).__name__}"
            )
        self.annotator = annotator
        self.config = annotator.engine
        self.task = task
        self.sampling = annotator.sampling
        self.parser = AnswerParser(task.labels)
        self.selector: Any = None  # few-shot demonstrations, loaded by engines that build prompts

    def load_few_shot(self, device: str = "cpu") -> None:
        """Load the few-shot selector (its encoder, its examples' embeddings) where the task has one."""
        if self.task.few_shot is not None:
            from molal_ray.engines.few_shot import ExampleSelector

            self.selector = ExampleSelector(self.task.few_shot, self.task.labels, device=device)

    def demonstrations(self, sample_ids: Sequence[str], texts: Sequence[str]) -> list[list[Any]]:
        """Per text, its few-shot demonstrations (empty lists without few-shot)."""
        if self.selector is None:
            return [[] for _ in texts]
        return self.selector.select(sample_ids, texts)

    @property
    def name(self) -> str:
        return self.annotator.name

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load models or recordings. Called once per replica before the first batch."""

    @abc.abstractmethod
    async def annotate(self, sample_ids: Sequence[str], texts: Sequence[str]) -> list[Annotation]:
        """One annotation per text, in order. Per-row problems are error rows, not exceptions."""

    async def check_health(self) -> None:  # noqa: B027 - optional hook
        """Raise if the engine can no longer answer (Serve then restarts the replica)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Release models and processes."""

    def info(self) -> dict[str, Any]:
        return {"annotator": self.name, "engine": self.engine_type}


def _engine_classes() -> dict[str, str]:
    # Import paths, so that heavy engines (torch, vllm) load only where they are used.
    return {
        "replay": "molal_ray.engines.replay:ReplayEngine",
        "hf": "molal_ray.engines.hf:HFEngine",
        "vllm": "molal_ray.engines.vllm_engine:VLLMEngine",
        "openai": "molal_ray.engines.openai_engine:OpenAIEngine",
    }


def engine_class(engine_type: str) -> type[Engine]:
    """The engine class registered for a config ``type``."""
    import importlib

    paths = _engine_classes()
    if engine_type not in paths:
        raise ConfigError(f"engine.type: got {engine_type!r}; expected one of {sorted(paths)}")
    module, _, cls = paths[engine_type].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_engine(annotator: AnnotatorConfig, task: TaskConfig, engine_cls: type[Engine] | None = None) -> Engine:
    """Build (not start) the engine of an annotator; ``engine_cls`` injects another (tests)."""
    cls = engine_cls or engine_class(annotator.engine.type)
    return cls(annotator, task)
