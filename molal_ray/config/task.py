"""The labeling task: the label set and the prompt."""

from __future__ import annotations

import string
from typing import Literal

from pydantic import Field, field_validator, model_validator

from molal_ray.config.base import StrictModel

DEFAULT_PROMPT = (
    "Classify the text into one of these categories: {labels}.\n"
    "Answer with one label only, with no additional text or explanation.\n\n"
    "Text: {text}\n\nLabel:"
)


class TaskConfig(StrictModel):
    """What the annotators are asked: a label set (its order is the order of every probs/votes
    vector in the project) and a prompt template."""

    name: str = Field("task", description="A short name for reports.")
    labels: list[str] = Field(
        ..., min_length=2,
        description="The label set, in the order used by every probs/votes vector. Labels are "
                    "matched case-insensitively in answers; they must be distinct after that.")
    prompt_template: str = Field(
        DEFAULT_PROMPT,
        description="Python format string; must contain {text}; may contain {labels} "
                    "(the labels joined by ', '). Literal braces are written {{ and }}.")
    use_chat_template: bool = Field(
        True,
        description="Wrap the prompt as a user message with the tokenizer's chat template "
                    "(when the tokenizer has one) before the answer is generated.")
    label_case: list[Literal["as_given", "lower", "capitalized", "title", "upper"]] = Field(
        ["as_given", "lower", "capitalized"], min_length=1,
        description="The spellings of each label that live engines score (a label's probability is the sum "
                    "over its spellings) and accept as constrained answers: 'entity', 'Entity', ... A model "
                    "tends to write a label as the prompt lists it.")
    label_space: Literal["auto", "none", "leading", "both"] = Field(
        "auto",
        description="Whether the scored spellings start with a space. 'auto': none after a prompt that ends "
                    "in whitespace (a chat template's assistant header, 'Output:\\n'), a leading space "
                    "otherwise (a prompt ending in 'Label:').")

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, v: list[str]) -> list[str]:
        cleaned = [x.strip() for x in v]
        if any(not x for x in cleaned):
            raise ValueError("non-empty label names")
        lowered = [x.lower() for x in cleaned]
        dups = sorted({x for x in lowered if lowered.count(x) > 1})
        if dups:
            raise ValueError(f"distinct labels (case-insensitive); duplicated: {dups}")
        return cleaned

    @model_validator(mode="after")
    def _template_fields(self) -> "TaskConfig":
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(self.prompt_template) if f is not None}
        except ValueError as exc:
            raise ValueError(f"a valid format string in prompt_template ({exc})") from None
        unknown = names - {"text", "labels"}
        if "text" not in names:
            raise ValueError("prompt_template containing the placeholder {text}")
        if unknown:
            raise ValueError(f"prompt_template placeholders among {{text}}, {{labels}}; got {sorted(unknown)}")
        return self

    def render(self, text: str) -> str:
        """The prompt for one text."""
        return self.prompt_template.format(text=text, labels=", ".join(self.labels))

    @property
    def num_classes(self) -> int:
        return len(self.labels)
