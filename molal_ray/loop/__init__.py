"""The active-learning loop: the state, the coordinator (pure round logic), its Ray shells
(actor, services, scoring) and the driver-side runner and report."""

from molal_ray.loop.state import LabeledRow, LoopState

__all__ = ["LabeledRow", "LoopState"]
