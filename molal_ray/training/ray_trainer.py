"""Ray Train shell: fit the classifier with TorchTrainer, early stopping, best checkpoint kept."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from molal_ray.config.training import ClassifierConfig


def _train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch
    from ray.train import Checkpoint
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from molal_ray.training.classifier import evaluate, train_epoch

    torch.manual_seed(config["seed"])
    tokenizer = AutoTokenizer.from_pretrained(config["backbone"])
    # A backbone saved with another head size gets a new head (ignore_mismatched_sizes).
    model = AutoModelForSequenceClassification.from_pretrained(config["backbone"], num_labels=config["num_labels"],
                                                               ignore_mismatched_sizes=True)
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"])
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    best, stale = -1.0, 0
    for epoch in range(config["epochs"]):
        batches = train_shard.iter_batches(batch_size=config["batch_size"], batch_format="numpy",
                                           local_shuffle_buffer_size=1024, local_shuffle_seed=config["seed"] + epoch)
        loss = train_epoch(model, tokenizer, batches, optimizer, config["lam"], config["max_length"], device)
        val_acc = evaluate(model, tokenizer, val_shard.iter_batches(batch_size=config["batch_size"],
                                                                     batch_format="numpy"),
                           config["max_length"], device)
        metrics = {"epoch": epoch, "train_loss": loss, "val_accuracy": val_acc}
        if val_acc > best:
            best, stale = val_acc, 0
            with tempfile.TemporaryDirectory() as tmp:
                if ray.train.get_context().get_world_rank() == 0:
                    unwrapped = model.module if hasattr(model, "module") else model
                    unwrapped.save_pretrained(tmp)
                    tokenizer.save_pretrained(tmp)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            stale += 1
            ray.train.report(metrics)
            if stale > config["patience"]:
                break


@dataclass
class TrainResult:
    model_dir: str
    val_accuracy: float
    epochs_run: int


def train_classifier(train: pd.DataFrame, val: pd.DataFrame, num_labels: int, cfg: ClassifierConfig, lam: float,
                     storage_path: str, name: str) -> TrainResult:
    """Fit on ``train`` (columns text, label, weight, negatives) and keep the best checkpoint by
    accuracy on ``val``; returns the folder of the best model."""
    import ray.data
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    for df, split in ((train, "train"), (val, "val")):
        missing = {"text", "label", "weight", "negatives"} - set(df.columns)
        if missing:
            raise ValueError(f"{split} rows: missing columns {sorted(missing)}")
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"backbone": cfg.backbone, "num_labels": num_labels, "learning_rate": cfg.learning_rate,
                           "weight_decay": cfg.weight_decay, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                           "max_length": cfg.max_length, "patience": cfg.patience, "lam": lam, "seed": cfg.seed},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=os.path.abspath(storage_path),
                             checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="val_accuracy",
                                                                checkpoint_score_order="max")),
        datasets={"train": ray.data.from_pandas(train), "val": ray.data.from_pandas(val)},
    )
    result = trainer.fit()
    if not result.best_checkpoints:
        raise RuntimeError(f"training {name}: no checkpoint was saved")
    ckpt, metrics = result.best_checkpoints[0]
    epochs = int(result.metrics_dataframe["epoch"].max()) + 1 if result.metrics_dataframe is not None else -1
    return TrainResult(model_dir=ckpt.path, val_accuracy=float(metrics["val_accuracy"]), epochs_run=epochs)


def rows_frame(texts: list[str], labels: np.ndarray, weights: np.ndarray, negatives: np.ndarray) -> pd.DataFrame:
    """The training table: every row carries its own weight and negative mask."""
    return pd.DataFrame({"text": texts, "label": np.asarray(labels, dtype=np.int64),
                         "weight": np.asarray(weights, dtype=np.float32), "negatives": list(np.asarray(negatives,
                                                                                                  dtype=np.float32))})
