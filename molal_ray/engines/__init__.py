"""Annotator engines behind one interface: replay, transformers (hf), vLLM, OpenAI-compatible servers.

The names below load on first use, so that the engines' pure parts (``label_trie``,
``hf_scoring``) import with numpy and torch alone (the GPU check, ``benchmarks/gpu_engines.py``,
runs them where no pydantic or Ray is installed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from molal_ray.engines.base import Engine, build_engine, engine_class

__all__ = ["Engine", "build_engine", "engine_class"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from molal_ray.engines import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
