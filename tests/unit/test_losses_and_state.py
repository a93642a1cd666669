from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from molal_ray.exceptions import SchemaError
from molal_ray.loop import LabeledRow, LoopState
from molal_ray.training import discrepancy_weights, lambda_for_round, negative_mask, robust_loss


def test_lambda_ramp_of_the_paper():
    assert [round(lambda_for_round(r), 2) for r in range(3)] == [0.4, 0.46, 0.52]
    assert round(lambda_for_round(2, start=0.1, step=0.5), 2) == 1.1


def test_discrepancy_weights_only_for_disagreeing_molam_rows():
    w = discrepancy_weights(np.array([0, 1, 2, 2]), np.array([0, 2, 1, 2]), 0.5)
    assert w.tolist() == [1.0, 0.5, 0.5, 1.0]
    assert discrepancy_weights(np.array([0, 1]), None, 0.5).tolist() == [1.0, 1.0]


def test_weights_and_negatives_follow_their_rows_when_shuffled():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    w = torch.tensor([1.0, 0.5, 1.0, 0.5, 1.0, 1.0])
    neg = torch.tensor(negative_mask([[1], [], [0, 3], [2], [], [3]], 4))
    perm = torch.randperm(6)
    a = robust_loss(logits, y, w, neg, 0.4)
    b = robust_loss(logits[perm], y[perm], w[perm], neg[perm], 0.4)
    torch.testing.assert_close(a, b)
    # A weight applies to its own row: halving row 1's weight changes the loss by half its CE / N.
    ce1 = torch.nn.functional.cross_entropy(logits[1:2], y[1:2])
    w2 = w.clone()
    w2[1] = 1.0
    torch.testing.assert_close(robust_loss(logits, y, w2, neg, 0.4) - a, 0.5 * ce1 / 6)


def test_negative_term_pushes_the_negative_class_down():
    logits = torch.zeros(1, 3, requires_grad=True)
    neg = torch.tensor([[0.0, 0.0, 1.0]])
    loss = robust_loss(logits, torch.tensor([0]), torch.tensor([0.0]), neg, 1.0)  # only the NL term
    loss.backward()
    assert logits.grad[0, 2] > 0  # gradient descent lowers logit 2, so p_2 goes down
    with torch.no_grad():
        after = torch.softmax(logits - 0.5 * logits.grad, -1)[0, 2]
    assert after < 1 / 3


def test_state_save_load_resume(tmp_path):
    """The state holds the labelled rows (with their pool row keys), the round and the history:
    it grows with the labelled set, never with the pool."""
    s = LoopState(labels=["a", "b"], seed=3, pool="abc", cascade={"stages": [["m"], ["n"]], "gold_rows": 1})
    s.add([LabeledRow("x", 7, 0, "gold"), LabeledRow("y", 3, 1, "molal", 0.5, [0], previous_pred=0)])
    s.round = 1
    s.history.append({"round": 0, "n_labeled": 2, "test_accuracy": 0.5})
    s.save(tmp_path)
    t = LoopState.load(tmp_path)
    assert t == s and t.labeled[1].negatives == [0] and t.label_rows().tolist() == [3, 7]
    assert t.labeled[1].previous_pred == 0 and t.cascade == {"stages": [["m"], ["n"]], "gold_rows": 1}
    saved = json.loads((tmp_path / "state.json").read_text())
    assert set(saved) == {"version", "labels", "round", "labeled", "history", "seed", "pool", "cascade"}
    saved.pop("cascade")  # a state saved before the cascade and relabel fields still loads
    for row in saved["labeled"]:
        row.pop("previous_pred")
    older = LoopState.from_dict(saved)
    assert older.cascade is None and [r.previous_pred for r in older.labeled] == [-1, -1]
    with pytest.raises(SchemaError, match="labelled twice"):
        t.add([LabeledRow("x", 9, 1, "molal")])
    with pytest.raises(SchemaError, match="nothing to resume"):
        LoopState.load(tmp_path / "none")
    old = json.loads((tmp_path / "state.json").read_text())
    old.pop("version")
    with pytest.raises(SchemaError, match="another version"):
        LoopState.from_dict(old)
