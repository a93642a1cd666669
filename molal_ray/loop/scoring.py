"""Scoring pool rows with the current classifier, and bringing back only what the strategy needs.

:class:`ScoreStage` is a ``map_batches`` UDF (a Ray Data actor that loads the classifier once)
that also runs in-process for ``trainer: local``. Each input row carries a *kind*:

- ``test``: the stage returns its predicted class (the loop's test metrics);
- ``labeled``: its embedding (CoreSet's centres);
- ``cand``: a query candidate. For a strategy whose score of a row depends on that row alone
  (max-entropy, noise stability) the stage scores the batch and keeps only its ``top_n`` rows
  by (score, tie-break); otherwise it returns the row's probabilities, embedding or
  noise-perturbed probabilities, as the strategy requires.

So a pass over a sub-sample, or over the whole pool, sends back O(test + labelled + top_n x
batches) rows, or O(candidates) for the strategies that must see every candidate at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from molal_ray import schema
from molal_ray.pipeline.prepare import ROW
from molal_ray.strategies import PoolView, get_strategy
from molal_ray.strategies.base import ScoreStrategy, tiebreak, top_n

KIND_TEST, KIND_LABELED, KIND_CAND = "test", "labeled", "cand"

OUTPUT_SCHEMA = pa.schema(
    [
        (ROW, pa.int64()),
        (schema.SAMPLE_ID, pa.string()),
        ("kind", pa.string()),
        ("pred", pa.int32()),
        ("score", pa.float64()),
        ("probs", pa.list_(pa.float32())),
        ("embeddings", pa.list_(pa.float32())),
        ("noisy_probs", pa.list_(pa.float32())),
    ]
)


@dataclass
class ScoreRequest:
    """What one scoring pass computes (row keys of the prepared pool, each array sorted).

    ``candidates`` None means every usable row that is in none of ``exclude``, ``test`` and
    ``labeled`` (a strategy without sub-sampling)."""

    test: np.ndarray
    candidates: np.ndarray | None
    labeled: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    exclude: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    strategy: str = "random"
    needs: tuple[str, ...] = ()
    top_n: int | None = None
    tiebreak_key: int = 0
    noise_copies: int = 0
    noise_scale: float = 0.0
    seed: int = 0


@dataclass
class ScoreResult:
    test_rows: np.ndarray
    test_pred: np.ndarray
    candidates: pa.Table  # OUTPUT_SCHEMA rows of kind cand
    labeled_embeddings: np.ndarray | None

    def view(self, copies: int) -> PoolView:
        """The candidates as a strategy's :class:`PoolView` (rows sorted by key)."""
        t = self.candidates.sort_by(ROW)

        def stack(col: str) -> np.ndarray | None:
            c = t.column(col)
            if c.null_count == len(c) or len(c) == 0:
                return None
            return np.stack(c.to_numpy(zero_copy_only=False)).astype(np.float64)

        noisy = stack("noisy_probs")
        if noisy is not None:
            noisy = np.transpose(noisy.reshape(len(t), copies, -1), (1, 0, 2))
        return PoolView(
            ids=t.column(schema.SAMPLE_ID).to_numpy(zero_copy_only=False).astype(object),
            probs=stack("probs"),
            embeddings=stack("embeddings"),
            labeled_embeddings=self.labeled_embeddings,
            noisy_probs=noisy,
        )


def _lists(x: np.ndarray | None, n: int) -> pa.Array:
    if x is None:
        return pa.nulls(n, pa.list_(pa.float32()))
    x = np.asarray(x, np.float32).reshape(n, -1)
    offsets = pa.array(np.arange(0, x.size + 1, x.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(x.ravel(), pa.float32()))


class ScoreStage:
    """``map_batches`` UDF: rows ``_row, sample_id, text`` -> ``OUTPUT_SCHEMA`` rows (see the
    module docstring). The kinds come from the request's sorted key arrays."""

    def __init__(
        self,
        model_dir: str,
        request: ScoreRequest,
        max_length: int,
        device: str = "cpu",
        threads: int | None = None,
        predictor: Any = None,
    ) -> None:
        if predictor is None:
            import torch

            if threads:
                torch.set_num_threads(threads)
            predictor = load_predictor(model_dir, max_length, device)
        # Anything with ClassifierPredictor's predict() and noisy_probs(); it reads the column
        # named by its ``input_column`` (texts by default, embeddings for a head).
        self.predictor = predictor
        self.input_column = getattr(predictor, "input_column", schema.TEXT)
        self.req = request
        self.strategy = get_strategy(request.strategy)
        self.reduce = request.top_n is not None and getattr(self.strategy, "per_row", False)

    def kinds(self, rows: np.ndarray) -> np.ndarray:
        r = self.req

        def member(keys: np.ndarray) -> np.ndarray:
            if keys.size == 0:
                return np.zeros(len(rows), bool)
            pos = np.minimum(np.searchsorted(keys, rows), keys.size - 1)
            return keys[pos] == rows

        kind = np.full(len(rows), "", dtype=object)
        if r.candidates is None:
            kind[~member(r.exclude)] = KIND_CAND
        else:
            kind[member(r.candidates)] = KIND_CAND
        kind[member(r.labeled)] = KIND_LABELED
        kind[member(r.test)] = KIND_TEST
        return kind

    def __call__(self, batch: pa.Table) -> pa.Table:
        r = self.req
        rows = batch.column(ROW).to_numpy()
        kind = self.kinds(rows)
        keep = kind != ""
        if not keep.any():
            return OUTPUT_SCHEMA.empty_table()
        batch, rows, kind = batch.filter(pa.array(keep)), rows[keep], kind[keep]
        ids = batch.column(schema.SAMPLE_ID).to_numpy(zero_copy_only=False).astype(object)
        inputs = self._inputs(batch)
        out = self.predictor.predict(inputs)
        probs, emb = out["probs"], out["embeddings"]
        cand = kind == KIND_CAND
        noisy = None
        if "noisy_probs" in r.needs and cand.any():
            picked = inputs[cand] if isinstance(inputs, np.ndarray) else [t for t, c in zip(inputs, cand) if c]
            noisy = self.predictor.noisy_probs(picked, noise=r.noise_scale, copies=r.noise_copies, seed=r.seed)
        parts = []
        for k in (KIND_TEST, KIND_LABELED):
            m = kind == k
            if m.any():
                parts.append(
                    self._rows(
                        rows[m], ids[m], k, probs[m].argmax(1), None, None, emb[m] if k == KIND_LABELED else None, None
                    )
                )
        if cand.any():
            c_ids, c_probs, c_emb = ids[cand], probs[cand], emb[cand]
            c_noisy = None if noisy is None else np.transpose(noisy, (1, 0, 2)).reshape(int(cand.sum()), -1)
            if self.reduce:
                view = PoolView(
                    ids=c_ids, probs=c_probs, embeddings=c_emb, noisy_probs=None if noisy is None else noisy
                )
                strategy = self.strategy
                assert r.top_n is not None and isinstance(strategy, ScoreStrategy)  # self.reduce
                score = np.asarray(strategy.scores(view, np.random.default_rng(0)), np.float64)
                pick = top_n(score, tiebreak(c_ids, r.tiebreak_key), r.top_n)
                parts.append(
                    self._rows(
                        rows[cand][pick], c_ids[pick], KIND_CAND, c_probs[pick].argmax(1), score[pick], None, None, None
                    )
                )
            else:
                parts.append(
                    self._rows(
                        rows[cand],
                        c_ids,
                        KIND_CAND,
                        c_probs.argmax(1),
                        None,
                        c_probs if "probs" in r.needs else None,
                        c_emb if "embeddings" in r.needs else None,
                        c_noisy,
                    )
                )
        return pa.concat_tables(parts)

    def _inputs(self, batch: pa.Table) -> Any:
        if self.input_column == schema.TEXT:
            return batch.column(schema.TEXT).to_pylist()
        from molal_ray.pipeline.embeddings import as_matrix

        return as_matrix(batch.column(self.input_column))

    @staticmethod
    def _rows(
        rows: np.ndarray,
        ids: np.ndarray,
        kind: str,
        pred: np.ndarray,
        score: np.ndarray | None,
        probs: np.ndarray | None,
        emb: np.ndarray | None,
        noisy: np.ndarray | None,
    ) -> pa.Table:
        n = len(rows)
        return pa.table(
            {
                ROW: pa.array(rows, pa.int64()),
                schema.SAMPLE_ID: pa.array(ids.tolist(), pa.string()),
                "kind": pa.array([kind] * n, pa.string()),
                "pred": pa.array(pred, pa.int32()),
                "score": pa.array(score, pa.float64()) if score is not None else pa.nulls(n, pa.float64()),
                "probs": _lists(probs, n),
                "embeddings": _lists(emb, n),
                "noisy_probs": _lists(noisy, n),
            },
            schema=OUTPUT_SCHEMA,
        )


def load_predictor(model_dir: str, max_length: int, device: str = "cpu") -> Any:
    """The predictor of a saved model: a head on embeddings, or a whole classifier on texts."""
    from molal_ray.training.head import HeadPredictor, is_head

    if is_head(model_dir):
        return HeadPredictor(model_dir, device=device)
    from molal_ray.training.classifier import ClassifierPredictor

    return ClassifierPredictor(model_dir, max_length=max_length, device=device)


def score_batch(batch: pa.Table, model_dir: str, request: ScoreRequest, device: str = "cpu") -> pa.Table:
    """``map_batches`` function (Ray tasks, fused with the read) for a head: loading one is
    cheaper than starting an actor."""
    return ScoreStage(model_dir, request, 0, device)(batch)


def collect(tables: list[pa.Table], request: ScoreRequest) -> ScoreResult:
    """The stage's outputs -> a :class:`ScoreResult` (block-wise top-n merged into the global one)."""
    t = pa.concat_tables([OUTPUT_SCHEMA.empty_table(), *tables])
    kind = t.column("kind").to_numpy(zero_copy_only=False)
    test = t.filter(pa.array(kind == KIND_TEST)).sort_by(ROW)
    lab = t.filter(pa.array(kind == KIND_LABELED)).sort_by(ROW)
    cand = t.filter(pa.array(kind == KIND_CAND))
    if request.top_n is not None and cand.num_rows and cand.column("score").null_count == 0:
        ids = cand.column(schema.SAMPLE_ID).to_numpy(zero_copy_only=False).astype(object)
        pick = top_n(cand.column("score").to_numpy(), tiebreak(ids, request.tiebreak_key), request.top_n)
        cand = cand.take(pa.array(pick))
    emb = np.stack(lab.column("embeddings").to_numpy(zero_copy_only=False)).astype(np.float32) if lab.num_rows else None
    return ScoreResult(test.column(ROW).to_numpy(), test.column("pred").to_numpy(), cand, emb)


def score_in_process(
    items: list[dict[str, Any]],
    folder: Any,
    columns: list[str],
    model_dir: str,
    request: ScoreRequest,
    max_length: int,
    threads: int | None,
) -> ScoreResult:
    """The same pass without Ray (``trainer: local``): the read units (``read_items``) of
    ``folder`` read here, batch by batch."""
    from molal_ray.pipeline.pool_store import read_row_groups

    stage = ScoreStage(model_dir, request, max_length, threads=threads)
    outs = []
    for item in items:
        batch = read_row_groups(pa.Table.from_pylist([item]), folder, columns)
        for i in range(0, batch.num_rows, 64):
            outs.append(stage(batch.slice(i, 64)))
    return collect(outs, request)
