"""Read a Serve config file (``serve deploy`` format) and validate its annotator app's args."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from molal_ray.config import AnnotatorAppConfig
from molal_ray.config.base import StrictModel
from molal_ray.exceptions import ConfigError

BUILDER = "molal_ray.serve.app:build_app"


def load_serve_app_args(path: str | os.PathLike[str]) -> AnnotatorAppConfig:
    """Validate the ``args`` of every application built by :data:`BUILDER` in a Serve config."""
    p = Path(path)
    doc: Any = StrictModel.read_yaml(p)
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: got {type(doc).__name__}; expected a Serve config (a mapping with applications)")
    apps = [a for a in doc.get("applications", []) or [] if isinstance(a, dict) and a.get("import_path") == BUILDER]
    if not apps:
        raise ConfigError(f"{p}: no application with import_path {BUILDER!r}")
    # The args are validated exactly as Serve's builder will validate them.
    out = [
        AnnotatorAppConfig.from_dict(a.get("args") or {}, source=f"{p}: applications[{a.get('name')}].args")
        for a in apps
    ]
    return out[0]


def load_app_config(path: str | os.PathLike[str]) -> tuple[str, AnnotatorAppConfig]:
    """(application name, annotator app) of a Serve config, or of a label or run config."""
    p = Path(path)
    doc = StrictModel.read_yaml(p) or {}
    if isinstance(doc, dict) and "applications" in doc:
        apps = [a for a in doc.get("applications") or [] if isinstance(a, dict) and a.get("import_path") == BUILDER]
        if not apps:
            raise ConfigError(f"{p}: no application with import_path {BUILDER!r}")
        return str(apps[0].get("name", "annotators")), load_serve_app_args(p)
    from molal_ray.config import LabelJobConfig
    from molal_ray.config.loop import LoopJobConfig

    model = LoopJobConfig if isinstance(doc, dict) and ("loop" in doc or "classifier" in doc) else LabelJobConfig
    cfg = model.from_file(p)
    return cfg.ray.serve_app_name, cfg.app_config()
