"""The openai engine against a real OpenAI-compatible server: ``vllm serve`` of SmolLM2 (the
converted GGUF folder) on 127.0.0.1, started by this module and stopped by its own process id."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest

from molal_ray.config import AnnotatorConfig, TaskConfig
from molal_ray.engines import build_engine
from molal_ray.engines.openai_engine import ServerUnavailable
from molal_ray.exceptions import ConfigError
from molal_ray.testing.vllm_server import free_port
from tests.conftest import TREC_LABELS

pytest.importorskip("vllm")
pytest.importorskip("openai")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

KEY_ENV = "MOLAL_TEST_OPENAI_KEY"
KEY = "molal-test-key-5d1c"
TEXTS = ["Who wrote Hamlet ?", "How many feet are in a mile ?", "What does NASA stand for ?"]
PROMPT = "Classify the question into one of these categories: {labels}.\n\nQuestion: {text}\nCategory:"


@pytest.fixture(scope="module")
def server(smollm2):
    from molal_ray.testing.vllm_server import vllm_server

    with vllm_server(smollm2, "smollm2", api_key=KEY) as served:
        os.environ[KEY_ENV] = KEY
        yield {"url": served.url, "proc": served.proc, "model_dir": smollm2}


def _engine(url: str, **engine):
    ann = AnnotatorConfig(
        name="smol",
        engine={
            "type": "openai",
            "base_url": url,
            "model": "smollm2",
            "api_key_env": KEY_ENV,
            "max_retries": 0,
            **engine,
        },
    )
    return build_engine(ann, TaskConfig(labels=TREC_LABELS, prompt_template=PROMPT))


def _annotate(eng, ids, texts, before=None):
    """start, (before), annotate and stop in one event loop, as a Serve replica runs an engine."""

    async def go():
        await eng.start()
        try:
            if before is not None:
                before()
            return await eng.annotate(ids, texts)
        finally:
            await eng.stop()

    return asyncio.run(go())


def test_chat_first_token_answers_are_labels(server):
    eng = _engine(server["url"])
    out = _annotate(eng, [f"s{i}" for i in range(3)], TEXTS)
    for a in out:
        assert a.error is None and a.n_samples == 10 and a.n_invalid == 0
        assert a.probs.sum() == pytest.approx(1.0) and a.votes.sum() == pytest.approx(1.0)
    assert eng.requests == 6  # per text: the n=10 constrained request + one first-token request


def test_completions_exact_equal_the_hf_engine_on_the_same_model(server):
    eng = _engine(server["url"], api="completions", label_probs="exact", tokenizer=server["model_dir"])
    hf = build_engine(
        AnnotatorConfig(
            name="smol", engine={"type": "hf", "model": server["model_dir"], "dtype": "float32", "device": "cpu"}
        ),
        TaskConfig(labels=TREC_LABELS, prompt_template=PROMPT),
    )

    async def both():
        await eng.start()
        await hf.start()
        try:
            return await eng.annotate(["a", "b", "c"], TEXTS), await hf.annotate(["a", "b", "c"], TEXTS)
        finally:
            await eng.stop()

    served, local = asyncio.run(both())
    assert eng.forms == list(zip(hf.spellings.texts, hf.trie.seq_labels.tolist()))
    for a, b in zip(served, local):
        assert a.error is None
        np.testing.assert_allclose(a.probs, b.probs, atol=2e-3)


def test_bad_key_unknown_model_and_no_server_are_clear_errors_at_start(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "wrong-key")
    with pytest.raises(ServerUnavailable, match="refused the API key") as err:
        asyncio.run(_engine(server["url"]).start())
    assert "wrong-key" not in str(err.value)
    monkeypatch.setenv(KEY_ENV, KEY)
    ann = AnnotatorConfig(
        name="smol",
        engine={
            "type": "openai",
            "base_url": server["url"],
            "model": "gpt-9",
            "api_key_env": KEY_ENV,
            "max_retries": 0,
        },
    )
    with pytest.raises(ConfigError, match=r"got 'gpt-9'; .* serves \['smollm2'\]"):
        asyncio.run(build_engine(ann, TaskConfig(labels=TREC_LABELS)).start())
    with pytest.raises(ServerUnavailable, match="cannot reach"):
        asyncio.run(_engine(f"http://127.0.0.1:{free_port()}/v1").start())
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError, match=f"{KEY_ENV}' is not set"):
        asyncio.run(_engine(server["url"]).start())


def test_a_server_that_dies_fails_the_batch_whole(server):
    # Last in the module: it stops the server. The label job retries a failed batch and then
    # flags its rows (tests/integration/test_label_pipeline.py covers that path with any engine).
    def kill():
        os.killpg(server["proc"].pid, signal.SIGTERM)
        server["proc"].wait(60)

    with pytest.raises(ServerUnavailable, match="APIConnectionError"):
        _annotate(_engine(server["url"], timeout_s=10), ["s0", "s1"], TEXTS[:2], before=kill)
