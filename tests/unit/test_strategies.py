"""One behaviour test over every registered query strategy, plus each one's own property."""

from __future__ import annotations

import numpy as np
import pytest

from molal_ray.exceptions import ConfigError, PoolExhaustedError
from molal_ray.strategies import PoolView, SubsamplingQueryStrategy, available, get_strategy
from molal_ray.strategies.base import draw_rows, tiebreak, top_n

N, C, D, K = 300, 4, 8, 6


def _view(seed=0, n=N):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, C))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    noisy = np.stack([probs + rng.normal(0, 0.05, probs.shape) * probs for _ in range(K)])
    noisy = np.clip(noisy, 1e-6, None)
    noisy /= noisy.sum(2, keepdims=True)
    return PoolView(
        ids=np.array([f"u{i}" for i in range(n)]),
        probs=probs,
        embeddings=rng.normal(size=(n, D)),
        labeled_embeddings=rng.normal(size=(10, D)),
        noisy_probs=noisy,
    )


@pytest.mark.parametrize("name", available())
def test_picks_n_distinct_unlabeled_ids_deterministically(name):
    view = _view()
    s = get_strategy(name)
    a = s.select(view, 25, np.random.default_rng(1))
    assert len(a) == 25 and len(set(a)) == 25 and set(a) <= set(view.ids)
    b = get_strategy(name).select(view, 25, np.random.default_rng(1))
    assert a.tolist() == b.tolist()


@pytest.mark.parametrize("name", available())
def test_errors_when_the_pool_is_smaller_than_n(name):
    with pytest.raises(PoolExhaustedError, match="Pool exhausted: 5 available / 6 requested"):
        get_strategy(name).select(_view(n=5), 6, np.random.default_rng(0))


@pytest.mark.parametrize("name", available())
def test_subsampling_wrapper_scores_only_a_subset(name):
    s = get_strategy(name, subsample=50)
    assert isinstance(s, SubsamplingQueryStrategy)
    view = _view()
    rng = np.random.default_rng(0)
    exclude = np.arange(0, N, 3)  # labelled rows are never candidates
    rows = s.candidate_rows(N, exclude, rng)
    assert len(rows) == 50 == len(set(rows.tolist())) and not set(rows.tolist()) & set(exclude.tolist())
    sub = view.take(rows)
    picks = s.select(sub, 10, rng)
    assert set(picks) <= set(sub.ids) and len(set(picks)) == 10
    assert get_strategy(name).candidate_rows(N, exclude, rng) is None  # unwrapped: every row


def test_draw_rows_is_uniform_outside_the_excluded_rows_and_never_lists_the_pool():
    rng = np.random.default_rng(0)
    exclude = np.array([0, 1, 2, 5])
    counts = np.zeros(10)
    for _ in range(2000):
        counts[draw_rows(10, 3, exclude, rng)] += 1
    assert counts[exclude].sum() == 0
    free = np.setdiff1d(np.arange(10), exclude)
    assert np.allclose(counts[free] / 2000, 0.5, atol=0.06)  # 3 of 6 free rows each time
    assert draw_rows(10, 8, exclude, rng).tolist() == free.tolist()  # fewer left than asked: all of them
    big = draw_rows(10**12, 5, np.array([7]), rng)  # a trillion rows: drawn, not listed
    assert len(big) == 5 and big.max() < 10**12


@pytest.mark.parametrize("name", [n for n in available() if getattr(get_strategy(n), "per_row", False)])
def test_block_wise_top_n_equals_selecting_over_every_candidate(name):
    """Score strategies whose scores are per row: keeping each block's top n and merging them (as
    the loop's Ray Data scoring does) picks exactly what select() picks over all candidates."""
    view = _view(seed=3)
    strategy = get_strategy(name)
    whole = strategy.select(view, 20, np.random.default_rng(5))
    key = int(np.random.default_rng(5).integers(2**63))  # the first number select() draws
    kept = []
    for block in np.array_split(np.random.default_rng(1).permutation(N), 7):
        part = view.take(block)
        s = strategy.scores(part, np.random.default_rng(0))
        kept += [(s[i], part.ids[i]) for i in top_n(s, tiebreak(part.ids, key), 20)]
    scores, ids = np.array([k[0] for k in kept]), np.array([k[1] for k in kept], dtype=object)
    merged = ids[top_n(scores, tiebreak(ids, key), 20)]
    assert merged.tolist() == whole.tolist()


def test_ties_are_broken_by_id_not_by_position():
    view = PoolView(ids=np.array([f"u{i}" for i in range(40)]), probs=np.full((40, 4), 0.25))
    a = get_strategy("max-entropy").select(view, 5, np.random.default_rng(2))
    b = get_strategy("max-entropy").select(view.take(np.arange(40)[::-1]), 5, np.random.default_rng(2))
    assert a.tolist() == b.tolist()
    c = get_strategy("max-entropy").select(view, 5, np.random.default_rng(3))
    assert a.tolist() != c.tolist()  # another seed, another order among equals


def test_coreset_keeps_float32_blocks_and_matches_one_block():
    view = _view(seed=4)
    from molal_ray.strategies.coreset import CoreSet

    one = CoreSet(block_rows=10**6).select(view, 15, np.random.default_rng(0))
    many = CoreSet(block_rows=37).select(view, 15, np.random.default_rng(0))
    assert one.tolist() == many.tolist()


def test_missing_inputs_and_unknown_names():
    with pytest.raises(ValueError, match="lacks 'embeddings'"):
        get_strategy("coreset").select(PoolView(ids=np.array(["a", "b"])), 1, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="expected one of"):
        get_strategy("oracle")


def test_max_entropy_prefers_flat_predictions():
    probs = np.array([[0.97, 0.01, 0.01, 0.01], [0.25, 0.25, 0.25, 0.25], [0.6, 0.4, 0, 0]])
    picks = get_strategy("max-entropy").select(
        PoolView(ids=np.array(["a", "b", "c"]), probs=probs), 2, np.random.default_rng(0)
    )
    assert picks.tolist() == ["b", "c"]


def test_coreset_picks_the_far_cluster_first():
    emb = np.concatenate([np.zeros((50, 2)) + np.random.default_rng(0).normal(0, 0.01, (50, 2)), [[10.0, 10.0]]])
    view = PoolView(ids=np.arange(51).astype(str), embeddings=emb, labeled_embeddings=np.zeros((1, 2)))
    assert get_strategy("coreset").select(view, 1, np.random.default_rng(0)).tolist() == ["50"]


def test_noise_stability_prefers_unstable_samples():
    probs = np.full((3, 2), 0.5)
    noisy = np.stack([probs, probs])
    noisy[:, 1] = [[0.9, 0.1], [0.1, 0.9]]  # sample 1 moves under noise
    view = PoolView(ids=np.array(["a", "b", "c"]), probs=probs, noisy_probs=noisy)
    assert get_strategy("noise-stability").select(view, 1, np.random.default_rng(0)).tolist() == ["b"]


def test_bemps_prefers_samples_the_models_disagree_on():
    # Two models agree everywhere except on sample 0, which decides which model is right.
    rng = np.random.default_rng(0)
    base = rng.dirichlet(np.ones(3), 40)
    m1, m2 = base.copy(), base.copy()
    m1[1:20], m2[1:20] = [0.9, 0.05, 0.05], [0.05, 0.9, 0.05]  # they disagree on an estimation region
    m1[0], m2[0] = [0.99, 0.005, 0.005], [0.005, 0.99, 0.005]  # sample 0 tells them apart
    m1[20:], m2[20:] = base[20:], base[20:]
    view = PoolView(ids=np.arange(40).astype(str), noisy_probs=np.stack([m1, m2]))
    from molal_ray.strategies.bemps import BEMPS

    scores = BEMPS().scores(view, np.random.default_rng(0))
    assert np.argmax(scores) == 0
    assert np.all(scores[20:] < 1e-9)  # where the models agree, nothing is learned


def test_labelable_weighing_trades_uncertainty_for_what_the_mixture_can_label():
    from molal_ray.strategies.labelable import LabelableQueryStrategy

    flat, mid, sure = [0.25] * 4, [0.55, 0.45, 0, 0], [0.97, 0.01, 0.01, 0.01]
    view = PoolView(ids=np.array(["a", "b", "c"]), probs=np.array([flat, mid, sure]))
    view.label_confidence = np.array([0.2, 0.9, 1.0])  # the LLMs disagree where the classifier is lost
    rng = np.random.default_rng
    assert get_strategy("max-entropy").select(view, 1, rng(0)).tolist() == ["a"]
    s = get_strategy("max-entropy", labelable=1.0)
    assert isinstance(s, LabelableQueryStrategy) and s.select(view, 1, rng(0)).tolist() == ["b"]
    # ranks: a 1, b 2/3, c 1/3; with a small weight the classifier's need wins again
    assert get_strategy("max-entropy", labelable=0.1).select(view, 1, rng(0)).tolist() == ["a"]
    wrapped = get_strategy("max-entropy", subsample=2, labelable=1.0)
    assert isinstance(wrapped, SubsamplingQueryStrategy) and isinstance(wrapped.base, LabelableQueryStrategy)
    with pytest.raises(ValueError, match="lacks 'label_confidence'"):
        s.select(PoolView(ids=view.ids, probs=view.probs), 1, rng(0))
    with pytest.raises(ConfigError, match="no per-sample score"):
        get_strategy("coreset", labelable=1.0)


def test_expected_agreement_comes_from_the_nearest_annotated_texts():
    from molal_ray.strategies.labelable import agreement_shares, expected_agreement

    nan = [np.nan] * 3
    votes = np.array(
        [
            [[1, 0, 0], [1, 0, 0], [0.6, 0.4, 0]],  # all three agree
            [[1, 0, 0], [0, 1, 0], [0, 0, 1]],  # three answers, three labels
            [[0, 1, 0], [0, 0.8, 0.2], nan],  # two present, agree
            [nan, nan, nan],
        ],
        np.float32,
    )
    share = agreement_shares(votes)
    assert share[:3].tolist() == pytest.approx([1.0, 1 / 3, 1.0]) and np.isnan(share[3])
    annotated = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [5.0, 5.0]])
    cand = np.array([[1.0, 0.05], [0.05, 1.0]])
    got = expected_agreement(cand, annotated, share, k=1)
    assert got.tolist() == pytest.approx([1.0, 1 / 3])
    both = expected_agreement(cand, annotated, share, k=2, chunk=1)  # chunked: the same as one block
    assert both.tolist() == pytest.approx(expected_agreement(cand, annotated, share, k=2).tolist())
    assert expected_agreement(cand, annotated[:0], share[:0]).tolist() == [1.0, 1.0]
