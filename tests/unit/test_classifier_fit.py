"""Early stopping and batching shared by the Ray Train shell and the local trainer (no Ray)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from molal_ray.config.training import ClassifierConfig
from molal_ray.exceptions import ConfigError
from molal_ray.training import classifier


def _fit(monkeypatch, accs, patience, epochs=10):
    it = iter(accs)
    monkeypatch.setattr(classifier, "train_epoch", lambda *a, **k: 0.1)
    monkeypatch.setattr(classifier, "evaluate", lambda *a, **k: next(it))
    seen = []
    n = classifier.fit_epochs(
        None,
        None,
        None,
        epochs=epochs,
        patience=patience,
        lam=0.4,
        max_length=8,
        device=None,
        train_batches=lambda e: [],
        val_batches=lambda: [],
        on_epoch=lambda m, improved: seen.append((m["epoch"], improved)),
    )
    return n, seen


def test_stops_after_patience_epochs_without_improvement(monkeypatch):
    n, seen = _fit(monkeypatch, [0.5, 0.6, 0.6, 0.55, 0.9], patience=1)
    assert n == 4 and seen == [(0, True), (1, True), (2, False), (3, False)]
    n, seen = _fit(monkeypatch, [0.5, 0.4, 0.7, 0.6, 0.6, 0.6], patience=1, epochs=6)
    assert n == 5 and [i for e, i in seen] == [True, False, True, False, False]


def test_patience_zero_stops_at_the_first_worse_epoch_and_all_epochs_otherwise(monkeypatch):
    assert _fit(monkeypatch, [0.5, 0.5, 0.9], patience=0)[0] == 2
    assert _fit(monkeypatch, [0.1, 0.2, 0.3], patience=0, epochs=3)[0] == 3


def test_frame_batches_shuffle_rows_whole():
    df = pd.DataFrame(
        {
            "text": [f"t{i}" for i in range(10)],
            "label": np.arange(10),
            "negatives": [np.eye(10, dtype=np.float32)[i] for i in range(10)],
        }
    )
    batches = list(classifier.frame_batches(df, 4, seed=3))
    assert [len(b["label"]) for b in batches] == [4, 4, 2]
    labels = np.concatenate([b["label"] for b in batches])
    assert sorted(labels) == list(range(10)) and list(labels) != list(range(10))
    for b in batches:  # every row keeps its own text and negatives
        assert [int(t[1:]) for t in b["text"]] == list(b["label"])
        assert [int(np.argmax(v)) for v in b["negatives"]] == list(b["label"])
    again = np.concatenate([b["label"] for b in classifier.frame_batches(df, 4, seed=3)])
    assert list(again) == list(labels)
    assert list(np.concatenate([b["label"] for b in classifier.frame_batches(df, 4)])) == list(range(10))


def test_local_trainer_is_one_worker():
    with pytest.raises(ConfigError, match="num_workers 1 with trainer 'local'"):
        ClassifierConfig.from_dict({"backbone": "x", "trainer": "local", "num_workers": 2})
    with pytest.raises(ConfigError, match="trainer"):
        ClassifierConfig.from_dict({"backbone": "x", "trainer": "spark"})
    assert ClassifierConfig.from_dict({"backbone": "x", "threads": 2}).threads == 2
