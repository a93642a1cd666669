"""The coordinator as a Ray actor: it opens the prepared pool, the gold labels and the state,
and runs each round where it lives; the driver only receives each round's metrics."""

from __future__ import annotations

from typing import Any

from molal_ray.aggregation.api import load_gold
from molal_ray.config.loop import LoopJobConfig
from molal_ray.exceptions import ConfigError, MolalError, SchemaError
from molal_ray.layout import LoopLayout
from molal_ray.loop.coordinator import Coordinator, Split
from molal_ray.loop.services import RayRoundServices
from molal_ray.loop.state import LoopState
from molal_ray.pipeline.embeddings import EmbeddingStore, cache_root, store_folder
from molal_ray.pipeline.pool_store import PreparedPool


class CoordinatorActor:
    """Builds a :class:`Coordinator` with Ray services; ``run_round`` returns metrics."""

    def __init__(self, cfg: dict[str, Any], resume: bool, review_token: str | None = None) -> None:
        # An error of ours raised here would reach the driver as an ActorDiedError without its
        # type; it is kept and raised by the first call instead, so the driver gets it as is.
        self.init_error: MolalError | None = None
        self.services: RayRoundServices | None = None
        try:
            self._open(cfg, resume, review_token)
        except MolalError as exc:
            self.init_error = exc

    def _check(self) -> None:
        if self.init_error is not None:
            raise self.init_error

    def _open(self, cfg: dict[str, Any], resume: bool, review_token: str | None) -> None:
        self.cfg = LoopJobConfig.model_validate(cfg)
        out = LoopLayout.at(self.cfg.output.path)
        pool = PreparedPool.open(out.pool)
        if pool is None:
            raise SchemaError(f"loop: no prepared pool in {out.pool}")
        labels = self.cfg.task.labels
        gold_df = load_gold(self.cfg.gold, labels)
        gold = dict(zip(gold_df["sample_id"], gold_df["y"].astype(int)))
        settings = self.cfg.loop
        split = Split.make(pool.find(list(gold)), gold, settings.test_fraction, settings.test_max, settings.seed)
        state_dir = out.state
        if resume:
            state = LoopState.load(state_dir)
            if state.labels != labels:
                raise ConfigError(f"resume: the saved loop has labels {state.labels}; the config has {labels}")
            if state.pool != pool.manifest.key():
                raise ConfigError(
                    "resume: the pool changed since the loop started (its files, columns or buckets); "
                    "start a new loop (output.mode: overwrite) or restore the pool"
                )
        else:
            state = LoopState(labels=labels, seed=settings.seed, pool=pool.manifest.key())
        embeddings = None
        if self.cfg.classifier.mode == "head":
            folder = store_folder(cache_root(out.root, self.cfg.classifier), pool, self.cfg.classifier)
            embeddings = EmbeddingStore.open(folder, pool, self.cfg.classifier)
            if embeddings is None:
                raise SchemaError(f"loop: no embeddings of this pool in {folder}")
        self.services = services = RayRoundServices(
            self.cfg, pool, out.annotations, out.train, embeddings, out.review, review_token
        )
        few = self.cfg.task.few_shot
        self.coord = Coordinator(
            state,
            settings,
            pool,
            split,
            services,
            state_dir,
            self.cfg.cascade,
            examples_from_labels=few is not None and few.from_loop,
            simulated_people=self.cfg.review.backend == "simulated",
        )
        self.test_rows = len(split.test_rows)

    def run_round(self) -> dict[str, Any] | None:
        """The next round's metrics, or None when the loop has run every round."""
        self._check()
        return None if self.coord.finished else self.coord.run_round()

    def history(self) -> list[dict[str, Any]]:
        self._check()
        return self.coord.state.history

    def phase(self) -> tuple[int, str | None]:
        """The round running and its phase (for progress displays)."""
        self._check()
        return self.coord.state.round, self.coord.phase()

    def info(self) -> dict[str, Any]:
        self._check()
        return {"test_rows": self.test_rows}

    def gold_report(self) -> dict[str, Any]:
        self._check()
        return self.coord.gold_report()

    def close(self) -> None:
        """End what the loop keeps running between rounds (the head's training worker group)."""
        if self.services is not None:
            self.services.close()
