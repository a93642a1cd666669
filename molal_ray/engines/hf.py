"""transformers engine: batched, one prompt pass per text, exact label probabilities.

Per batch of texts: one forward pass over the (left-padded) prompts fills the KV cache; the
cache is repeated once per label and one more pass scores every label's tokens. That gives each
label's exact sequence probability and, along the way, every next-token distribution inside the
label trie, so the T constrained answers are drawn from those without any further model call.
Cost per text: the prompt once plus C short continuations, instead of T generate calls plus one
forward pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from molal_ray.annotation import Annotation
from molal_ray.config import HFEngineConfig
from molal_ray.engines.base import Engine
from molal_ray.engines.hf_scoring import annotate_steps, step_logprobs
from molal_ray.engines.label_tokens import build_label_trie
from molal_ray.engines.label_trie import text_rng
from molal_ray.engines.prompting import PromptBuilder
from molal_ray.exceptions import AnnotatorError
from molal_ray.models import local_model


def end_token_id(model: Any, tokenizer: Any) -> int:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        raise AnnotatorError("the model has no end-of-sequence token")
    return int(eos)


class HFEngine(Engine):
    engine_type = "hf"
    config_cls = HFEngineConfig
    config: HFEngineConfig

    def __init__(self, annotator, task) -> None:
        super().__init__(annotator, task)
        self.model: Any = None
        self.tokenizer: Any = None

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not self.sampling.constrained:
            raise AnnotatorError(
                f"hf engine {self.name}: answers are always constrained to the label set; "
                "set sampling.constrained: true"
            )
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            self.config.dtype
        ]
        model = local_model(self.config.model)
        try:
            remote = self.config.trust_remote_code
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=remote)
            # SDPA takes the boolean block mask of the packed label pass as is.
            loaded = AutoModelForCausalLM.from_pretrained(
                model, dtype=dtype, trust_remote_code=remote, attn_implementation="sdpa"
            )
            self.model = loaded.to(device).eval()  # type: ignore[arg-type]  # transformers' stubs
        except OSError as exc:
            raise AnnotatorError(f"hf engine {self.name}: cannot load {self.config.model!r}: {exc}") from None
        self.device = torch.device(device)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.prompts = PromptBuilder(self.tokenizer, self.task, self.config.max_model_len)
        self.trie, self.spellings = build_label_trie(
            self.tokenizer, self.task, self.prompts.text_of("x"), end_token_id(self.model, self.tokenizer)
        )
        self.prompts.max_prompt_tokens = self.config.max_model_len - self.trie.max_len - 1
        self.load_few_shot(device)

    async def annotate(self, sample_ids: Sequence[str], texts: Sequence[str]) -> list[Annotation]:
        if self.model is None:
            raise AnnotatorError(f"hf engine {self.name}: annotate() before start()")
        return await asyncio.to_thread(self._annotate, list(sample_ids), list(texts))

    def _annotate(self, sample_ids: list[str], texts: list[str]) -> list[Annotation]:
        out: list[Annotation] = []
        bs = self.config.batch_size
        for i in range(0, len(texts), bs):
            out.extend(self._batch(sample_ids[i : i + bs], texts[i : i + bs]))
        return out

    def step_logprobs(self, prompt_ids: list[list[int]]) -> np.ndarray:
        """(B, C, L+1, |trie vocab|): see :func:`molal_ray.engines.hf_scoring.step_logprobs`."""
        return step_logprobs(self.model, self.trie, prompt_ids, self.tokenizer.pad_token_id, self.device)

    def _batch(self, sample_ids: list[str], texts: list[str]) -> list[Annotation]:
        demos = self.demonstrations(sample_ids, texts)
        built = [self.prompts.build(t, d) for t, d in zip(texts, demos)]
        steps = self.step_logprobs([ids for ids, _ in built])
        s = self.sampling
        probs, votes = annotate_steps(
            self.trie, steps, s.n_samples, s.temperature, s.top_p, [text_rng(s.seed, sid) for sid in sample_ids]
        )
        return [
            Annotation(probs=p, votes=v, n_invalid=0, n_samples=s.n_samples, warning=w)
            for p, v, (_, w) in zip(probs, votes, built)
        ]

    async def check_health(self) -> None:
        if self.model is None:
            raise AnnotatorError(f"hf engine {self.name}: not started")

    async def stop(self) -> None:
        self.model = None
