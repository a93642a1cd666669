"""Fit the classifier in the driver process (``classifier.trainer: local``): the same epochs,
loss and early stopping as the Ray Train shell, for small experiments and benchmarks."""

from __future__ import annotations

import copy
import tempfile
from typing import Any

import pandas as pd

from molal_ray.config.training import ClassifierConfig
from molal_ray.storage import Location, resolve
from molal_ray.training.classifier import TrainResult


def train_local(
    train: pd.DataFrame,
    val: pd.DataFrame,
    num_labels: int,
    cfg: ClassifierConfig,
    lam: float,
    storage_path: str | Location,
    name: str,
) -> TrainResult:
    """The same training as :func:`train_classifier`, in this process (``classifier.trainer:
    local``): no Ray Train workers to start each round. The best epoch's weights are kept in
    memory and saved to ``storage_path/name``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from molal_ray.training.classifier import check_frames, fit_epochs, frame_batches

    check_frames(train, val)
    saved_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        device = torch.device("cuda" if cfg.use_gpu else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(cfg.backbone)
        model = AutoModelForSequenceClassification.from_pretrained(
            cfg.backbone, num_labels=num_labels, ignore_mismatched_sizes=True
        ).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        best: dict[str, Any] = {}

        def on_epoch(metrics: dict[str, float], improved: bool) -> None:
            if improved:
                best["state"] = copy.deepcopy(model.state_dict())
                best["val_accuracy"] = metrics["val_accuracy"]

        epochs = fit_epochs(
            model,
            tokenizer,
            optimizer,
            epochs=cfg.epochs,
            patience=cfg.patience,
            lam=lam,
            max_length=cfg.max_length,
            device=device,
            train_batches=lambda epoch: frame_batches(train, cfg.batch_size, cfg.seed + epoch),
            val_batches=lambda: frame_batches(val, cfg.batch_size),
            on_epoch=on_epoch,
        )
        model.load_state_dict(best["state"])
        out = resolve(storage_path, field="output.path").join(name, "best")
        with tempfile.TemporaryDirectory() as tmp:
            local = out.path if out.is_local else tmp
            model.save_pretrained(local)
            tokenizer.save_pretrained(local)
            if not out.is_local:
                out.upload_from(tmp)
    finally:
        torch.set_num_threads(saved_threads)
    return TrainResult(model_dir=out.uri, val_accuracy=float(best["val_accuracy"]), epochs_run=epochs)


def train_head_local(
    train: pd.DataFrame,
    val: pd.DataFrame,
    num_labels: int,
    cfg: ClassifierConfig,
    lam: float,
    storage_path: str | Location,
    name: str,
    encoder: dict[str, Any],
) -> TrainResult:
    """A head (``mode: head``) fitted in this process and saved to ``storage_path/name``."""
    import numpy as np

    from molal_ray.training.head import fit_head, save_head
    from molal_ray.training.head_trainer import frame_arrays

    tr, va = frame_arrays(train), frame_arrays(val)
    fit = fit_head(
        tr,
        va,
        num_labels,
        hidden=cfg.head_hidden,
        epochs=cfg.epochs,
        patience=cfg.patience,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size,
        lam=lam,
        seed=cfg.seed,
        device="cuda" if cfg.use_gpu else "cpu",
    )
    out = resolve(storage_path, field="output.path").join(name, "best")
    with tempfile.TemporaryDirectory() as tmp:
        save_head(tmp, fit, int(np.asarray(tr["embedding"]).shape[1]), num_labels, cfg.head_hidden, encoder)
        out.delete_dir()  # a rerun of the round replaces its head whole
        out.mkdirs()
        out.upload_from(tmp)
    return TrainResult(model_dir=out.uri, val_accuracy=fit.val_accuracy, epochs_run=fit.epochs_run)
