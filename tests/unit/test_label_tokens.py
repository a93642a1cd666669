"""Label spellings: the leading space a prompt calls for, in-context tokens, masses summed."""

from __future__ import annotations

import numpy as np
import pytest

from molal_ray.config import TaskConfig
from molal_ray.engines.label_tokens import first_token_logprobs, label_spellings, spellings
from molal_ray.engines.label_trie import LabelTrie

LABELS = ["entity", "human"]


@pytest.mark.parametrize(
    "prompt, space", [("Text: x\n\nLabel:", " "), ("Output:\n", ""), ("<|assistant|>\n", ""), ("", "")]
)
def test_auto_space_follows_the_prompt_end(prompt, space):
    forms = spellings(TaskConfig(labels=LABELS), prompt)
    assert forms == [(space + "entity", 0), (space + "Entity", 0), (space + "human", 1), (space + "Human", 1)]


def test_cases_and_spaces_are_configurable_and_deduplicated():
    task = TaskConfig(labels=["Entity", "human"], label_case=["as_given", "lower", "upper"], label_space="both")
    forms = dict(spellings(task, "x:"))
    assert forms == {
        "Entity": 0,
        " Entity": 0,
        "entity": 0,
        " entity": 0,
        "ENTITY": 0,
        " ENTITY": 0,
        "human": 1,
        " human": 1,
        "HUMAN": 1,
        " HUMAN": 1,
    }


def test_tokens_are_those_after_the_prompt(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    prompt = "Who wrote Hamlet ?\nLabel:"
    sp = label_spellings(tok, TaskConfig(labels=LABELS), prompt)
    ctx = tok(prompt, add_special_tokens=False)["input_ids"]
    for text, ids in zip(sp.texts, sp.tokens):
        assert text.startswith(" ")
        assert list(ctx) + list(ids) == tok(prompt + text, add_special_tokens=False)["input_ids"]
    assert sp.labels == [0, 0, 1, 1]


def test_a_label_mass_is_the_sum_of_its_spellings():
    trie = LabelTrie([[5], [6, 7], [8]], end_token=0, seq_labels=[0, 0, 1])
    seq_lp = np.log([0.2, 0.1, 0.3])
    np.testing.assert_allclose(np.exp(trie.label_logprobs(seq_lp)), [0.3, 0.3])
    np.testing.assert_allclose(trie.label_probs(seq_lp), [0.5, 0.5])
    rng = np.random.default_rng(0)
    steps = np.full((3, 3, len(trie.vocab)), -50.0)
    assert set(trie.sample(trie.node_logprobs(steps), 50, 1.0, 1.0, rng)) <= {0, 1}


def test_first_token_mass_counts_once_per_label_and_splits_between_labels():
    # label 0: [5], [5, 6] (one first token, counted once); label 1: [5, 7] shares it; label 2: [8]
    trie = LabelTrie([[5], [5, 6], [5, 7], [8]], end_token=0, seq_labels=[0, 0, 1, 2])
    root = np.zeros(len(trie.vocab))
    root[trie.vocab_index[5]], root[trie.vocab_index[8]] = np.log(0.6), np.log(0.2)
    mass = np.exp(trie.label_logprobs(first_token_logprobs(trie, root)))
    np.testing.assert_allclose(mass, [0.3, 0.3, 0.2])


def test_labels_without_a_sequence_are_refused():
    from molal_ray.exceptions import AnnotatorError

    with pytest.raises(AnnotatorError, match="at least one"):
        LabelTrie([[5], [6]], end_token=0, seq_labels=[0, 2])


def test_openai_first_token_masses_come_from_top_tokens_that_start_a_spelling():
    from molal_ray.engines.openai_engine import first_token_probs

    forms = spellings(TaskConfig(labels=["abbreviation", "entity", "human"]), "\n")
    top = {"Ab": np.log(0.3), "Entity": np.log(0.2), "entity": np.log(0.1), "The": np.log(0.3), "\n": np.log(0.1)}
    np.testing.assert_allclose(first_token_probs(top, forms, 3), [0.5, 0.5, 0.0])
    # A token starting two labels' spellings ("e" of "entity" and of a label "email") is split.
    forms2 = spellings(TaskConfig(labels=["entity", "email"]), "\n")
    np.testing.assert_allclose(first_token_probs({"e": 0.0, "Em": np.log(0.5)}, forms2, 2), [1 / 3, 2 / 3])
    assert first_token_probs({"The": 0.0}, forms, 3) is None


def test_openai_config_refuses_exact_on_chat_and_a_key_in_place_of_its_variable():
    from molal_ray.config import AnnotatorConfig
    from molal_ray.exceptions import ConfigError

    base = {"type": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m"}
    with pytest.raises(ConfigError, match="api 'completions' with label_probs 'exact'"):
        AnnotatorConfig.from_dict({"name": "a", "engine": {**base, "label_probs": "exact"}})
    with pytest.raises(ConfigError, match="the name of an environment variable"):
        AnnotatorConfig.from_dict({"name": "a", "engine": {**base, "api_key_env": "sk-abc123-def"}})
