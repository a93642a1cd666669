"""Turning raw annotator answers into label features (pure Python/numpy, no Ray)."""

from molal_ray.annotation.parsing import AnswerParser
from molal_ray.annotation.result import Annotation, votes_from_answers

__all__ = ["Annotation", "AnswerParser", "votes_from_answers"]
