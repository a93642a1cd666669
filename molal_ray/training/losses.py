"""The paper's robust training terms (pure torch; weights and negatives are per-row columns).

- *Annotation discrepancy*: a sample labelled by MoLAM whose label disagrees with the previous
  round's classifier gets weight ``alpha`` (paper: 0.5) in the cross-entropy; gold samples and
  agreeing ones get 1.
- *Negative learning*: for each class k that MoLAM deems near-impossible for a sample (its
  ``negatives``), the loss adds -log(1 - p_k), pushing p_k down; its weight lambda grows with the
  round (paper: 0.4 + 0.06 x round).

Rows carry their own weight and negative mask through any shuffling, so nothing is matched to a
batch by position.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-6


def lambda_for_round(round_index: int, start: float = 0.4, step: float = 0.06) -> float:
    """Weight of the negative-learning term in a round (paper: 0.4 + 0.06 x round)."""
    return start + step * round_index


def discrepancy_weights(labels: np.ndarray, previous_pred: np.ndarray | None, alpha: float) -> np.ndarray:
    """1 for rows whose MoLAM label agrees with the previous classifier's prediction; alpha for
    the others (gold rows never come here: they weigh 1). Without a previous classifier (round
    0) every row weighs 1."""
    w = np.ones(len(labels), dtype=np.float32)
    if previous_pred is None:
        return w
    disagree = np.asarray(labels) != np.asarray(previous_pred)
    w[disagree] = alpha
    return w


def negative_mask(negatives: list[list[int]], num_classes: int) -> np.ndarray:
    """(N, C) 0/1 mask of each row's negative classes."""
    m = np.zeros((len(negatives), num_classes), dtype=np.float32)
    for i, neg in enumerate(negatives):
        m[i, list(neg)] = 1.0
    return m


def robust_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, negatives: torch.Tensor, lam: float
) -> torch.Tensor:
    """Weighted cross-entropy + lam x negative-learning loss, averaged over the batch."""
    ce = F.cross_entropy(logits, targets, reduction="none")
    p = torch.softmax(logits, dim=-1)
    nl = -(torch.log((1.0 - p).clamp_min(EPS)) * negatives).sum(-1)
    return (weights * ce).mean() + lam * nl.mean()
