"""The round's services on Ray (a thin shell the coordinator calls; see ``coordinator.py``).

- ``score``: Ray Data reads the wanted rows of the prepared pool (one task per row group) and
  predictor actors (``ScoreStage``; CPUs, GPUs and concurrency from the classifier config) score
  them; only what the strategy needs comes back. ``trainer: local`` runs the same stage here.
- ``annotate``: the light annotate call of a round: the queried rows go straight to the running
  annotator deployments through one ``AnnotateStage`` (same retries, flagged rows and
  exactly-once parts as the label job), into the loop's own table.
- ``annotations``: the loop's table, read once per round.
- ``review``: the samples routed to people go to the configured review backend (files, or a
  running Label Studio the round waits on; ``review/backend.py``).
- ``train``: the labelled rows' texts (``finetune``) or frozen embeddings (``head``), fetched by
  row key, and Ray Train: a ``TorchTrainer`` per round for fine-tuning, one worker group for the
  whole loop for a head (``training/head_trainer.py``); or the same code in this process
  (``trainer: local``).

With ``classifier.mode: head`` scoring reads the pool's embeddings (``pipeline/embeddings.py``)
instead of its texts, and the head is applied in Ray tasks fused with the read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from molal_ray import schema
from molal_ray.config.loop import LoopJobConfig
from molal_ray.exceptions import ConfigError
from molal_ray.layout import LabelLayout
from molal_ray.loop.scoring import ScoreRequest, ScoreResult, ScoreStage, collect, score_batch, score_in_process
from molal_ray.pipeline.annotate_stage import AnnotateStage, stage_batch, stage_options
from molal_ray.pipeline.embeddings import EMBEDDING, EmbeddingStore, actor_options_accepted
from molal_ray.pipeline.output import DoneIndex, read_annotation_table
from molal_ray.pipeline.pool_store import PreparedPool
from molal_ray.pipeline.prepare import ROW
from molal_ray.review import ReviewItem
from molal_ray.review.backend import ReviewBackend, ReviewProgress
from molal_ray.storage import Location
from molal_ray.training.classifier import TrainResult


class RayRoundServices:
    def __init__(
        self,
        cfg: LoopJobConfig,
        pool: PreparedPool,
        annotations: LabelLayout,
        train_dir: Location,
        embeddings: EmbeddingStore | None,
        review_dir: Location,
        review_token: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.pool = pool
        self.ann_dir = annotations.root
        self.parts = annotations.parts
        self.train_dir = train_dir
        self.review_dir = review_dir
        self.embeddings = embeddings
        if cfg.classifier.mode == "head" and embeddings is None:
            raise ConfigError("classifier.mode 'head' needs the pool's embeddings")
        self._stage: AnnotateStage | None = None
        self._session: Any = None
        self._review: ReviewBackend | None = None
        self._review_token = review_token  # Label Studio's, read on the driver; never logged or saved

    @property
    def head(self) -> bool:
        return self.cfg.classifier.mode == "head"

    # -- scoring --------------------------------------------------------------------------------
    def score(self, model_dir: str, request: ScoreRequest) -> ScoreResult:
        c = self.cfg.classifier
        wanted = (
            None
            if request.candidates is None
            else np.unique(np.concatenate([request.test, request.candidates, request.labeled]))
        )
        small = wanted is not None and len(wanted) <= c.score_here_rows
        if c.trainer == "local" or (self.head and small):
            if self.head:
                assert self.embeddings is not None
                return score_in_process(
                    self.embeddings.read_items(wanted),
                    self.embeddings.folder,
                    [ROW, schema.SAMPLE_ID, EMBEDDING],
                    model_dir,
                    request,
                    c.max_length,
                    c.threads,
                )
            return score_in_process(
                self.pool.read_items(keys=wanted),
                self.pool.folder,
                [ROW, schema.SAMPLE_ID, schema.TEXT],
                model_dir,
                request,
                c.max_length,
                c.threads,
            )
        import ray.data

        if self.head:  # a head loads in milliseconds: Ray tasks fused with the read, no actors
            assert self.embeddings is not None
            num_cpus = self.cfg.pipeline.stage_num_cpus
            out = self.embeddings.dataset(keys=wanted, num_cpus=num_cpus).map_batches(
                score_batch,
                fn_kwargs={"model_dir": model_dir, "request": request, "device": "cuda" if c.use_gpu else "cpu"},
                batch_size=None,
                batch_format="pyarrow",
                num_cpus=num_cpus,
                num_gpus=1 if c.use_gpu else 0,
            )
            return collect(
                [
                    pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b
                    for b in out.iter_batches(batch_format="pyarrow", batch_size=None)
                ],
                request,
            )
        ds = self.pool.dataset(
            columns=(ROW, schema.SAMPLE_ID, schema.TEXT), keys=wanted, num_cpus=self.cfg.pipeline.stage_num_cpus
        )
        with actor_options_accepted():
            out = ds.map_batches(
                ScoreStage,
                fn_constructor_kwargs={
                    "model_dir": model_dir,
                    "request": request,
                    "max_length": c.max_length,
                    "device": "cuda" if c.use_gpu else "cpu",
                    "threads": c.threads,
                },
                batch_size=c.inference_batch_size,
                batch_format="pyarrow",
                num_cpus=c.cpus_per_worker,
                num_gpus=1 if c.use_gpu else 0,
                compute=ray.data.ActorPoolStrategy(size=c.inference_concurrency),
                max_restarts=0,
                max_task_retries=0,
            )  # a lost predictor fails the round (NO_RESTARTS)
        return collect(
            [
                pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b
                for b in out.iter_batches(batch_format="pyarrow", batch_size=None)
            ],
            request,
        )

    # -- annotation ------------------------------------------------------------------------------
    def annotate(
        self, rows: pa.Table, stages: list[list[str]] | None = None, examples: list[dict[str, str]] | None = None
    ) -> int:
        if rows.num_rows == 0:
            return 0
        if self._stage is None:
            from molal_ray.pipeline.output import open_output
            from molal_ray.serve.fingerprint import fingerprints

            open_output(
                self.ann_dir,
                "resume",
                self.cfg.task.labels,
                [a.name for a in self.cfg.annotators],
                fingerprints=fingerprints(self.cfg.annotators, self.cfg.task),
            )
            self._stage = AnnotateStage(**stage_options(self.cfg, self.parts, DoneIndex(self.parts)))
        self._stage.forget()  # the table grew since the last round
        self._stage.stages = stages or self.cfg.stages()
        self._stage.examples = examples
        keys = rows.column(ROW).to_numpy()
        ids = rows.column(schema.SAMPLE_ID).to_pylist()
        stats = self._stage(stage_batch(keys, ids, self.texts(keys)))
        return int(pc.sum(stats.column("rows")).as_py() or 0) if stats.num_rows else 0

    def annotations(self) -> pa.Table:
        return read_annotation_table(self.ann_dir)

    # -- people ------------------------------------------------------------------------------------
    def review(self, round_: int, items: list[ReviewItem], status: Any = None) -> ReviewProgress:
        """People's labels of the round's ``items``, by the configured review backend
        (:func:`~molal_ray.review.backend.review_round`)."""
        from molal_ray.review.backend import make_backend, review_round

        if self._review is None:
            self._review = make_backend(self.cfg.review, self.review_dir, self.cfg.task.labels, self._review_token)
        return review_round(self._review, self.cfg.review, round_, items, status)

    # -- training --------------------------------------------------------------------------------
    def texts(self, keys: np.ndarray) -> list[str]:
        return self.pool.fetch(keys, columns=(schema.TEXT,)).column(schema.TEXT).to_pylist()

    def text_embeddings(self, keys: np.ndarray) -> np.ndarray | None:
        return None if self.embeddings is None else self.embeddings.fetch(keys)

    def train(self, train: pd.DataFrame, val: pd.DataFrame, lam: float, name: str) -> TrainResult:
        """``train``/``val``: ``_row, label, weight, negatives``; the model's inputs are added here."""
        c = self.cfg.classifier
        n_labels = len(self.cfg.task.labels)
        if self.head:
            assert self.embeddings is not None
            train, val = (
                df.assign(**{EMBEDDING: list(self.embeddings.fetch(df[ROW].to_numpy()))}) for df in (train, val)
            )
            if c.trainer == "local":
                from molal_ray.training.local_trainer import train_head_local

                return train_head_local(train, val, n_labels, c, lam, self.train_dir, name, self.encoder_info())
            if self._session is None:
                from molal_ray.training.head_trainer import HeadTrainingSession

                self._session = HeadTrainingSession(c, n_labels, self.train_dir, self.encoder_info())
            return self._session.train(train, val, lam, name)
        train, val = (df.assign(text=self.texts(df[ROW].to_numpy())) for df in (train, val))
        from molal_ray.training.local_trainer import train_local
        from molal_ray.training.ray_trainer import train_classifier

        fn = train_classifier if c.trainer == "ray" else train_local
        return fn(train, val, n_labels, c, lam, self.train_dir, name)

    def encoder_info(self) -> dict[str, Any]:
        assert self.embeddings is not None
        return dict(self.embeddings.manifest["fingerprint"]["encoder"])

    def close(self) -> None:
        """End the loop's training worker group (``head`` mode) and the review connection."""
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._review is not None:
            self._review.close()
            self._review = None
