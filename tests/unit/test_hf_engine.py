"""The transformers engine on a tiny local Llama: exact label probabilities, valid votes, seeds."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from molal_ray.config import AnnotatorConfig, TaskConfig
from molal_ray.engines import build_engine
from tests.conftest import ENGINE_LABELS, reference_label_probs

TEXTS = [
    "What is the capital of France ?",
    "Who wrote Hamlet ?",
    "How many feet are in a mile ?",
    "Why is the sky blue ?",
    "What does NASA stand for ?",
]


def _engine(model_dir, seed=0, batch_size=2, max_model_len=256, **sampling):
    ann = AnnotatorConfig(
        name="tiny",
        engine={
            "type": "hf",
            "model": str(model_dir),
            "dtype": "float32",
            "device": "cpu",
            "batch_size": batch_size,
            "max_model_len": max_model_len,
        },
        sampling={"seed": seed, **sampling},
    )
    eng = build_engine(ann, TaskConfig(labels=ENGINE_LABELS))
    asyncio.run(eng.start())
    return eng


@pytest.fixture(scope="module")
def engine(tiny_llama):
    return _engine(tiny_llama)


def test_probs_equal_direct_forward_pass(engine):
    out = asyncio.run(engine.annotate([f"s{i}" for i in range(len(TEXTS))], TEXTS))
    assert engine.trie.max_len > 1  # multi-token labels are exercised
    for text, a in zip(TEXTS, out):
        ids, _ = engine.prompts.build(text)
        ref = reference_label_probs(engine.model, engine.tokenizer, ids, ENGINE_LABELS)
        np.testing.assert_allclose(a.probs, ref, atol=1e-4)
        assert a.error is None and a.n_invalid == 0 and a.n_samples == 10
        assert a.votes.sum() == pytest.approx(1.0)


def test_votes_are_valid_and_a_seed_repeats(engine, tiny_llama):
    ids = [f"s{i}" for i in range(len(TEXTS))]
    a = asyncio.run(engine.annotate(ids, TEXTS))
    b = asyncio.run(_engine(tiny_llama, batch_size=5).annotate(ids, TEXTS))  # other batching
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.votes, y.votes)
        assert np.all((x.votes * 10) % 1 == 0)
    c = asyncio.run(_engine(tiny_llama, seed=123).annotate(ids, TEXTS))
    assert any(not np.array_equal(x.votes, z.votes) for x, z in zip(a, c))


def test_votes_follow_the_constrained_distribution(tiny_llama):
    eng = _engine(tiny_llama, n_samples=256, temperature=1.0, top_p=1.0)
    (a,) = asyncio.run(eng.annotate(["s0"], [TEXTS[0]]))
    ids, _ = eng.prompts.build(TEXTS[0])
    steps = eng.step_logprobs([ids])[0]
    nodes = eng.trie.node_logprobs(steps)
    # Expected share of each label under the locally normalised walk over every spelling.
    expected = np.zeros(len(ENGINE_LABELS))
    for c, seq in enumerate(eng.trie.seqs):
        p = 1.0
        for j, t in enumerate(seq):
            node = eng.trie.root
            for tt in seq[:j]:
                node = node.children[tt]
            opts = list(node.children) + ([eng.trie.end_token] if node.label is not None else [])
            lp = nodes[seq[:j]][[eng.trie.vocab_index[o] for o in opts]]
            q = np.exp(lp - lp.max())
            p *= q[opts.index(t)] / q.sum()
        expected[eng.trie.seq_labels[c]] += p  # a label's spellings add up
    assert np.abs(a.votes - expected).max() < 0.1


def test_long_text_is_truncated_and_flagged(tiny_llama):
    eng = _engine(tiny_llama, max_model_len=96)
    (a,) = asyncio.run(eng.annotate(["long"], ["word " * 2000]))
    assert a.error is None and a.warning.startswith("truncated")
    ids, _ = eng.prompts.build("word " * 2000)
    assert len(ids) <= 96 - eng.trie.max_len - 1
