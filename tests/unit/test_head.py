"""The head mode's pure parts: the frozen encoder, the head's fit and predictor, the embedding
files (written by the Ray Data UDF, called here without Ray) and reads by row key."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from molal_ray.config.training import ClassifierConfig
from molal_ray.exceptions import ConfigError
from molal_ray.training.head import HeadPredictor, fit_head, is_head, save_head

C = 3


def _blobs(n, seed, dim=8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    centres = np.eye(C, dim) * 3.0
    x = (centres[y] + rng.normal(size=(n, dim))).astype(np.float32)
    return {"embedding": x, "label": y, "weight": np.ones(n, np.float32), "negatives": np.zeros((n, C), np.float32)}


def _fit(train, val, **kw):
    args = dict(hidden=0, epochs=60, patience=5, learning_rate=1e-2, weight_decay=0.0, batch_size=32, lam=0.4, seed=0)
    args.update(kw)
    return fit_head(train, val, C, **args)


def test_head_learns_separable_classes_and_round_trips(tmp_path):
    train, val, test = _blobs(300, 0), _blobs(60, 1), _blobs(200, 2)
    fit = _fit(train, val)
    assert fit.val_accuracy > 0.9 and 1 <= fit.epochs_run <= 60
    save_head(str(tmp_path), fit, 8, C, 0, {"backbone": "x"})
    assert is_head(str(tmp_path)) and not is_head(str(tmp_path / "nothing"))
    pred = HeadPredictor(str(tmp_path))
    out = pred.predict(test["embedding"])
    assert out["probs"].shape == (200, C) and np.allclose(out["probs"].sum(1), 1, atol=1e-5)
    assert (out["probs"].argmax(1) == test["label"]).mean() > 0.9
    assert np.array_equal(out["embeddings"], test["embedding"])  # the frozen embeddings, for CoreSet
    noisy = pred.noisy_probs(test["embedding"][:10], noise=0.5, copies=4, seed=1)
    assert noisy.shape == (4, 10, C) and not np.allclose(noisy[0], noisy[1])
    assert np.allclose(pred.predict(test["embedding"])["probs"], out["probs"])  # weights restored


def test_weights_and_negatives_steer_the_head():
    import torch

    from molal_ray.training.head import Head

    train, val = _blobs(300, 0), _blobs(60, 1)
    flipped = dict(train, label=(train["label"] + 1) % C)  # every row mislabelled
    neg = np.zeros((300, C), np.float32)
    neg[np.arange(300), flipped["label"]] = 1.0  # ... and that wrong label is a negative
    only_negatives = dict(flipped, weight=np.zeros(300, np.float32), negatives=neg)  # the labels weigh nothing

    def p_of_flipped(fit):
        head = Head(8, C)
        head.load_state_dict(fit.state)
        head.eval()
        with torch.no_grad():
            p = torch.softmax(head(torch.as_tensor(val["embedding"])), -1).numpy()
        return p[np.arange(60), (val["label"] + 1) % C].mean()

    base = _fit(flipped, val, epochs=30, patience=100, lam=0.0)
    steered = _fit(only_negatives, val, epochs=30, patience=100, lam=1.0)
    # Early stopping keeps the epoch with the best loss on the (true) validation labels, so the
    # mislabelled run keeps an early epoch; the negatives-only run moves away from the wrong labels.
    assert base.val_accuracy < 0.2 and p_of_flipped(base) > 0.35
    assert p_of_flipped(steered) < 0.15 and steered.val_accuracy > base.val_accuracy + 0.15


def test_head_mode_is_one_worker():
    with pytest.raises(ValueError, match="num_workers 1 with mode 'head'"):
        ClassifierConfig(backbone="x", mode="head", num_workers=2)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from molal_ray.testing.tiny_models import build_tiny_bert

    corpus = ["what is the capital of france", "who wrote hamlet", "how far is the moon", "why is the sky blue"]
    return build_tiny_bert(tmp_path_factory.mktemp("bert"), corpus)


@pytest.mark.parametrize("first_tokens", [0, 2])
def test_frozen_encoder_is_unit_length_and_batch_independent(tiny_bert, first_tokens):
    from molal_ray.training.encoder import FrozenEncoder

    texts = ["who wrote hamlet", "what is the capital of france and why", "how", "why is the sky blue"]
    enc = FrozenEncoder(str(tiny_bert), max_length=16, batch_size=2, first_tokens=first_tokens)
    emb = enc(texts)
    assert enc.dim == 32 * (1 + first_tokens)
    assert emb.shape == (4, enc.dim) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([enc([t]) for t in texts])  # sorting by length, padding: no row mixed up
    assert np.allclose(emb, one_by_one, atol=1e-5)
    if first_tokens:  # the mean part points where the plain encoder's does
        plain = FrozenEncoder(str(tiny_bert), max_length=16)(texts)
        mean_part = emb[:, :32] / np.linalg.norm(emb[:, :32], axis=1, keepdims=True)
        assert np.allclose(mean_part, plain, atol=1e-5)


def test_embedding_files_align_with_the_pool_and_fetch_by_key(tmp_path, tiny_bert):
    from molal_ray.pipeline import pool_store
    from molal_ray.pipeline.embeddings import EMBEDDING, EmbedBuckets, EmbeddingStore, as_matrix
    from molal_ray.storage import resolve
    from molal_ray.training.encoder import FrozenEncoder
    from tests.unit.test_pool_store import _pool

    n = 50
    pool = _pool(tmp_path, [(f"q{i:03d}", f"question number {i} about hamlet", f"f:{i}") for i in range(n)], buckets=2)
    usable = pool.manifest.usable
    out = resolve(tmp_path / "emb")
    out.mkdirs()
    udf = EmbedBuckets(pool.folder, out, str(tiny_bert), 16, "cpu", None, 8)
    done = udf(pa.table({"bucket": [0, 1]}))
    assert done.column("rows").to_pylist() == usable
    assert udf(pa.table({"bucket": [0]})).column("rows").to_pylist() == [0]  # a file that exists is kept
    store = EmbeddingStore(out, pool, {"dim": udf.encoder.dim, "fingerprint": {}})
    keys = pool.keys_of(np.array([n - 1, 0, 7, 31]) % pool.n_usable)
    texts = pool.fetch(keys).column("text").to_pylist()
    got = store.fetch(keys)
    assert np.allclose(got, FrozenEncoder(str(tiny_bert), max_length=16)(texts), atol=1e-5)
    # read units of the embed files hold the same rows as the pool's, in the same places
    rows = pa.concat_tables(
        [
            pool_store.read_row_groups(pa.Table.from_pylist([it]), out, ["_row", EMBEDDING])
            for it in store.read_items(keys)
        ]
    )
    assert sorted(rows.column("_row").to_pylist()) == sorted(keys.tolist())
    assert as_matrix(rows.column(EMBEDDING)).shape == (4, udf.encoder.dim)


def test_head_config_fields_are_checked():
    with pytest.raises(ConfigError):
        from molal_ray.config.loop import LoopJobConfig

        LoopJobConfig.from_dict(
            {
                "task": {"labels": ["a", "b"]},
                "annotators": [],
                "pool": {"path": "p"},
                "classifier": {"backbone": "x", "mode": "frozen"},
                "output": {"path": "o"},
            }
        )


def test_a_head_fitted_in_this_process_is_saved_where_the_round_says(tmp_path):
    import pandas as pd

    from molal_ray.training.local_trainer import train_head_local

    def frame(d):  # type: ignore[no-untyped-def]
        return pd.DataFrame(
            {
                "embedding": list(d["embedding"]),
                "label": d["label"],
                "weight": d["weight"],
                "negatives": list(d["negatives"]),
            }
        )

    cfg = ClassifierConfig(backbone="x", mode="head", trainer="local", epochs=20, learning_rate=1e-2)
    for _ in range(2):  # a rerun of the round replaces its head
        res = train_head_local(
            frame(_blobs(120, 0)),
            frame(_blobs(30, 1)),
            C,
            cfg,
            0.4,
            str(tmp_path / "train"),
            "round-0",
            {"backbone": "x"},
        )
    assert res.model_dir == str(tmp_path / "train" / "round-0" / "best") and is_head(res.model_dir)
    assert HeadPredictor(res.model_dir).predict(_blobs(10, 2)["embedding"])["probs"].shape == (10, C)
