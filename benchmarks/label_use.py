"""How the loop uses the mixture's labels: variants of the robust training, screened offline.

A mirror of the head-mode loop on TREC without Ray, fast enough to compare many ways of training
on the same labels: 1,000 test questions and 50 gold rows drawn per seed, then 8 rounds of 50
queries from a random 1,000-row subsample of the free pool (``random`` or ``max-entropy`` on the
previous head); each round the default aggregator is fitted on every annotated row (the questions'
embeddings included) and labels the new ones, and a linear head on the frozen embeddings is
trained from scratch with the loop's settings (``training.head.fit_head``: the robust loss, lambda
0.4 + 0.06 x round, learning rate 0.003, 200 epochs, patience 20, 20% of the labelled rows for
validation). Variants change only how the labels are used:

- ``paper``: weight alpha = 0.5 where the label disagrees with the previous head (the loop's
  default), negatives below 0.05; ``alpha0.2``, ``alpha1``: other alphas; ``nolam``: no negatives.
- ``conf1``, ``conf2``, ``conf4``: weights times the label's probability to that power;
  ``drop0.5``, ``drop0.7``: labels less probable than that weigh 0.
- ``soft``: the aggregator's whole distribution as the target; ``mix``: half of it, half the label.
- ``valgold``: the validation rows drawn from the gold (and routed) rows only; ``goldw3``: those
  rows weigh 3.
- ``fix25``, ``fix50`` (a diagnostic, not a method): an oracle corrects that share of each round's
  wrong labels, to see how accurate the labels must be for the head to come near the gold loop.
- ``gold``: every query labelled by people (the gold loop).

``--route K`` gives the K least certain queries of each round (smallest margin) to people, as
``loop.human_per_round``. ``--diagnose`` also prints where the wrong labels are (their
confidence, and whether the previous head agreed with them).

    .venv/bin/python benchmarks/label_use.py [--seeds 100 101 102] [--strategies random max-entropy]
        [--variants paper gold ...] [--route 10] [--diagnose]

It is a screen, not the loop: `benchmarks/al_comparison.py` runs the real one. Its ``paper`` and
``gold`` rows land within about a point of the real loops' (benchmarks/results/label_use.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.aggregation_quality import trec_matrix  # noqa: E402
from molal_ray.aggregation import AnnotationMatrix, Gold, get_aggregator  # noqa: E402
from molal_ray.training.head import Head, fit_head  # noqa: E402
from molal_ray.training.losses import EPS, lambda_for_round  # noqa: E402

C = 6
TEST, ROUNDS, QUERY, GOLD, SUBSAMPLE = 1000, 8, 50, 50, 1000
FIT = {"hidden": 0, "epochs": 200, "patience": 20, "learning_rate": 0.003, "weight_decay": 0.01, "batch_size": 64}

VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"alpha": 0.5},
    "alpha0.2": {"alpha": 0.2},
    "alpha1": {"alpha": 1.0},
    "nolam": {"alpha": 0.5, "lam_scale": 0.0},
    "conf1": {"alpha": 0.5, "conf": 1.0},
    "conf2": {"alpha": 1.0, "conf": 2.0},
    "conf4": {"alpha": 0.5, "conf": 4.0},
    "drop0.5": {"alpha": 0.5, "drop": 0.5},
    "drop0.7": {"alpha": 0.5, "drop": 0.7},
    "soft": {"alpha": 0.5, "soft": 1.0},
    "mix": {"alpha": 0.5, "soft": 0.5},
    "valgold": {"alpha": 0.5, "val_gold": True},
    "goldw3": {"alpha": 0.5, "gold_weight": 3.0},
    "fix25": {"alpha": 0.5, "fix": 0.25},
    "fix50": {"alpha": 0.5, "fix": 0.5},
    "gold": {"oracle": True},
}


@dataclass
class Labelled:
    """The loop's labelled rows so far, in order."""

    rows: list[int] = field(default_factory=list)
    label: dict[int, int] = field(default_factory=dict)
    target: dict[int, np.ndarray] = field(default_factory=dict)
    weight: dict[int, float] = field(default_factory=dict)
    negatives: dict[int, list[int]] = field(default_factory=dict)
    by_people: dict[int, bool] = field(default_factory=dict)

    def add(self, i: int, target: np.ndarray, weight: float, negatives: list[int], by_people: bool) -> None:
        self.rows.append(i)
        self.label[i] = int(target.argmax())
        self.target[i], self.weight[i], self.negatives[i], self.by_people[i] = target, weight, negatives, by_people


def fit_soft(train: dict[str, np.ndarray], val: dict[str, np.ndarray], lam: float, seed: int) -> Head:
    """fit_head's loop with a distribution as the target (cross-entropy against it)."""
    torch.manual_seed(seed)
    x, t = torch.as_tensor(train["embedding"]), torch.as_tensor(train["target"])
    w, neg = torch.as_tensor(train["weight"]), torch.as_tensor(train["negatives"])
    xv, yv = torch.as_tensor(val["embedding"]), torch.as_tensor(val["label"])
    model = Head(x.shape[1], C, FIT["hidden"])
    opt = torch.optim.AdamW(model.parameters(), lr=FIT["learning_rate"], weight_decay=FIT["weight_decay"])
    gen = torch.Generator().manual_seed(seed)
    best, best_loss, stale = None, np.inf, 0
    for _ in range(FIT["epochs"]):
        model.train()
        for idx in torch.randperm(len(t), generator=gen).split(FIT["batch_size"]):
            logits = model(x[idx])
            ce = -(t[idx] * F.log_softmax(logits, -1)).sum(-1)
            nl = -(torch.log((1 - torch.softmax(logits, -1)).clamp_min(EPS)) * neg[idx]).sum(-1)
            loss = (w[idx] * ce).mean() + lam * nl.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            vloss = float(F.cross_entropy(model(xv), yv))
        if vloss < best_loss:
            best_loss, stale, best = vloss, 0, {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale > FIT["patience"]:
                break
    model.load_state_dict(best)
    return model


def train(E: np.ndarray, lab: Labelled, variant: dict[str, Any], r: int, seed: int) -> Head:
    R = np.array(lab.rows)
    pick = np.random.default_rng([seed, r, 3])
    pool = np.flatnonzero([lab.by_people[int(i)] for i in R]) if variant.get("val_gold") else np.arange(len(R))
    val = np.zeros(len(R), bool)
    val[pick.permutation(pool)[: max(1, round(len(pool) * 0.2))]] = True
    tr, va = R[~val], R[val]
    lam = lambda_for_round(r) * variant.get("lam_scale", 1.0)
    gw = variant.get("gold_weight", 1.0)
    neg = np.zeros((len(tr), C), np.float32)
    for k, i in enumerate(tr):
        neg[k, lab.negatives[int(i)]] = 1
    train_rows = {
        "embedding": E[tr].astype(np.float32),
        "label": np.array([lab.label[int(i)] for i in tr]),
        "weight": np.array([lab.weight[int(i)] * (gw if lab.by_people[int(i)] else 1.0) for i in tr], np.float32),
        "negatives": neg,
    }
    val_rows = {"embedding": E[va].astype(np.float32), "label": np.array([lab.label[int(i)] for i in va])}
    if variant.get("soft"):
        s = variant["soft"]
        hard = np.eye(C, dtype=np.float32)[train_rows["label"]]
        train_rows["target"] = (s * np.stack([lab.target[int(i)] for i in tr]) + (1 - s) * hard).astype(np.float32)
        return fit_soft(train_rows, val_rows, lam, seed)
    fitted = fit_head(train_rows, val_rows, C, lam=lam, seed=seed, **FIT)
    head = Head(E.shape[1], C, FIT["hidden"])
    head.load_state_dict(fitted.state)
    return head.eval()


def predict(head: Head, E: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(head(torch.as_tensor(E, dtype=torch.float32)), -1).numpy()


def run(
    m: AnnotationMatrix, y: np.ndarray, seed: int, strategy: str, variant: dict[str, Any], route: int, diag: list
) -> tuple[list[float], list[float]]:
    """One loop: the test accuracy after each round (0-8) and each round's label accuracy."""
    E = m.embeddings
    rng = np.random.default_rng([seed, 0])
    perm = rng.permutation(len(y))
    test, gold0 = perm[:TEST], perm[TEST : TEST + GOLD]
    free = np.ones(len(y), bool)
    free[test] = free[gold0] = False
    lab = Labelled()
    for i in gold0:
        lab.add(int(i), np.eye(C)[y[i]], 1.0, [], True)
    head = train(E, lab, variant, 0, seed)
    curve = [float((predict(head, E[test]).argmax(1) == y[test]).mean())]
    label_acc = []
    for r in range(1, ROUNDS + 1):
        cand = rng.choice(np.flatnonzero(free), min(SUBSAMPLE, int(free.sum())), replace=False)
        if strategy == "random":
            pick = cand[:QUERY]
        else:
            pc = predict(head, E[cand])
            entropy = -(pc * np.log(pc + 1e-12)).sum(1)
            pick = cand[np.argsort(-entropy)[:QUERY]]
        prev = predict(head, E[pick]).argmax(1)
        free[pick] = False
        people = np.zeros(len(pick), bool)
        if variant.get("oracle"):
            P = np.eye(C)[y[pick]]
            people[:] = True
        else:
            annotated = np.array(lab.rows + list(pick))
            known = [k for k, i in enumerate(lab.rows) if lab.by_people[i]]
            gold = Gold(np.array(known), np.array([lab.label[lab.rows[k]] for k in known]), C)
            agg = get_aggregator("default", seed=seed).fit(m.take(annotated), gold)
            P = agg.predict_proba(m.take(annotated[len(lab.rows) :]))
            if route:
                top2 = np.sort(P, 1)[:, -2:]
                people[np.argsort(top2[:, 1] - top2[:, 0], kind="stable")[:route]] = True
                P = np.where(people[:, None], np.eye(C)[y[pick]], P)
            if variant.get("fix"):  # the oracle diagnostic
                wrong = np.flatnonzero(P.argmax(1) != y[pick])
                fixed = wrong[np.random.default_rng([seed, r, 9]).random(len(wrong)) < variant["fix"]]
                P = P.copy()
                P[fixed] = np.eye(C)[y[pick][fixed]]
        L = P.argmax(1)
        if diag is not None and not variant.get("oracle"):
            conf, bad = P.max(1), (L != y[pick]) & ~people
            diag.append(
                [bad.sum(), (bad & (conf >= 0.9)).sum(), (bad & (conf >= 0.7)).sum(), (bad & (prev == L)).sum()]
            )
            diag[-1] += [(~bad & ~people).sum(), (~bad & ~people & (prev == L)).sum(), (~people & (conf < 0.7)).sum()]
            diag[-1] += [(bad & (conf < 0.7)).sum()]
        label_acc.append(float((L == y[pick]).mean()))
        for i, p, lbl, pv, h in zip(pick, P, L, prev, people):
            if h:
                lab.add(int(i), p, 1.0, [], True)
                continue
            w = variant["alpha"] if lbl != pv else 1.0
            if variant.get("drop") and p.max() < variant["drop"]:
                w = 0.0
            if variant.get("conf"):
                w *= float(p.max()) ** variant["conf"]
            lab.add(int(i), p, w, list(np.flatnonzero(p < 0.05)), False)
        head = train(E, lab, variant, r, seed)
        curve.append(float((predict(head, E[test]).argmax(1) == y[test]).mean()))
    return curve, label_acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    ap.add_argument("--strategies", nargs="+", choices=["random", "max-entropy"], default=["random", "max-entropy"])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["gold", "paper"])
    ap.add_argument("--route", type=int, default=0, help="queries per round labelled by people (least certain)")
    ap.add_argument("--diagnose", action="store_true")
    args = ap.parse_args()
    m, y = trec_matrix()
    print(f"TREC, seeds {args.seeds}, {GOLD} gold, {ROUNDS} rounds of {QUERY}, {args.route} per round to people")
    print(f"{'strategy':<13}{'variant':<10}{'final':>7}{'mean 1-8':>10}{'labels':>8}  per seed (final)")
    for strategy in args.strategies:
        for name in args.variants:
            t0 = time.perf_counter()
            finals, means, labels, diag = [], [], [], ([] if args.diagnose else None)
            for seed in args.seeds:
                curve, label_acc = run(m, y, seed, strategy, VARIANTS[name], args.route, diag)
                finals.append(curve[-1])
                means.append(float(np.mean(curve[1:])))
                labels.append(float(np.mean(label_acc)))
            print(
                f"{strategy:<13}{name:<10}{np.mean(finals):>7.3f}{np.mean(means):>10.3f}{np.mean(labels):>8.3f}  "
                f"{' '.join(f'{f:.3f}' for f in finals)}  ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            if diag:
                d = np.sum(diag, 0)
                print(
                    f"  wrong labels {d[0]} (confidence >= 0.9: {d[1]}, >= 0.7: {d[2]}, the previous head agreed: "
                    f"{d[3]}); right {d[4]} (the previous head agreed: {d[5]}); below 0.7 confidence {d[6]}, "
                    f"of them wrong {d[7]}"
                )


if __name__ == "__main__":
    main()
