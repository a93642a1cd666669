"""The aggregator interface and its registry.

An aggregator turns an :class:`AnnotationMatrix` (all annotators' probs and votes per sample)
and a few gold labels into one label distribution per sample. ``fit`` returns ``self``; fitted
state ends in ``_`` (scikit-learn style). Pure numpy/scikit-learn/xgboost: no Ray inside.
"""

from __future__ import annotations

import abc
import functools
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from molal_ray.aggregation.features import AnnotationMatrix
from molal_ray.exceptions import AggregationError, ConfigError

_REGISTRY: dict[str, type[Aggregator]] = {}


class Gold:
    """Gold labels aligned to a matrix: ``index`` (rows of the matrix) and ``y`` (class ids)."""

    def __init__(self, index: np.ndarray, y: np.ndarray, num_classes: int) -> None:
        self.index = np.asarray(index, dtype=np.int64)
        self.y = np.asarray(y, dtype=np.int64)
        self.num_classes = num_classes
        if self.index.shape != self.y.shape:
            raise AggregationError("gold: index and labels differ in length")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, mask: np.ndarray) -> Gold:
        return Gold(self.index[mask], self.y[mask], self.num_classes)

    def one_hot(self) -> np.ndarray:
        return np.eye(self.num_classes)[self.y]


class Aggregator(abc.ABC):
    """Base class: subclasses set ``name`` and implement ``_fit`` and ``predict_proba``."""

    name: ClassVar[str]
    uses_gold: ClassVar[bool] = True
    # Settings that change the distributions' confidence but never their argmax (a temperature):
    # a copy fitted only to measure label accuracy (cross-validation, calibration) sets them so.
    label_only: ClassVar[dict[str, Any]] = {}
    # A text-aware aggregator names the registered one it equals on samples without embeddings.
    without_text: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _REGISTRY[cls.name] = cls

    def settings(self) -> dict[str, Any]:
        """The constructor's arguments as set, by name (fitted state ends in ``_`` and is left
        out): enough to build an unfitted copy, ``type(self)(**self.settings())``."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    def unfitted_copy(self, **changes: Any) -> Aggregator:
        """A new, unfitted aggregator with these settings, ``changes`` applied."""
        return type(self)(**{**self.settings(), **changes})

    def fit(self, m: AnnotationMatrix, gold: Gold) -> Aggregator:
        self.num_classes_ = m.num_classes
        self._fit(m, gold)
        return self

    def _fit(self, m: AnnotationMatrix, gold: Gold) -> None:  # noqa: B027 - stateless by default
        """Learn from the matrix and the gold labels."""

    @abc.abstractmethod
    def predict_proba(self, m: AnnotationMatrix) -> np.ndarray:
        """(S, C) label distributions, rows summing to 1, for every sample of ``m``."""

    def fit_predict_proba(self, m: AnnotationMatrix, gold: Gold) -> np.ndarray:
        return self.fit(m, gold).predict_proba(m)


def available() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def registered(name: str) -> type[Aggregator]:
    """The aggregator class registered under ``name`` (not ``default``)."""
    _load_all()
    return _REGISTRY[name]


def get_aggregator(name: str, seed: int | None = None, **params: Any) -> Aggregator:
    """An aggregator by registered name (``default`` is the project's recommended one); ``seed``
    goes to those that draw random numbers and is ignored by the others."""
    _load_all()
    key = DEFAULT if name == "default" else name
    if key not in _REGISTRY:
        raise ConfigError(f"aggregator: got {name!r}; expected one of {['default', *sorted(_REGISTRY)]}")
    cls = _REGISTRY[key]
    if seed is not None and any(p.name == "seed" for p in constructor_parameters(cls)):
        params["seed"] = seed
    return cls(**params)


def validated(init: Callable[..., None]) -> Callable[..., None]:
    """Checks a constructor's arguments against its annotations (``Annotated[float, Field(ge=0)]``
    and the like), the one place an aggregator's ranges are declared: the config's settings model
    is built from the same annotations (``config/aggregation.py``), so a YAML file and a direct
    call get the same check. A bad value is a :class:`ConfigError` naming the setting."""
    import pydantic

    checked = pydantic.validate_call(config={"arbitrary_types_allowed": True})(init)

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            checked(self, *args, **kwargs)
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise ConfigError(
                f"{getattr(self, 'name', type(self).__name__)}: {where}: {err['msg']}; got {err.get('input')!r}"
            ) from None

    return wrapper


def constructor_parameters(cls: type) -> list[inspect.Parameter]:
    """The settings an aggregator class takes: its constructor's named parameters, and, when it
    passes ``**kwargs`` on to its base class, the base's (a subclass adds settings without
    writing its base's again)."""
    params = list(inspect.signature(cls.__dict__.get("__init__", cls)).parameters.values())
    params = params[1:] if "__init__" in cls.__dict__ else params
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if any(p.kind == p.VAR_KEYWORD for p in params):
        base = next((b for b in cls.__mro__[1:] if "__init__" in b.__dict__ and b is not object), None)
        if base is not None and base is not Aggregator:
            seen = {p.name for p in named}
            named += [p for p in constructor_parameters(base) if p.name not in seen]
    return named


DEFAULT = "pooled-text"  # where the samples have no embeddings it is "pooled" exactly


def _load_all() -> None:
    # Importing the modules registers their classes.
    from molal_ray.aggregation import dawid_skene, majority, mean_probs, molam, pooled, text_view  # noqa: F401


def normalise_rows(p: np.ndarray) -> np.ndarray:
    """Rows summing to 1; an all-zero or non-finite row becomes uniform (labels stay valid)."""
    p = np.where(np.isfinite(p) & (p > 0), p, 0.0).astype(np.float64)
    s = p.sum(1, keepdims=True)
    C = p.shape[1]
    return np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / C)
