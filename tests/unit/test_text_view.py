"""The text-aware aggregator (``pooled-text``) and embeddings on the annotation matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from molal_ray.aggregation import Gold, build_matrix, get_aggregator
from molal_ray.aggregation.api import aggregate, attach_embeddings
from molal_ray.aggregation.text_view import TextAwareAggregator
from molal_ray.config.aggregation import parse_aggregator
from molal_ray.exceptions import AggregationError, ConfigError, SchemaError
from molal_ray.testing.synthetic import synthetic_embeddings, synthetic_table


def shared_mistake(S: int = 1500, C: int = 3, seed: int = 0):
    """Three annotators that are right except on the same 30% of class-1 samples, which all of
    them call class 2 with confidence; the embeddings separate the classes."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, C, S)
    wrong = (truth == 1) & (rng.random(S) < 0.3)
    answer = np.where(wrong, 2, truth)
    rows = []
    for a in range(3):
        noisy = np.where(rng.random(S) < 0.1, rng.integers(0, C, S), answer)
        v = np.eye(C)[noisy] * 10
        p = 0.9 * np.eye(C)[noisy] + 0.1 / C
        rows.append(
            pd.DataFrame(
                {"sample_id": [f"s{i}" for i in range(S)], "annotator": f"a{a}", "probs": list(p), "votes": list(v)}
            )
        )
    m = build_matrix(pa.Table.from_pandas(pd.concat(rows), preserve_index=False), C)
    t = truth[[int(s[1:]) for s in m.sample_ids]]
    emb = synthetic_embeddings(t, dim=16, noise=0.3, seed=seed)
    gi = np.random.default_rng(seed + 1).choice(S, 60, replace=False)
    return m.with_embeddings(m.sample_ids, emb), t, Gold(gi, t[gi], C)


def test_the_text_view_undoes_a_mistake_every_annotator_shares():
    m, t, gold = shared_mistake()
    ev = np.ones(len(m), bool)
    ev[gold.index] = False
    answers = get_aggregator("pooled").fit(m, gold).predict_proba(m).argmax(1)
    agg = get_aggregator("pooled-text").fit(m, gold)
    texts = agg.predict_proba(m).argmax(1)
    assert agg.text_used_ and agg.text_rows_ > len(gold)
    assert (answers[ev] == t[ev]).mean() < 0.9
    assert (texts[ev] == t[ev]).mean() > (answers[ev] == t[ev]).mean() + 0.05


def test_without_embeddings_it_is_the_default_aggregator_exactly():
    table, truth = synthetic_table(1500, seed=2)
    m = build_matrix(table, 6)
    gold = Gold(np.arange(50), truth[:50], 6)
    agg = get_aggregator("pooled-text", seed=4).fit(m, gold)
    assert not agg.text_used_ and "no embeddings" in agg.text_note_
    np.testing.assert_allclose(agg.predict_proba(m), get_aggregator("pooled", seed=4).fit(m, gold).predict_proba(m))


def test_a_rows_own_label_never_reaches_its_text_prediction():
    # Embeddings of pure noise in many dimensions: a model fitted on a row's own label would
    # predict it back (it can separate 300 random points); held out, the text knows nothing.
    rng = np.random.default_rng(0)
    table, truth = synthetic_table(300, seed=3)
    m = build_matrix(table, 6)
    noise = rng.standard_normal((len(m), 512)).astype(np.float32)
    m = m.with_embeddings(m.sample_ids, noise / np.linalg.norm(noise, axis=1, keepdims=True))
    gold = Gold(np.arange(60), truth[:60], 6)
    agg = TextAwareAggregator(text_c=1e6, calibrate=False).fit(m, gold)
    P = agg.text_proba(m)
    assert agg.text_used_
    assert (P[gold.index].argmax(1) == gold.y).mean() < 0.5  # chance is 1/6; memorised would be 1.0


def test_rows_without_an_embedding_keep_the_answers_label():
    m, t, gold = shared_mistake(seed=1)
    E = m.embeddings.copy()
    E[:200] = np.nan
    part = m.with_embeddings(m.sample_ids, E)
    assert part.has_embedding.sum() == len(m) - 200
    text = TextAwareAggregator(calibrate=False).fit(part, gold)
    plain = get_aggregator("pooled", calibrate=False).fit(part, gold)
    np.testing.assert_allclose(text.predict_proba(part)[:200], plain.predict_proba(part)[:200])
    assert np.isnan(text.text_proba(part)[:200]).all()


def test_embeddings_of_another_width_or_shape_are_clear_errors():
    m, _, gold = shared_mistake()
    agg = get_aggregator("pooled-text").fit(m, gold)
    wider = m.with_embeddings(m.sample_ids, np.ones((len(m), 17), np.float32))
    with pytest.raises(AggregationError, match="width 17.*fitted on width 16"):
        agg.predict_proba(wider)
    with pytest.raises(SchemaError, match="one vector per id"):
        m.with_embeddings(m.sample_ids[:10], np.ones((11, 4)))
    with pytest.raises(SchemaError, match="more than once"):
        m.with_embeddings(np.array(["s1", "s1"], dtype=object), np.ones((2, 4)))


def test_embeddings_of_another_pool_are_refused_and_a_partial_match_is_reported():
    m, t, gold = shared_mistake()
    others = np.array([f"x{i}" for i in range(len(m))], dtype=object)
    with pytest.raises(AggregationError, match="none of the table's 1500 samples"):
        attach_embeddings(m, (others, m.embeddings))
    ids = m.sample_ids.copy()
    ids[:100] = others[:100]  # 100 samples lack an embedding
    attached, info = attach_embeddings(m, (ids, m.embeddings))
    assert info == {"dim": 16, "samples_with": 1400, "samples_without": 100}
    assert attached.has_embedding.sum() == 1400


def test_aggregate_reports_the_text_view_and_says_what_it_does():
    m, t, gold = shared_mistake(S=600)
    table = pa.table(
        {
            "sample_id": np.repeat(m.sample_ids, 3),
            "annotator": np.tile(m.annotators, len(m)),
            "probs": list(m.probs.reshape(-1, 3)),
            "votes": list(m.votes.reshape(-1, 3)),
        }
    )
    ids = m.sample_ids.copy()
    ids[:10] = [f"x{i}" for i in range(10)]
    gold_df = pd.DataFrame({"sample_id": m.sample_ids[gold.index], "y": gold.y})
    said: list[str] = []
    res = aggregate(
        table, gold_df, ["a", "b", "c"], embeddings=(ids, m.embeddings), validate=False, progress=said.append
    )
    tv = res.report["text_view"]
    assert tv["used"] and tv["samples_without"] == 10 and tv["rows"] > 0
    assert any("10 of 600 samples have none" in w for w in res.report["warnings"])
    assert any("with the texts' embeddings" in s for s in said)


def test_settings_are_validated_and_the_base_settings_stay_configurable():
    s = parse_aggregator({"name": "pooled-text", "threshold": 0.95, "text_c": 100.0})
    agg = get_aggregator(s.name, **s.params())
    assert agg.threshold == 0.95 and agg.text_c == 100.0
    assert get_aggregator("pooled-text", seed=7).seed == 7  # a base class's setting, reached through **kwargs
    with pytest.raises(ValueError, match="text_cc"):
        parse_aggregator({"name": "pooled-text", "text_cc": 1.0})
    for bad in [(-1.0,), ()]:
        with pytest.raises(ConfigError, match="text_exponents"):
            TextAwareAggregator(text_exponents=bad)
    assert parse_aggregator({"name": "default", "text_exponents": [0, 3]}).params()["text_exponents"] == (0.0, 3.0)


def test_texts_that_say_nothing_earn_no_weight_and_leave_the_answers_labels_exactly():
    # The answers' shared mistake is there to be undone, but these embeddings are another
    # sample's: held out, the text view is noise, and the weight chosen on the gold rows is 0.
    m, t, gold = shared_mistake(seed=3)
    shuffled = m.with_embeddings(m.sample_ids, m.embeddings[np.random.default_rng(0).permutation(len(m))])
    agg = get_aggregator("pooled-text", seed=2).fit(shuffled, gold)
    assert agg.text_used_ and agg.text_weight == 0.0
    info = agg.text_summary()
    assert not info["used"] and info["trained"] and info["choice"]["chosen"] == 0.0
    nll = info["choice"]["held_out_nll"]
    assert nll[0] == min(nll) and nll[-1] > nll[0]  # the evidence: every weight above 0 fits gold worse
    assert "text weight 0 chosen on 60 gold rows out of fold" in info["note"]
    plain = get_aggregator("pooled", seed=2).fit(shuffled, gold)
    np.testing.assert_allclose(agg.predict_proba(shuffled), plain.predict_proba(shuffled), atol=1e-9)


def test_texts_that_separate_the_classes_earn_their_weight_on_held_out_gold_rows():
    m, t, gold = shared_mistake(seed=3)
    agg = get_aggregator("pooled-text", seed=2).fit(m, gold)
    choice = agg.text_summary()["choice"]
    assert agg.text_weight > 0 and choice["chosen"] == agg.text_weight
    assert choice["exponents"][int(np.argmin(choice["held_out_nll"]))] == agg.text_weight
    fixed = TextAwareAggregator(text_exponents=(1.0,), seed=2).fit(m, gold)
    assert fixed.text_weight == 1.0 and "(fixed;" in fixed.text_summary()["note"]  # one weight: nothing chosen


def test_too_few_gold_rows_to_weigh_the_text_view_leave_the_answers_alone():
    m, t, gold = shared_mistake(seed=3)
    few = Gold(gold.index[:8], gold.y[:8], 3)
    agg = TextAwareAggregator(seed=2).fit(m, few)
    assert agg.text_used_ and agg.text_weight == 0.0 and "too few to weigh" in agg.text_summary()["note"]


def test_a_fold_with_a_single_class_still_gives_valid_labels():
    # 21 training rows, one of another class: some of the three folds hold a single class.
    m, t, gold = shared_mistake(S=300)
    few = Gold(gold.index[:21], np.r_[np.zeros(20, np.int64), [1]], 3)
    agg = TextAwareAggregator(text_threshold=1.0, calibrate=False).fit(m, few)
    p = agg.predict_proba(m)
    assert agg.text_used_ and np.all(np.isfinite(p)) and np.allclose(p.sum(1), 1.0)
