"""Aggregators: one behaviour test over every registered one, plus each one's own checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from molal_ray import schema
from molal_ray.aggregation import Gold, available, build_matrix, get_aggregator
from molal_ray.exceptions import ConfigError, SchemaError
from molal_ray.testing.synthetic import synthetic_table

N = 3000


@pytest.fixture(scope="module")
def synth():
    table, truth = synthetic_table(N, seed=1)
    m = build_matrix(table, 6)
    rng = np.random.default_rng(0)
    gi = rng.choice(N, 50, replace=False)
    return table, truth, m, Gold(gi, truth[gi], 6)


@pytest.mark.parametrize("name", available())
def test_every_aggregator_behaves(name, synth):
    _, truth, m, gold = synth
    agg = get_aggregator(name)
    assert agg.fit(m, gold) is agg
    p = agg.predict_proba(m)
    assert p.shape == (N, 6)
    assert np.all(np.isfinite(p)) and np.all(p >= 0)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    ev = np.ones(N, bool)
    ev[gold.index] = False
    assert (p.argmax(1)[ev] == truth[ev]).mean() > 0.6  # far above chance (1/6)
    # deterministic
    np.testing.assert_allclose(get_aggregator(name).fit(m, gold).predict_proba(m), p)


@pytest.mark.parametrize("name", available())
def test_settings_rebuild_an_equal_unfitted_aggregator(name, synth):
    _, _, m, gold = synth
    agg = get_aggregator(name, seed=3).fit(m, gold)
    assert not any(k.endswith("_") for k in agg.settings())  # fitted state is not a setting
    copy = type(agg)(**agg.settings())
    assert copy.settings() == agg.settings()
    np.testing.assert_allclose(copy.fit(m, gold).predict_proba(m), agg.predict_proba(m))


@pytest.mark.parametrize("name", available())
def test_every_aggregator_copes_with_absent_annotators(name, synth):
    table, truth, _, _ = synth
    # Drop annotator llm0 for the first 100 samples and every annotator for sample 200.
    sid = np.asarray(table.column("sample_id").to_pylist())
    ann = np.asarray(table.column("annotator").to_pylist())
    ids = [f"s{i:08d}" for i in range(N)]
    drop = ((ann == "llm0") & np.isin(sid, ids[:100])) | (sid == ids[200])
    t = table.filter(pa.array(~drop))
    m = build_matrix(t, 6, sample_ids=np.asarray(ids, dtype=object))
    assert not m.present[:100, 0].any() and not m.present[200].any()
    gold = Gold(np.arange(300, 350), truth[300:350], 6)
    p = get_aggregator(name).fit(m, gold).predict_proba(m)
    assert np.all(np.isfinite(p)) and p.shape == (N, 6)
    np.testing.assert_allclose(p[200].sum(), 1.0, atol=1e-6)  # no annotator: still a valid label


def test_dawid_skene_undoes_a_systematic_confusion():
    # Three annotators that always answer (true + 1) % C and two weak honest ones.
    rng = np.random.default_rng(0)
    S, C = 2000, 4
    truth = rng.integers(0, C, S)
    rows = []
    for a in range(5):
        if a < 3:
            ans = (truth + 1) % C
        else:
            ans = np.where(rng.random(S) < 0.5, truth, rng.integers(0, C, S))
        v = np.eye(C)[ans]
        rows.append(
            pd.DataFrame(
                {"sample_id": [f"s{i}" for i in range(S)], "annotator": f"a{a}", "probs": list(v), "votes": list(v)}
            )
        )
    m = build_matrix(pa.Table.from_pandas(pd.concat(rows), preserve_index=False), C)
    order = np.argsort([int(s[1:]) for s in m.sample_ids])
    t = truth[[int(s[1:]) for s in m.sample_ids]]
    gold = Gold(order[:40], t[order[:40]], C)
    mv = get_aggregator("majority").fit(m, gold).predict_proba(m).argmax(1)
    ds = get_aggregator("dawid-skene").fit(m, gold).predict_proba(m).argmax(1)
    assert (mv == t).mean() < 0.1
    assert (ds == t).mean() > 0.95


def test_unknown_aggregator_lists_the_known_ones():
    with pytest.raises(ConfigError, match="expected one of .*dawid-skene"):
        get_aggregator("magic")


def test_matrix_flags_bad_rows_as_absent_and_rejects_wrong_lengths():
    t = pa.table(
        {
            "sample_id": ["a", "a", "b", "b"],
            "annotator": ["x", "y", "x", "y"],
            "probs": [[0.5, 0.5], [float("nan"), 1.0], [1.0, 0.0], [0.2, -0.1]],
            "votes": [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]],
            "error": [None, None, "empty_text", None],
        }
    )
    m = build_matrix(t, 2)
    assert m.present.tolist() == [[True, False], [False, False]]
    bad = t.set_column(2, "probs", pa.array([[0.5, 0.5], [1.0], [1.0, 0.0], [0.2, 0.8]]))
    with pytest.raises(SchemaError, match=r"'probs' has 1 rows of the wrong length \(first at row 1: got 1"):
        build_matrix(bad, 2)
    with pytest.raises(SchemaError, match="missing columns"):
        build_matrix(t.drop_columns(["votes"]), 2)
    assert schema.PROBS == "probs"


def test_temperature_is_recovered_and_keeps_the_argmax():
    from molal_ray.aggregation.calibration import apply_temperature, fit_temperature

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 6))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(6, p=p) for p in true_p])
    sharp = apply_temperature(true_p, 0.25)  # overconfident by a factor of 4 in log space
    t = fit_temperature(sharp, y)
    assert t == pytest.approx(4.0, rel=0.1)
    assert np.allclose(apply_temperature(sharp, t), true_p, atol=0.05)
    assert (apply_temperature(sharp, t).argmax(1) == sharp.argmax(1)).all()
    assert fit_temperature(sharp[:0], y[:0]) == 1.0


def test_default_confidence_is_calibrated_on_gold_out_of_fold(synth):
    """Self-training makes the pooled model overconfident; the temperature fitted out of fold on
    the gold rows brings its mean confidence near its accuracy without changing a label."""
    from molal_ray.aggregation.pooled import PooledAggregator

    _, truth, m, gold = synth
    raw = PooledAggregator(calibrate=False).fit(m, gold).predict_proba(m)
    cal_model = PooledAggregator().fit(m, gold)
    cal = cal_model.predict_proba(m)
    acc = (cal.argmax(1) == truth).mean()
    assert (cal.argmax(1) == raw.argmax(1)).all()
    assert cal_model.temperature_ != 1.0
    assert abs(cal.max(1).mean() - acc) < abs(raw.max(1).mean() - acc)
    assert abs(cal.max(1).mean() - acc) < 0.05


def test_the_gold_only_models_weight_grows_with_the_gold(synth):
    """The gold-only model enters the pool with exponent n / (n + gold_half_weight_rows): half
    of Dawid-Skene's at 50 rows by default, near 1 with many rows, 1 when the setting is 0."""
    from molal_ray.aggregation.pooled import PooledAggregator, gold_exponent

    assert gold_exponent(50, 50.0) == pytest.approx(0.5)
    assert gold_exponent(450, 50.0) == pytest.approx(0.9)
    assert gold_exponent(50, 0.0) == 1.0
    _, _, m, gold = synth
    assert PooledAggregator(calibrate=False).fit(m, gold).gold_exponent_ == pytest.approx(0.5)
    assert PooledAggregator(calibrate=False, gold_half_weight_rows=150).fit(m, gold).gold_exponent_ == pytest.approx(
        0.25
    )
    with pytest.raises(ConfigError, match="gold_half_weight_rows"):
        PooledAggregator(gold_half_weight_rows=-1)


def test_self_training_keeps_the_most_confident_share_of_every_predicted_class(synth):
    """Rows enter self-training above the threshold; besides, each class the pool predicts keeps
    its ``class_floor`` most confident share, so a class that never reaches the threshold is not
    dropped from the fit (and so from the model's predictions)."""
    from molal_ray.aggregation.pooled import PooledAggregator, self_training_rows

    rng = np.random.default_rng(0)
    Q = rng.dirichlet(np.ones(3) * 0.3, size=400)
    weak = Q.argmax(1) == 2
    Q[weak] = rng.dirichlet([1.0, 1.0, 6.0], size=int(weak.sum()))  # class 2: predicted, never sure
    Q[weak] /= np.maximum(Q[weak].max(1, keepdims=True) / 0.9, 1.0)
    Q = Q / Q.sum(1, keepdims=True)
    conf, label = Q.max(1), Q.argmax(1)
    assert (label == 2).sum() > 10 and conf[label == 2].max() < 0.98
    plain = self_training_rows(Q, 0.98, 0.0)
    np.testing.assert_array_equal(plain, np.flatnonzero(conf >= 0.98))
    assert not (label[plain] == 2).any()
    floored = self_training_rows(Q, 0.98, 0.5)
    assert set(plain) <= set(floored)
    for k in range(3):
        rows_k = np.flatnonzero(label == k)
        kept = np.intersect1d(floored, rows_k)
        assert len(kept) >= np.ceil(0.5 * len(rows_k))
        # what a class keeps is its most confident rows
        assert conf[kept].min() >= np.sort(conf[rows_k])[::-1][int(np.ceil(0.5 * len(rows_k))) - 1]
    assert len(self_training_rows(Q, 2.0, 1.0)) == len(Q)
    assert len(self_training_rows(Q[:0], 0.98, 0.5)) == 0
    _, _, m, gold = synth
    without = PooledAggregator(calibrate=False, class_floor=0.0, max_passes=1).fit(m, gold)
    with_floor = PooledAggregator(calibrate=False, max_passes=1).fit(m, gold)
    assert with_floor.n_pseudo_ >= without.n_pseudo_
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="class_floor"):
            PooledAggregator(class_floor=bad)


def test_an_aggregators_ranges_are_declared_once_for_the_config_and_the_constructor():
    """The ranges in the constructor's annotations are what the config checks too (the settings
    model is built from them), and a direct call gets the same refusal."""
    from pydantic import ValidationError

    from molal_ray.aggregation.pooled import PooledAggregator
    from molal_ray.config.aggregation import parse_aggregator

    assert parse_aggregator({"name": "pooled", "class_floor": 0.25}).params()["class_floor"] == 0.25
    for key, bad in (("class_floor", 1.5), ("max_passes", 0), ("tol", -1.0), ("balance_classes", "yes")):
        with pytest.raises(ValidationError, match=key):
            parse_aggregator({"name": "pooled", key: bad})
        with pytest.raises(ValidationError, match=key):  # the default inherits pooled's ranges
            parse_aggregator({"name": "default", key: bad})
        with pytest.raises(ConfigError, match=key):
            PooledAggregator(**{key: bad})


def test_self_training_weights_classes_toward_balance_with_a_cap(synth):
    """Each class's rows weigh n / (K n_k), as scikit-learn's balanced class weights, but at most
    ``max_class_weight``, so a rare class is lifted without being blown up."""
    from sklearn.utils.class_weight import compute_class_weight

    from molal_ray.aggregation.pooled import PooledAggregator, balanced_weights

    y = np.array([0] * 60 + [2] * 30 + [5] * 10)
    plain = balanced_weights(y, float("inf"))
    sk = compute_class_weight("balanced", classes=np.array([0, 2, 5]), y=y)
    np.testing.assert_allclose(plain, sk[np.searchsorted([0, 2, 5], y)])
    np.testing.assert_allclose((plain[y == 0].sum(), plain[y == 2].sum(), plain[y == 5].sum()), 100 / 3)
    capped = balanced_weights(y, 2.0)
    np.testing.assert_allclose(capped[y == 5], 2.0)  # 100 / (3 * 10) = 3.33, capped
    np.testing.assert_allclose(capped[y != 5], plain[y != 5])
    np.testing.assert_allclose(balanced_weights(np.array([1, 1, 1]), 2.0), 1.0)
    # The aggregator uses them: the fit with them on differs from the fit with them off.
    _, _, m, gold = synth
    on = PooledAggregator(calibrate=False, max_passes=1).fit(m, gold)
    off = PooledAggregator(calibrate=False, max_passes=1, balance_classes=False).fit(m, gold)
    lr_on, lr_off = on.model_[-1], off.model_[-1]
    assert not np.allclose(lr_on.coef_, lr_off.coef_)
    for bad in (0.5, float("nan")):
        with pytest.raises(ConfigError, match="max_class_weight"):
            PooledAggregator(max_class_weight=bad)
    with pytest.raises(ConfigError, match="balance_classes"):
        PooledAggregator(balance_classes="no")


def test_self_training_repeats_until_the_pool_labels_settle(synth):
    """Each pass relabels the pool with the model just fitted; it stops at the first pass that
    changes fewer than ``tol`` of the pool's labels, well before a generous ``max_passes``."""
    from molal_ray.aggregation.pooled import PooledAggregator

    _, truth, m, gold = synth
    one = PooledAggregator(calibrate=False, max_passes=1).fit(m, gold)
    assert one.passes_ == 1 and len(one.label_changes_) == 1
    many = PooledAggregator(calibrate=False, max_passes=50).fit(m, gold)
    assert 1 < many.passes_ < 50
    assert len(many.label_changes_) == many.passes_
    assert many.label_changes_[-1] < many.tol <= min(many.label_changes_[:-1])
    # Without the stop (tol 0) it runs on, and its first passes are the same passes.
    again = PooledAggregator(calibrate=False, max_passes=many.passes_ + 1, tol=0.0).fit(m, gold)
    assert again.passes_ == many.passes_ + 1
    np.testing.assert_allclose(again.label_changes_[: many.passes_], many.label_changes_)
    with pytest.raises(ConfigError, match="max_passes"):
        PooledAggregator(max_passes=0)
    with pytest.raises(ConfigError, match="tol"):
        PooledAggregator(tol=float("nan"))
    with pytest.raises(ConfigError, match="threshold"):
        PooledAggregator(threshold=-0.1)


def test_the_gold_models_regularisation_is_chosen_once_per_gold_set(monkeypatch):
    # A loop refits its aggregator each round on the same gold rows: the cross-validated choice
    # of C is made once for the same features, labels and seed, and again for any other.
    from molal_ray.aggregation import pooled

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 6)), rng.integers(0, 3, 40)
    calls = []
    real = pooled._choose_c
    monkeypatch.setattr(pooled, "_choose_c", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(pooled, "_CHOSEN_C", type(pooled._CHOSEN_C)())
    c = pooled.choose_c(X, y, 0)
    assert c in pooled.C_GRID and c == real(X, y, 0) and len(calls) == 1
    assert pooled.choose_c(X.copy(), y.copy(), 0) == c and len(calls) == 1  # the same set: remembered
    y2 = y.copy()
    y2[0] = (y2[0] + 1) % 3
    X2 = X.copy()
    X2[0, 0] += 1e-9
    for args in ((X, y2, 0), (X2, y, 0), (X, y, 1), (X[:39], y[:39], 0)):
        pooled.choose_c(*args)
    assert len(calls) == 5  # another label, feature value, seed or row count: chosen again
    monkeypatch.setattr(pooled, "_CHOSEN_C_KEPT", 2)
    pooled.choose_c(X, y, 2)
    assert len(pooled._CHOSEN_C) == 2  # bounded: the least recently used are forgotten
    pooled.forget_chosen_c()
    pooled.choose_c(X, y, 0)
    assert len(calls) == 7  # forgotten on demand (a benchmark timing a fresh process)
