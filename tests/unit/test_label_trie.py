from __future__ import annotations

import numpy as np
import pytest

from molal_ray.engines.label_trie import LabelTrie, _draw, text_rng
from molal_ray.exceptions import AnnotatorError


def test_shared_first_token_and_prefix_labels():
    # labels: [5], [5, 6], [7, 8]; end token 0
    trie = LabelTrie([[5], [5, 6], [7, 8]], end_token=0)
    assert trie.vocab == [0, 5, 6, 7, 8] and trie.max_len == 2
    V = len(trie.vocab)
    steps = np.full((3, 3, V), -50.0)
    vi = trie.vocab_index
    for c in range(3):  # root: P(5)=0.75, P(7)=0.25
        steps[c, 0, vi[5]], steps[c, 0, vi[7]] = np.log(0.75), np.log(0.25)
    steps[0, 1, vi[0]], steps[0, 1, vi[6]] = np.log(0.5), np.log(0.5)  # after [5]: end or 6
    steps[1, 1] = steps[0, 1]
    steps[2, 1, vi[8]] = 0.0  # after [7]: 8 for sure
    seq = np.exp(trie.sequence_logprobs(steps))
    np.testing.assert_allclose(seq, [0.75, 0.375, 0.25])
    draws = trie.sample(trie.node_logprobs(steps), 4000, 1.0, 1.0, np.random.default_rng(0))
    freq = np.bincount(draws, minlength=3) / 4000
    np.testing.assert_allclose(freq, [0.375, 0.375, 0.25], atol=0.03)  # locally normalised walk


def test_top_p_and_greedy():
    lp = np.log(np.array([0.6, 0.3, 0.1]))
    rng = np.random.default_rng(0)
    assert {_draw(lp, 1.0, 0.5, rng) for _ in range(200)} == {0}
    assert {_draw(lp, 1.0, 0.85, rng) for _ in range(500)} == {0, 1}
    assert _draw(lp, 0.0, 1.0, rng) == 0


def test_bad_tokenisations_are_refused():
    with pytest.raises(AnnotatorError, match="same tokens"):
        LabelTrie([[1, 2], [1, 2]], 0)
    with pytest.raises(AnnotatorError, match="no token"):
        LabelTrie([[], [1]], 0)


def test_text_rng_depends_on_text_not_batch():
    a = text_rng(3, "s1").random(3)
    assert np.allclose(a, text_rng(3, "s1").random(3))
    assert not np.allclose(a, text_rng(3, "s2").random(3))
