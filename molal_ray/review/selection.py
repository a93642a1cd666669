"""Which samples go to people: the least certain of an aggregation, with their texts and what
each LLM answered. Pure Python, NumPy and Arrow (no Ray)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from molal_ray import schema
from molal_ray.exceptions import ReviewError
from molal_ray.review.files import ReviewItem


def uncertainty(probs: np.ndarray, rule: str, votes: np.ndarray | None = None) -> np.ndarray:
    """How unsure the aggregated label of each row is (higher: less sure). ``rule``: ``margin``
    (1 - (p1 - p2)), ``entropy``, ``confidence`` (1 - p1), ``disagreement`` (the share of
    annotators whose top vote is not the aggregated label; ``votes``: (N, A, C), NaN absent)."""
    p = np.asarray(probs, np.float64)
    if rule == "margin":
        top2 = np.sort(p, axis=1)[:, -2:] if p.shape[1] > 1 else np.c_[np.zeros(len(p)), p]
        return 1.0 - (top2[:, 1] - top2[:, 0])
    if rule == "entropy":
        q = np.clip(p, 1e-12, 1.0)
        return -(q * np.log(q)).sum(1)
    if rule == "confidence":
        return 1.0 - p.max(1)
    if rule == "disagreement":
        if votes is None:
            raise ReviewError("routing rule 'disagreement' needs the annotators' votes")
        v = np.asarray(votes, np.float64)
        present = ~np.isnan(v).any(2)
        top = np.nan_to_num(v).argmax(2)
        differ = (top != p.argmax(1)[:, None]) & present
        return differ.sum(1) / np.maximum(present.sum(1), 1)
    raise ReviewError(f"routing rule: got {rule!r}; expected margin, entropy, confidence or disagreement")


def least_certain(
    probs: np.ndarray, n: int, rule: str = "margin", votes: np.ndarray | None = None, ids: Sequence[str] | None = None
) -> np.ndarray:
    """Positions of the ``n`` least certain rows (ties broken by id, then position)."""
    u = uncertainty(probs, rule, votes)
    key = np.arange(len(u)) if ids is None else np.argsort(np.argsort(np.asarray(ids, dtype=object)))
    order = np.lexsort((key, -u))
    return np.sort(order[: max(0, min(n, len(u)))])


def texts_for_review(source: str, ids: list[str], id_column: str = "id", text_column: str = "text") -> dict[str, str]:
    """Texts of ``ids`` from a `molal-ray label` or `run` output (its prepared pool), or from a
    pool file or folder (any format the pool reader takes); ids not found are absent."""
    from molal_ray.config import PoolConfig
    from molal_ray.layout import LabelLayout
    from molal_ray.pipeline.pool import texts_of_ids
    from molal_ray.pipeline.pool_store import PreparedPool
    from molal_ray.pipeline.prepare import ROW
    from molal_ray.storage import resolve

    loc = resolve(source, field="--texts")
    # a label output's and a run output's prepared pool are both OUT/pool
    pool = PreparedPool.open(LabelLayout(loc).pool) if loc.is_dir() else None
    if pool is not None:
        found = pool.find(ids)
        t = pool.fetch(found.column(ROW).to_numpy())
        return dict(zip(t.column(schema.SAMPLE_ID).to_pylist(), t.column(schema.TEXT).to_pylist()))
    if not loc.exists():
        raise ReviewError(f"--texts: got {source!r}; expected a label or run output folder, or a pool file")
    return texts_of_ids(PoolConfig(path=source, id_column=id_column, text_column=text_column), ids)


def answers_by_sample(table: pa.Table, labels: Sequence[str], ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """What each annotator answered for these samples, as a reviewer reads it (``{sample_id:
    {annotator: "LABEL (70% of its answers)"}}``, see :func:`matrix_answers`), from an annotation
    table; flagged rows are left out."""
    import pyarrow.compute as pc

    from molal_ray import schema
    from molal_ray.aggregation import build_matrix

    t = table.filter(pc.is_in(table.column(schema.SAMPLE_ID), value_set=pa.array(list(ids), pa.string())))
    shown, _ = matrix_answers(build_matrix(t, len(labels)), ids, labels)
    return {i: a for i, a in zip(ids, shown) if a}


def to_review(aggregated: pa.Table, n: int | None, below: float | None, rule: str = "margin") -> pa.Table:
    """The rows of a `molal-ray aggregate --out` table to review, least sure first: the ``n``
    least certain by ``rule``, or every one whose confidence is ``below``; gold rows never."""
    import pyarrow.compute as pc

    if (n is None) == (below is None):
        raise ReviewError("review: give one of --n or --below")
    t = aggregated.filter(pc.invert(aggregated.column("is_gold")))  # gold rows need no review
    probs = np.stack(t.column("probs").to_numpy(zero_copy_only=False)) if t.num_rows else np.zeros((0, 1))
    conf = t.column("confidence").to_numpy()
    ids = t.column("sample_id").to_pylist()
    pos = least_certain(probs, n, rule, ids=ids) if n is not None else np.flatnonzero(conf < below)
    pos = pos[np.argsort(conf[pos], kind="stable")]
    return t.take(pa.array(pos, pa.int64()))


def review_items(
    chosen: pa.Table, texts: dict[str, str], answers: dict[str, dict[str, str]] | None = None
) -> list[ReviewItem]:
    """Review items of the :func:`to_review` rows, with their texts (every one needs its text)
    and each LLM's answer where ``answers`` has it."""
    ids = chosen.column("sample_id").to_pylist()
    lost = [i for i in ids if i not in texts]
    if lost:
        raise ReviewError(f"review: {len(lost)} samples have no text where --texts points (first: {lost[0]!r})")
    answers = answers or {}
    return [
        ReviewItem(i, texts[i], lab, float(c), answers.get(i, {}))
        for i, lab, c in zip(ids, chosen.column("label").to_pylist(), chosen.column("confidence").to_pylist())
    ]


def matrix_answers(m: Any, ids: Sequence[str], labels: Sequence[str]) -> tuple[list[dict[str, str]], np.ndarray]:
    """What each annotator of an annotation matrix answered for these samples: the text a
    reviewer reads (``{annotator: "LABEL (70%)"}``, its vote share; its top probability where it
    has no votes) and the top labels, (len(ids), A) class indices, -1 where it gave none."""
    at = {s: i for i, s in enumerate(m.sample_ids.tolist())}
    rows = np.array([at.get(i, -1) for i in ids], dtype=np.int64)
    top = np.full((len(ids), len(m.annotators)), -1, dtype=np.int64)
    shown: list[dict[str, str]] = [{} for _ in ids]
    for n, r in enumerate(rows):
        if r < 0:
            continue
        for a, name in enumerate(m.annotators):
            if not m.present[r, a]:
                continue
            v, p = m.votes[r, a], m.probs[r, a]
            if np.isfinite(v).all() and v.sum() > 0:
                k = int(v.argmax())
                shown[n][name] = f"{labels[k]} ({v[k]:.0%} of its answers)"
            elif np.isfinite(p).all():
                k = int(p.argmax())
                shown[n][name] = f"{labels[k]} (p={p[k]:.2f})"
            else:
                continue
            top[n, a] = k
    return shown, top


def agreement(
    people: np.ndarray, mixture: np.ndarray, top: np.ndarray | None, annotators: Sequence[str]
) -> dict[str, Any]:
    """How often people confirmed the mixture's label (``mixture``), and each annotator's answer
    (``top``: (n, A), -1 where it gave none), on the samples they labelled: ``{"mixture": share,
    "annotators": {name: share or None}, "n": count}``."""
    people, mixture = np.asarray(people), np.asarray(mixture)
    out: dict[str, Any] = {
        "n": int(len(people)),
        "mixture": float(np.mean(people == mixture)) if len(people) else None,
        "annotators": {},
    }
    if top is not None:
        for a, name in enumerate(annotators):
            asked = top[:, a] >= 0
            out["annotators"][name] = float(np.mean(top[asked, a] == people[asked])) if asked.any() else None
    return out
