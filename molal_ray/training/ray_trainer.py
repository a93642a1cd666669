"""Ray Train shell: fit the classifier with TorchTrainer, early stopping, best checkpoint kept."""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
import pandas as pd

from molal_ray.config.training import ClassifierConfig
from molal_ray.exceptions import TrainingError
from molal_ray.storage import Location, resolve
from molal_ray.training.classifier import TrainResult, check_frames


def _train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch
    from ray.train import Checkpoint
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from molal_ray.training.classifier import fit_epochs

    if config["threads"]:
        torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"])
    tokenizer = AutoTokenizer.from_pretrained(config["backbone"])
    # A backbone saved with another head size gets a new head (ignore_mismatched_sizes).
    hf_model = AutoModelForSequenceClassification.from_pretrained(
        config["backbone"], num_labels=config["num_labels"], ignore_mismatched_sizes=True
    )
    model: Any = ray.train.torch.prepare_model(hf_model)  # the model, or it wrapped in DDP
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"])
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    bs = config["batch_size"]
    ctx = ray.train.get_context()
    best: dict[str, Any] = {}

    def all_reduce(counts: np.ndarray) -> np.ndarray:
        if ctx.get_world_size() == 1:
            return counts
        t = torch.as_tensor(counts)
        torch.distributed.all_reduce(t)
        return t.numpy()

    def on_epoch(metrics: dict[str, float], improved: bool) -> None:
        # Every epoch's metrics are reported; the best weights stay in memory and only they are
        # written, once, at the end (a 90 MB checkpoint per improving epoch cost seconds a round).
        ray.train.report(metrics)
        if improved:
            unwrapped = model.module if hasattr(model, "module") else model
            best.update(metrics, state={k: v.detach().to("cpu", copy=True) for k, v in unwrapped.state_dict().items()})

    epochs = fit_epochs(
        model,
        tokenizer,
        optimizer,
        epochs=config["epochs"],
        patience=config["patience"],
        lam=config["lam"],
        max_length=config["max_length"],
        device=ray.train.torch.get_device(),
        train_batches=lambda epoch: train_shard.iter_batches(
            batch_size=bs,
            batch_format="numpy",
            local_shuffle_buffer_size=1024,
            local_shuffle_seed=config["seed"] + epoch,
        ),
        val_batches=lambda: val_shard.iter_batches(batch_size=bs, batch_format="numpy"),
        on_epoch=on_epoch,
        all_reduce=all_reduce,
    )
    state = best.pop("state")
    final = {**best, "epochs_run": epochs}
    if ctx.get_world_rank() != 0:  # rank 0 writes the model; the others report the same metrics
        ray.train.report(final)
        return
    with tempfile.TemporaryDirectory() as tmp:
        unwrapped = model.module if hasattr(model, "module") else model
        unwrapped.load_state_dict(state)
        unwrapped.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        ray.train.report(final, checkpoint=Checkpoint.from_directory(tmp))


def train_classifier(
    train: pd.DataFrame,
    val: pd.DataFrame,
    num_labels: int,
    cfg: ClassifierConfig,
    lam: float,
    storage_path: str | Location,
    name: str,
) -> TrainResult:
    """Fit on ``train`` (columns text, label, weight, negatives) and keep the best checkpoint by
    accuracy on ``val``; returns where the best model is (a local folder, or a URI when
    ``storage_path`` is one: checkpoints then go to shared storage, which every node reads)."""
    import ray.data
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    check_frames(train, val)
    storage = resolve(storage_path, field="output.path")
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "backbone": cfg.backbone,
            "num_labels": num_labels,
            "learning_rate": cfg.learning_rate,
            "weight_decay": cfg.weight_decay,
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "max_length": cfg.max_length,
            "patience": cfg.patience,
            "lam": lam,
            "seed": cfg.seed,
            "threads": cfg.threads,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage.path,
            storage_filesystem=None if storage.is_local else storage.fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="val_accuracy", checkpoint_score_order="max"
            ),
        ),
        datasets={"train": ray.data.from_pandas(train), "val": ray.data.from_pandas(val)},
    )
    result = trainer.fit()
    if not result.best_checkpoints:
        raise TrainingError(f"training {name}: no checkpoint was saved")
    ckpt, metrics = result.best_checkpoints[0]
    return TrainResult(
        model_dir=storage.at(ckpt.path).uri,
        val_accuracy=float(metrics["val_accuracy"]),
        epochs_run=int(metrics["epochs_run"]),
    )


def rows_frame(texts: list[str], labels: np.ndarray, weights: np.ndarray, negatives: np.ndarray) -> pd.DataFrame:
    """The training table: every row carries its own weight and negative mask."""
    return pd.DataFrame(
        {
            "text": texts,
            "label": np.asarray(labels, dtype=np.int64),
            "weight": np.asarray(weights, dtype=np.float32),
            "negatives": list(np.asarray(negatives, dtype=np.float32)),
        }
    )
