"""Strict pydantic base model, YAML loading and readable validation errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo

from molal_ray.exceptions import ConfigError

M = TypeVar("M", bound="StrictModel")


class StrictModel(BaseModel):
    """Base of every config: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    # The kind of config this model reads (``config_kind``): a file of another kind is refused with
    # the command that runs it, not with a list of unknown and missing fields.
    kind: ClassVar[str | None] = None

    @classmethod
    def from_dict(
        cls: type[M], data: Any, *, base_dir: str | os.PathLike[str] | None = None, source: str = "config"
    ) -> M:
        """Validate ``data``; relative paths in it are taken relative to ``base_dir``."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: got {type(data).__name__}; expected a mapping of fields")
        found = config_kind(data)
        if cls.kind is not None and found != cls.kind:
            raise ConfigError(
                f"{source}: a {found} config ({KINDS[found][1]}), not a {cls.kind} config: "
                f"use it with `{KINDS[found][0]}`"
            )
        context = {"base_dir": str(base_dir) if base_dir is not None else None}
        try:
            return cls.model_validate(data, context=context)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source)) from None

    @classmethod
    def from_file(cls: type[M], path: str | os.PathLike[str]) -> M:
        """Load a YAML file with the safe loader and validate it."""
        p = Path(path)
        return cls.from_dict(cls.read_yaml(p), base_dir=p.resolve().parent, source=str(p))

    @staticmethod
    def read_yaml(path: str | os.PathLike[str]) -> Any:
        """A YAML file's data (safe loader); a missing, binary or malformed file is a ConfigError."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file: got {str(p)!r}; expected an existing YAML file")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not a text file (byte {exc.start} is not UTF-8); expected a YAML config") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        return data


# What each kind of config is run with, and how it is told apart (``config_kind``).
KINDS = {
    "label": ("molal-ray label", "no loop, classifier or gold section"),
    "run": ("molal-ray run", "it has a loop, classifier or gold section"),
    "serve-app": ("molal-ray annotators deploy", "it has applications"),
}


def config_kind(data: Any) -> str:
    """The kind of a config's data by its top-level sections: 'serve-app' (a ``serve deploy``
    file), 'run' (a loop) or 'label'."""
    keys = set(data) if isinstance(data, dict) else set()
    return "serve-app" if "applications" in keys else "run" if keys & {"loop", "classifier", "gold"} else "label"


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: ``field.path: got VALUE; expected ...``."""
    lines = [f"{source}: {exc.error_count()} invalid value(s)"]
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err["loc"]) or "<root>"
        got = err.get("input")
        got_s = repr(got)
        whole_section = isinstance(got, dict) and len(got_s) > 120
        if len(got_s) > 120:
            got_s = got_s[:117] + "..."
        if err["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown field (got {got_s}); remove it or check its spelling")
        elif err["type"] == "missing":
            lines.append(f"  {loc}: required field is missing")
        elif whole_section:  # a rule over a large section: its message names the fields, the cut value says nothing
            lines.append(f"  {loc}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {loc}: got {got_s}; expected {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def resolve_path(value: str, info: ValidationInfo) -> str:
    """Resolve a relative local path against the config file's folder (URIs pass through)."""
    if not value or "://" in value or os.path.isabs(value):
        return value
    base = (info.context or {}).get("base_dir") if info.context else None
    if base is None:
        return value
    return os.path.normpath(str(Path(base, value)))
