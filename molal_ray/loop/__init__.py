"""The active-learning loop (state object; the coordinator actor is to come)."""

from molal_ray.loop.state import LabeledRow, LoopState

__all__ = ["LabeledRow", "LoopState"]
