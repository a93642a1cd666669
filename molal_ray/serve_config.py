"""Read a Serve config file (``serve deploy`` format) and validate its annotator app's args."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from molal_ray.config import AnnotatorAppConfig
from molal_ray.exceptions import ConfigError

BUILDER = "molal_ray.serve.app:build_app"


def load_serve_app_args(path: str | os.PathLike[str]) -> AnnotatorAppConfig:
    """Validate the ``args`` of every application built by :data:`BUILDER` in a Serve config."""
    p = Path(path)
    try:
        doc: dict[str, Any] = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: cannot read a Serve config ({exc})") from None
    apps = [a for a in (doc or {}).get("applications", []) if a.get("import_path") == BUILDER]
    if not apps:
        raise ConfigError(f"{p}: no application with import_path {BUILDER!r}")
    # The args are validated exactly as Serve's builder will validate them.
    out = [AnnotatorAppConfig.from_dict(a.get("args") or {}, source=f"{p}: applications[{a.get('name')}].args")
           for a in apps]
    return out[0]
