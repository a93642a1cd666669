"""The classifier fitted on Ray Train with the robust loss, on a tiny local BERT."""

from __future__ import annotations

import numpy as np
import pytest

from molal_ray.config.training import ClassifierConfig
from molal_ray.training import negative_mask
from molal_ray.training.classifier import ClassifierPredictor
from molal_ray.training.local_trainer import train_local
from molal_ray.training.ray_trainer import rows_frame, train_classifier

pytestmark = pytest.mark.ray

A = "apple banana cherry grape melon peach plum".split()
B = "truck engine wheel brake motor clutch gear".split()


def _texts(rng, n):
    y = rng.integers(0, 2, n)
    words = [A if k == 0 else B for k in y]
    return [" ".join(rng.choice(w, 5)) for w in words], y


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from molal_ray.testing.tiny_models import build_tiny_bert

    rng = np.random.default_rng(0)
    texts, y = _texts(rng, 160)
    vtexts, vy = _texts(rng, 40)
    backbone = build_tiny_bert(tmp_path_factory.mktemp("bert"), [" ".join(A + B)] * 5)
    train = rows_frame(texts, y, np.ones(len(y)), negative_mask([[1 - k] for k in y], 2))
    val = rows_frame(vtexts, vy, np.ones(len(vy)), np.zeros((len(vy), 2)))
    return backbone, train, val, vtexts, vy


def test_train_keeps_the_best_checkpoint_and_predicts(ray_local, data, tmp_path):
    backbone, train, val, vtexts, vy = data
    cfg = ClassifierConfig(
        backbone=str(backbone), epochs=6, patience=2, batch_size=16, learning_rate=3e-3, cpus_per_worker=0.5
    )
    res = train_classifier(train, val, 2, cfg, lam=0.4, storage_path=str(tmp_path / "ray"), name="r0")
    assert res.val_accuracy >= 0.9 and 1 <= res.epochs_run <= 6
    predictor = ClassifierPredictor(res.model_dir)
    pred = predictor.predict(vtexts, noise=0.01, copies=3)
    assert pred["probs"].shape == (40, 2) and pred["embeddings"].shape[0] == 40
    assert (pred["probs"].argmax(1) == vy).mean() == pytest.approx(res.val_accuracy)
    assert pred["noisy_probs"].shape == (3, 40, 2)
    assert not np.allclose(pred["noisy_probs"][0], pred["probs"])
    # The noisy passes alone (no clean pass) give the same copies; the weights are restored after.
    np.testing.assert_allclose(predictor.noisy_probs(vtexts, noise=0.01, copies=3), pred["noisy_probs"], atol=1e-6)
    np.testing.assert_allclose(predictor.predict(vtexts)["probs"], pred["probs"], atol=1e-6)


def test_local_trainer_matches_ray_train(ray_local, data, tmp_path):
    """``trainer: local`` runs the same epochs, loss and early stopping in the driver."""
    backbone, train, val, vtexts, vy = data
    cfg = ClassifierConfig(
        backbone=str(backbone), epochs=3, patience=1, batch_size=16, learning_rate=1e-3, cpus_per_worker=0.5, threads=1
    )
    on_ray = train_classifier(train, val, 2, cfg, lam=0.4, storage_path=str(tmp_path / "ray"), name="r")
    local = train_local(
        train,
        val,
        2,
        cfg.model_copy(update={"trainer": "local"}),
        lam=0.4,
        storage_path=str(tmp_path / "local"),
        name="l",
    )
    assert local.val_accuracy >= 0.9 and on_ray.val_accuracy >= 0.9
    pa = ClassifierPredictor(on_ray.model_dir).predict(vtexts)["probs"].argmax(1)
    pl = ClassifierPredictor(local.model_dir).predict(vtexts)["probs"].argmax(1)
    assert (pa == pl).mean() >= 0.95


def test_two_data_parallel_workers_agree_on_early_stopping(ray_local, data, tmp_path):
    """With two workers each sees half of the validation rows; the accuracy is summed over both,
    so both stop at the same epoch (otherwise their report calls would not pair up)."""
    backbone, train, val, vtexts, vy = data
    cfg = ClassifierConfig(
        backbone=str(backbone),
        epochs=4,
        patience=0,
        batch_size=16,
        learning_rate=3e-3,
        num_workers=2,
        cpus_per_worker=0.5,
    )
    res = train_classifier(train, val, 2, cfg, lam=0.4, storage_path=str(tmp_path / "ddp"), name="d")
    assert res.val_accuracy >= 0.8
    pred = ClassifierPredictor(res.model_dir).predict(vtexts)["probs"].argmax(1)
    assert (pred == vy).mean() == pytest.approx(res.val_accuracy)


def test_missing_columns_are_refused(tmp_path):
    import pandas as pd

    with pytest.raises(ValueError, match="missing columns"):
        train_classifier(
            pd.DataFrame({"text": ["a"]}),
            pd.DataFrame({"text": ["a"]}),
            2,
            ClassifierConfig(backbone="x"),
            0.4,
            str(tmp_path),
            "x",
        )
