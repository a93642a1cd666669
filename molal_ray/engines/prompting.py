"""Prompts as token ids, cut to the model's context (and flagged) when a text is too long."""

from __future__ import annotations

from typing import Any

from molal_ray import schema
from molal_ray.config import TaskConfig
from molal_ray.exceptions import ConfigError

# Characters kept per removed token when a text is shortened (re-checked after each cut).
_SAFETY = 8


class PromptBuilder:
    def __init__(self, tokenizer: Any, task: TaskConfig, max_prompt_tokens: int) -> None:
        self.tok = tokenizer
        self.task = task
        self.max_prompt_tokens = max_prompt_tokens
        self.chat = bool(task.use_chat_template and getattr(tokenizer, "chat_template", None))

    def text_of(self, text: str) -> str:
        content = self.task.render(text)
        if self.chat:
            return self.tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                add_generation_prompt=True)
        return content

    def ids(self, text: str) -> list[int]:
        return list(self.tok(self.text_of(text), add_special_tokens=not self.chat)["input_ids"])

    def build(self, text: str) -> tuple[list[int], str | None]:
        """Token ids of the prompt, and a warning if the text had to be cut to fit."""
        ids = self.ids(text)
        if len(ids) <= self.max_prompt_tokens:
            return ids, None
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
            raise ConfigError(f"the prompt template alone takes {len(ids)} tokens; "
                             f"the context allows {self.max_prompt_tokens}")
        return ids, f"{schema.WARN_TRUNCATED}: text dropped entirely to fit the context"
