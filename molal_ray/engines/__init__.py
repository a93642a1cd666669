"""Annotator engines behind one interface: replay, transformers (hf), vLLM."""

from molal_ray.engines.base import Engine, build_engine, engine_class

__all__ = ["Engine", "build_engine", "engine_class"]
