"""OpenAI-compatible engine: a server the user already runs (``vllm serve``, Ray Serve LLM's
OpenAI app, others), through the ``openai`` client.

Per text: one request with ``n=T`` sampled answers (constrained to the label spellings with vLLM's
structured-output ``choice`` when ``sampling.constrained``; parsed otherwise) and the label
probabilities from log-probabilities:

- ``label_probs: first_token``: the first answer token's ``top_logprobs``, from one greedy
  one-token request without constraints (under structured outputs the server returns
  grammar-masked log-probabilities; with free answers the sampling request's own first step
  serves). A top token counts for a label when some spelling of it starts with the token's text;
  a token shared by several labels is split equally between them. Exact when every spelling is
  one token and in the top list; labels outside the top list get no mass (flagged when none is
  in it).
- ``label_probs: exact`` (completions only): each spelling appended to the prompt and scored with
  ``echo`` (the log-probabilities of the prompt's own tokens), one request per spelling, which a
  server with prefix caching answers from the cached prompt.

Requests go out at most ``max_concurrency`` at a time; the client retries failed ones with
exponential back-off (``max_retries``). A server that cannot be reached, refuses the key, or keeps
failing makes the whole batch fail (raised, as a dead engine's batch is), so the label job retries
it and then flags its rows; one request that the server rejects (a prompt too long) is one error
row. The API key is read from the environment variable ``api_key_env`` names and is never logged.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from molal_ray import schema
from molal_ray.annotation import Annotation, votes_from_answers
from molal_ray.config import OpenAIEngineConfig
from molal_ray.engines.base import Engine
from molal_ray.engines.label_tokens import spellings
from molal_ray.engines.prompting import PromptBuilder, PromptMessages
from molal_ray.exceptions import AnnotatorError, ConfigError


class ServerUnavailable(AnnotatorError):
    """The server cannot answer (unreachable, refusing the key, failing after retries)."""


def first_token_probs(top: dict[str, float], forms: Sequence[tuple[str, int]], num_labels: int) -> np.ndarray | None:
    """Label masses from one step's top tokens (text -> log-prob), or None when no top token
    starts a label spelling."""
    mass = np.zeros(num_labels)
    for tok, lp in top.items():
        t = tok.lstrip()
        if not t:
            continue
        owners = {lab for text, lab in forms if text.lstrip().startswith(t)}
        for lab in owners:
            mass[lab] += np.exp(lp) / len(owners)
    return mass / mass.sum() if mass.sum() > 0 else None


class OpenAIEngine(Engine):
    engine_type = "openai"
    config_cls = OpenAIEngineConfig
    config: OpenAIEngineConfig

    def __init__(self, annotator, task) -> None:
        super().__init__(annotator, task)
        self.client: Any = None
        self.requests = 0  # requests sent (benchmarks and tests)

    # -- set-up ---------------------------------------------------------------------------
    def _api_key(self) -> str:
        env = self.config.api_key_env
        if env is None:
            return "none"  # servers without authentication accept any key
        key = os.environ.get(env)
        if not key:
            raise ConfigError(
                f"annotators[{self.name}].engine.api_key_env: the environment variable {env!r} "
                "is not set (it should hold the API key)"
            )
        return key

    async def start(self) -> None:
        import openai

        self.client = openai.AsyncOpenAI(
            base_url=self.config.base_url,
            api_key=self._api_key(),
            max_retries=self.config.max_retries,
            timeout=self.config.timeout_s,
        )
        self.gate = asyncio.Semaphore(self.config.max_concurrency)
        self.parts = PromptMessages(self.task)
        self.prompts: PromptBuilder | None = None
        if self.config.api == "completions" and self.config.tokenizer and self.task.use_chat_template:
            from transformers import AutoTokenizer

            from molal_ray.models import local_model

            tok = AutoTokenizer.from_pretrained(await asyncio.to_thread(local_model, self.config.tokenizer))
            self.prompts = PromptBuilder(tok, self.task, 10**9)
        self.forms = spellings(
            self.task, self._prompt_text("x", []) if self.config.api == "completions" else "\n"
        )  # a chat answer starts a fresh turn
        self.choices = [text for text, _ in self.forms]
        try:
            await self.check_health()
        except BaseException:
            await self.stop()
            raise
        await asyncio.to_thread(self.load_few_shot)

    async def check_health(self) -> None:
        import openai

        if self.client is None:
            raise AnnotatorError(f"openai engine {self.name}: not started")
        try:
            served = [m.id async for m in self.client.models.list()]
        except openai.AuthenticationError:
            raise ServerUnavailable(
                f"openai engine {self.name}: {self.config.base_url} refused the API key "
                f"(from ${self.config.api_key_env})"
            ) from None
        except openai.APIError as exc:
            raise ServerUnavailable(
                f"openai engine {self.name}: cannot reach {self.config.base_url}: {type(exc).__name__}: {exc}"
            ) from None
        if self.config.model not in served:
            raise ConfigError(
                f"annotators[{self.name}].engine.model: got {self.config.model!r}; "
                f"{self.config.base_url} serves {served}"
            )

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    def info(self) -> dict[str, Any]:
        return {**super().info(), "base_url": self.config.base_url, "model": self.config.model}

    # -- requests -------------------------------------------------------------------------
    def _prompt_text(self, text: str, demos: list[Any]) -> str:
        if self.prompts is not None:
            return self.prompts.text_of(text, demos)
        return self.parts.plain(text, demos)

    async def _call(self, fn: Any, **kwargs: Any) -> Any:
        import openai

        async with self.gate:
            self.requests += 1
            try:
                return await fn(model=self.config.model, **kwargs)
            except (
                openai.APIConnectionError,
                openai.AuthenticationError,
                openai.PermissionDeniedError,
                openai.RateLimitError,
                openai.InternalServerError,
            ) as exc:
                raise ServerUnavailable(
                    f"openai engine {self.name}: {self.config.base_url}: {type(exc).__name__}: {str(exc)[:200]}"
                ) from None

    def _extra(self, constrained: bool) -> dict[str, Any]:
        extra = self._base_extra()
        if constrained and self.config.structured_choice:
            extra["structured_outputs"] = {"choice": self.choices}
        return extra

    def _base_extra(self) -> dict[str, Any]:
        extra = dict(self.config.extra_body)
        if self.prompts is not None and self.prompts.chat:
            # The chat template already wrote the special tokens (vLLM's completions would add a BOS).
            extra.setdefault("add_special_tokens", False)
        return extra

    async def _sample(
        self, prompt: Any, n: int, constrained: bool, logprobs: bool, max_tokens: int, temperature: float, top_p: float
    ) -> tuple[list[str], dict[str, float] | None]:
        """n answers, and the first step's top log-probs (when asked)."""
        s = self.sampling
        common: dict[str, Any] = {
            "n": n,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "extra_body": self._extra(constrained),
        }
        if s.seed is not None:
            common["seed"] = s.seed
        k = self.config.top_logprobs
        if self.config.api == "chat":
            if logprobs:
                common.update(logprobs=True, top_logprobs=k)
            r = await self._call(self.client.chat.completions.create, messages=prompt, **common)
            answers = [c.message.content or "" for c in r.choices]
            top = None
            if logprobs and r.choices and r.choices[0].logprobs and r.choices[0].logprobs.content:
                top = {t.token: t.logprob for t in r.choices[0].logprobs.content[0].top_logprobs}
        else:
            if logprobs:
                common["logprobs"] = k
            r = await self._call(self.client.completions.create, prompt=prompt, **common)
            answers = [c.text or "" for c in r.choices]
            top = None
            if logprobs and r.choices and r.choices[0].logprobs and r.choices[0].logprobs.top_logprobs:
                top = dict(r.choices[0].logprobs.top_logprobs[0])
        return answers, top

    async def _score(self, prompt: str, spelling: str) -> float:
        """log P(spelling | prompt) from the echoed prompt's token log-probs."""
        r = await self._call(
            self.client.completions.create,
            prompt=prompt + spelling,
            max_tokens=1,
            temperature=0.0,
            echo=True,
            logprobs=0,
            extra_body=self._base_extra(),
        )
        lp = r.choices[0].logprobs
        end = len(prompt + spelling)
        total = 0.0
        for off, val in zip(lp.text_offset, lp.token_logprobs):
            if len(prompt) <= off < end and val is not None:
                total += val
        return total

    async def _one(self, text: str, demos: list[Any]) -> Annotation:
        s = self.sampling
        prompt: Any = self.parts.messages(text, demos) if self.config.api == "chat" else self._prompt_text(text, demos)
        max_tokens = s.max_tokens or (max(len(c) for c in self.choices) + 2)
        free_first = not s.constrained and self.config.label_probs == "first_token"
        answers, top = await self._sample(
            prompt, s.n_samples, s.constrained, free_first, max_tokens, s.temperature, s.top_p
        )
        votes, n_invalid = votes_from_answers(self.parser.parse_many(answers), self.task.num_classes)
        warning = None
        if self.config.label_probs == "exact":
            scores = await asyncio.gather(*[self._score(prompt, form) for form, _ in self.forms])
            per_label = np.full(self.task.num_classes, -np.inf)
            np.logaddexp.at(per_label, [lab for _, lab in self.forms], np.asarray(scores))
            probs = np.exp(per_label - per_label.max())
            probs /= probs.sum()
        else:
            if top is None:
                _, top = await self._sample(prompt, 1, False, True, 1, 0.0, 1.0)
            found = first_token_probs(top or {}, self.forms, self.task.num_classes)
            if found is None:
                probs = np.full(self.task.num_classes, 1.0 / self.task.num_classes)
                warning = (
                    f"no_label_in_top_logprobs: none of the top {self.config.top_logprobs} first tokens starts a label"
                )
            else:
                probs = found
        return Annotation(probs=probs, votes=votes, n_invalid=n_invalid, n_samples=len(answers), warning=warning)

    async def annotate(self, sample_ids: Sequence[str], texts: Sequence[str]) -> list[Annotation]:
        if self.client is None:
            raise AnnotatorError(f"openai engine {self.name}: annotate() before start()")
        demos = await asyncio.to_thread(self.demonstrations, sample_ids, texts)
        results = await asyncio.gather(*[self._one(t, d) for t, d in zip(texts, demos)], return_exceptions=True)
        out = []
        for r in results:
            if isinstance(r, ServerUnavailable):
                raise r  # the batch fails whole; the caller retries it, then flags its rows
            if isinstance(r, BaseException):
                out.append(Annotation.failed(f"{schema.ERR_ENGINE}: {type(r).__name__}: {str(r)[:200]}"))
            else:
                out.append(r)
        return out
