"""Ray Train shell of the ``head`` mode: one worker group for the whole loop.

Training a head on a few thousand embeddings takes well under a second; starting a Ray Train
worker group (controller, worker process, torch process group) takes seconds. So the loop starts
one ``TorchTrainer.fit()`` in a background thread when the first round trains, and its worker
serves every round: it waits on a small board actor for the round's job (the labelled rows'
embeddings, labels, weights and negatives: O(labelled)), fits the head, and reports it with
``ray.train.report(..., checkpoint_dir_name=<round>)``, so each round's head is a Ray Train
checkpoint at ``<storage>/<session>/<round>`` (a local folder or a URI). If the worker group
ends (a node lost, a worker killed), the next round starts a new one and the job is posted again.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
from typing import Any

import numpy as np
import pandas as pd

from molal_ray.config.training import ClassifierConfig
from molal_ray.exceptions import TrainingError
from molal_ray.storage import Location, resolve
from molal_ray.training.classifier import TrainResult

logger = logging.getLogger("molal_ray.training")


class RoundBoard:
    """Jobs posted by the coordinator, results posted by the training worker, by round index."""

    def __init__(self) -> None:
        self.jobs: dict[int, Any] = {}
        self.results: dict[int, Any] = {}
        self.changed = asyncio.Event()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def post_job(self, i: int, job: Any) -> None:
        self.jobs[i] = job
        self._notify()

    async def job(self, i: int) -> Any:
        while i not in self.jobs:
            await self.changed.wait()
        return self.jobs.pop(i)

    async def post_result(self, i: int, result: Any) -> None:
        self.results[i] = result
        self._notify()

    async def result(self, i: int, timeout_s: float) -> Any:
        """The result of job ``i``, or None when none came within ``timeout_s``."""
        try:
            await asyncio.wait_for(self._result(i), timeout_s)
        except TimeoutError:
            return None
        return self.results.pop(i)

    async def _result(self, i: int) -> None:
        while i not in self.results:
            await self.changed.wait()


def _session_loop(config: dict[str, Any]) -> None:
    """The worker: one job per round until it reads None."""
    import ray
    import ray.train
    import torch
    from ray.train import Checkpoint

    from molal_ray.training.head import fit_head, save_head

    if config["threads"]:
        torch.set_num_threads(config["threads"])
    board = config["board"]
    device = "cuda" if config["use_gpu"] else "cpu"
    i = config["first_job"]
    while True:
        job = ray.get(board.job.remote(i))
        if job is None:
            return
        try:
            fit = fit_head(
                job["train"],
                job["val"],
                config["num_labels"],
                hidden=config["hidden"],
                epochs=config["epochs"],
                patience=config["patience"],
                learning_rate=config["learning_rate"],
                weight_decay=config["weight_decay"],
                batch_size=config["batch_size"],
                lam=job["lam"],
                seed=config["seed"],
                device=device,
            )
        except Exception as exc:  # noqa: BLE001 - bad rows fail this round, not the worker group
            ray.get(board.post_result.remote(i, {"error": f"{type(exc).__name__}: {exc}"}))
            i += 1
            continue
        metrics = {"val_accuracy": fit.val_accuracy, "val_loss": fit.val_loss, "epochs_run": fit.epochs_run}
        with tempfile.TemporaryDirectory() as tmp:
            save_head(
                tmp,
                fit,
                int(np.asarray(job["train"]["embedding"]).shape[1]),
                config["num_labels"],
                config["hidden"],
                config["encoder"],
            )
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp), checkpoint_dir_name=job["name"])
        ray.get(board.post_result.remote(i, metrics))
        i += 1


def frame_arrays(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """A training frame (``embedding, label, weight, negatives``) as the worker's arrays."""
    return {
        "embedding": np.stack(df["embedding"].to_numpy()).astype(np.float32)
        if len(df)
        else np.zeros((0, 0), np.float32),
        "label": df["label"].to_numpy(np.int64),
        "weight": df["weight"].to_numpy(np.float32),
        "negatives": np.stack(df["negatives"].to_numpy()).astype(np.float32)
        if len(df)
        else np.zeros((0, 0), np.float32),
    }


class HeadTrainingSession:
    """The coordinator's side: ``train()`` posts a round and waits for its head."""

    POLL_S = 2.0

    def __init__(
        self, cfg: ClassifierConfig, num_labels: int, storage: str | Location, encoder: dict[str, Any]
    ) -> None:
        self.cfg = cfg
        self.num_labels = num_labels
        self.storage = resolve(storage, field="output.path")
        self.encoder = encoder
        self.name = time.strftime("heads-%Y%m%d-%H%M%S")
        self.jobs = 0
        self.board: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.starts = 0

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start(self) -> None:
        import ray
        from ray.train import CheckpointConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        c = self.cfg
        self.board = ray.remote(num_cpus=0)(RoundBoard).remote()
        self.starts += 1
        name = self.name if self.starts == 1 else f"{self.name}-{self.starts}"
        self.run_name = name
        trainer = TorchTrainer(
            _session_loop,
            train_loop_config={
                "board": self.board,
                "first_job": self.jobs,
                "num_labels": self.num_labels,
                "hidden": c.head_hidden,
                "epochs": c.epochs,
                "patience": c.patience,
                "learning_rate": c.learning_rate,
                "weight_decay": c.weight_decay,
                "batch_size": c.batch_size,
                "seed": c.seed,
                "threads": c.threads,
                "use_gpu": c.use_gpu,
                "encoder": self.encoder,
            },
            scaling_config=ScalingConfig(
                num_workers=1, use_gpu=c.use_gpu, resources_per_worker={"CPU": c.cpus_per_worker}
            ),
            run_config=RunConfig(
                name=name,
                storage_path=self.storage.path,
                storage_filesystem=None if self.storage.is_local else self.storage.fs,
                checkpoint_config=CheckpointConfig(num_to_keep=None),
            ),
        )
        self._error = None

        def fit() -> None:
            try:
                trainer.fit()
            except BaseException as exc:  # noqa: BLE001 - reported by train() to the coordinator
                self._error = exc

        self._thread = threading.Thread(target=fit, name="molal-head-trainer", daemon=True)
        self._thread.start()

    def train(self, train: pd.DataFrame, val: pd.DataFrame, lam: float, name: str) -> TrainResult:
        """Fit a head on ``train`` (``embedding, label, weight, negatives``), keep the best epoch by
        validation loss on ``val``; returns where it is saved."""
        import ray

        job = {"train": frame_arrays(train), "val": frame_arrays(val), "lam": float(lam), "name": name}
        for attempt in (1, 2):
            if not self.alive:
                self._start()
            i = self.jobs
            ray.get(self.board.post_job.remote(i, job))
            self.jobs += 1
            while True:
                res = ray.get(self.board.result.remote(i, self.POLL_S))
                if res is not None:
                    break
                if not self.alive:  # the worker group ended without answering this job
                    res = None
                    break
            if res is None:
                logger.warning("the training worker group ended (%s); starting a new one", self._error)
                if attempt == 2:
                    raise TrainingError(f"training {name}: the worker group ended twice ({self._error})")
                continue
            if "error" in res:
                raise TrainingError(f"training {name}: {res['error']}")
            return TrainResult(
                model_dir=self.storage.join(self.run_name, name).uri,
                val_accuracy=float(res["val_accuracy"]),
                epochs_run=int(res["epochs_run"]),
            )
        raise AssertionError("unreachable")

    def close(self, timeout_s: float = 60.0) -> None:
        """Let the worker group finish (its run ends as a success)."""
        import ray

        if self.alive:
            ray.get(self.board.post_job.remote(self.jobs, None))
            self._thread.join(timeout_s)  # type: ignore[union-attr]
        if self.board is not None:
            ray.kill(self.board)
            self.board = None
