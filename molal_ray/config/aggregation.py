"""The aggregator's config: one strict model per aggregator, chosen by ``name``.

Each model's fields are the aggregator class's constructor arguments with their defaults (read
from its signature, so the class stays the one place they are written), so a misspelt name or
setting fails when the config loads, not after round 0 has trained::

    loop:
      aggregator: default                               # a name
      aggregator: {name: default, threshold: 0.95}      # or a name and settings
"""

from __future__ import annotations

import functools
import typing
from typing import Any, Literal

from pydantic import create_model

from molal_ray.config.base import StrictModel


class AggregatorSettings(StrictModel):
    """Base of the per-aggregator models (``name`` plus that aggregator's settings)."""

    name: str = "default"

    def params(self) -> dict[str, Any]:
        """The constructor arguments."""
        return self.model_dump(exclude={"name"})


@functools.cache
def settings_models() -> dict[str, type[AggregatorSettings]]:
    from molal_ray.aggregation.base import DEFAULT, available, constructor_parameters, registered

    models: dict[str, type[AggregatorSettings]] = {}
    for name in ["default", *available()]:
        cls = registered(DEFAULT if name == "default" else name)
        hints: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):  # a subclass's hints over its base's
            if "__init__" in klass.__dict__:
                hints.update(typing.get_type_hints(klass.__dict__["__init__"], include_extras=True))
        fields: dict[str, Any] = {"name": (Literal[name], name)}
        for p in constructor_parameters(cls):
            fields[p.name] = (hints.get(p.name, Any), p.default)
        models[name] = create_model(f"{cls.__name__}Settings", __base__=AggregatorSettings, **fields)
    return models


def parse_aggregator(value: Any) -> AggregatorSettings:
    """A name or a mapping with ``name`` -> that aggregator's validated settings."""
    if isinstance(value, AggregatorSettings) and type(value) is not AggregatorSettings:
        return value
    if isinstance(value, AggregatorSettings):
        value = value.model_dump()
    data = {"name": value} if isinstance(value, str) else dict(value or {})
    name = data.get("name", "default")
    models = settings_models()
    if name not in models:
        raise ValueError(f"aggregator name one of {sorted(models)} (got {name!r})")
    return models[name].model_validate(data)
