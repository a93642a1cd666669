"""Prompts as chat messages, text and token ids; cut to the model's context (and flagged).

One prompt is the task's template rendered for the text, preceded by:

- the instructions (``task.instructions``, plus the label descriptions unless the template shows
  them with ``{descriptions}``): a system message with a chat template, leading text without;
- the few-shot demonstrations: in the template's ``{examples}`` placeholder when it has one,
  else earlier user/assistant turns with a chat template, else completed prompts before it.

When a prompt does not fit the context, demonstrations are dropped first (the least similar
first), then the text is cut; either is flagged in the row's warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from molal_ray import schema
from molal_ray.config import TaskConfig
from molal_ray.config.task import FewShotExample
from molal_ray.exceptions import ConfigError

# Characters kept per removed token when a text is shortened (re-checked after each cut).
_SAFETY = 8

Demos = Sequence[FewShotExample]


def _answer_sep(prompt: str) -> str:
    return "" if not prompt or prompt[-1].isspace() else " "


class PromptMessages:
    """The chat messages or plain text of a prompt (no tokenizer needed: the openai engine sends these)."""

    def __init__(self, task: TaskConfig) -> None:
        self.task = task
        self.placeholder = "{examples}" in task.prompt_template
        system = [task.instructions or ""]
        if task.label_descriptions and "{descriptions}" not in task.prompt_template:
            system.append("Labels:\n" + task.descriptions_text())
        self.system = "\n\n".join(s for s in system if s)

    def _render(self, text: str, demos: Demos) -> str:
        examples = ""
        if self.placeholder and self.task.few_shot is not None:
            tmpl = self.task.few_shot.example_template
            examples = "".join(tmpl.format(text=d.text, label=d.label) for d in demos)
        return self.task.render(text, examples)

    def messages(self, text: str, demos: Demos = ()) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        if not self.placeholder:
            for d in demos:
                msgs += [
                    {"role": "user", "content": self.task.render(d.text)},
                    {"role": "assistant", "content": d.label},
                ]
        return msgs + [{"role": "user", "content": self._render(text, demos)}]

    def plain(self, text: str, demos: Demos = ()) -> str:
        parts = [self.system + "\n\n"] if self.system else []
        if not self.placeholder:
            for d in demos:
                shown = self.task.render(d.text)
                parts.append(shown + _answer_sep(shown) + d.label + "\n\n")
        return "".join(parts) + self._render(text, demos)


class PromptBuilder:
    def __init__(self, tokenizer: Any, task: TaskConfig, max_prompt_tokens: int) -> None:
        self.tok = tokenizer
        self.task = task
        self.max_prompt_tokens = max_prompt_tokens
        self.chat = bool(task.use_chat_template and getattr(tokenizer, "chat_template", None))
        self.parts = PromptMessages(task)

    def text_of(self, text: str, demos: Demos = ()) -> str:
        if not self.chat:
            return self.parts.plain(text, demos)
        msgs = self.parts.messages(text, demos)
        try:
            return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - jinja's TemplateError: some templates refuse a system role
            if msgs[0]["role"] != "system":
                raise
            first = msgs[1]
            msgs = [{"role": first["role"], "content": msgs[0]["content"] + "\n\n" + first["content"]}] + msgs[2:]
            return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def ids(self, text: str, demos: Demos = ()) -> list[int]:
        return list(self.tok(self.text_of(text, demos), add_special_tokens=not self.chat)["input_ids"])

    def build(self, text: str, demos: Demos = ()) -> tuple[list[int], str | None]:
        """Token ids of the prompt, and a warning if demonstrations or the text had to go to fit."""
        demos = list(demos)
        ids = self.ids(text, demos)
        dropped = 0
        while len(ids) > self.max_prompt_tokens and demos:
            demos = demos[1:]  # the least similar first
            dropped += 1
            ids = self.ids(text, demos)
        note = f"{schema.WARN_TRUNCATED}: {dropped} demonstrations dropped to fit the context" if dropped else None
        if len(ids) <= self.max_prompt_tokens:
            return ids, note
        text_ids = self.tok(text, add_special_tokens=False)["input_ids"]
        original = len(text_ids)
        keep = len(text_ids) - (len(ids) - self.max_prompt_tokens) - _SAFETY
        while keep > 0:
            cut = self.tok.decode(text_ids[:keep], skip_special_tokens=True)
            ids = self.ids(cut)
            if len(ids) <= self.max_prompt_tokens:
                return ids, f"{schema.WARN_TRUNCATED}: text cut from {original} to {keep} tokens to fit the context"
            keep -= max(_SAFETY, len(ids) - self.max_prompt_tokens)
        ids = self.ids("")
        if len(ids) > self.max_prompt_tokens:
            raise ConfigError(
                f"the prompt template alone takes {len(ids)} tokens; the context allows {self.max_prompt_tokens}"
            )
        return ids, f"{schema.WARN_TRUNCATED}: text dropped entirely to fit the context"
