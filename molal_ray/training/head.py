"""A small classifier head on frozen sentence embeddings (``classifier.mode: head``).

Pure torch: :func:`fit_head` trains it with the paper's robust loss (weighted cross-entropy and
negative learning) and early stopping on the validation rows; :class:`HeadPredictor` gives the
same outputs as :class:`~molal_ray.training.classifier.ClassifierPredictor` (probabilities,
embeddings, noise-perturbed probabilities) from embeddings instead of texts. A saved head is a
folder with ``head.pt`` (weights) and ``head.json`` (shapes and the encoder it expects).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from molal_ray.training.losses import robust_loss

HEAD_WEIGHTS = "head.pt"
HEAD_META = "head.json"


class Head(torch.nn.Module):
    """Linear (``hidden`` 0) or one hidden layer with GELU and dropout."""

    def __init__(self, dim: int, num_labels: int, hidden: int = 0, dropout: float = 0.1) -> None:
        super().__init__()
        if hidden:
            self.net: torch.nn.Module = torch.nn.Sequential(
                torch.nn.Dropout(dropout),
                torch.nn.Linear(dim, hidden),
                torch.nn.GELU(),
                torch.nn.Dropout(dropout),
                torch.nn.Linear(hidden, num_labels),
            )
        else:
            self.net = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(dim, num_labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class HeadFit:
    state: dict[str, torch.Tensor]
    val_accuracy: float
    val_loss: float
    epochs_run: int


def _val(model: Head, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.inference_mode():
        logits = model(x)
        loss = float(torch.nn.functional.cross_entropy(logits, y)) if len(y) else 0.0
        acc = float((logits.argmax(-1) == y).float().mean()) if len(y) else 0.0
    return acc, loss


def fit_head(
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    num_labels: int,
    *,
    hidden: int,
    epochs: int,
    patience: int,
    learning_rate: float,
    weight_decay: float,
    batch_size: int,
    lam: float,
    seed: int,
    device: str = "cpu",
) -> HeadFit:
    """Train a head on ``train`` (``embedding`` (N, H), ``label``, ``weight``, ``negatives`` (N, C))
    and keep the epoch with the lowest validation cross-entropy (steadier than accuracy on the
    few validation rows of the first rounds). Stops after ``patience`` epochs without one."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    x = torch.as_tensor(np.asarray(train["embedding"], np.float32), device=dev)
    y = torch.as_tensor(np.asarray(train["label"], np.int64), device=dev)
    w = torch.as_tensor(np.asarray(train["weight"], np.float32), device=dev)
    neg = torch.as_tensor(np.asarray(train["negatives"], np.float32).reshape(len(y), num_labels), device=dev)
    xv = torch.as_tensor(np.asarray(val["embedding"], np.float32), device=dev)
    yv = torch.as_tensor(np.asarray(val["label"], np.int64), device=dev)
    model = Head(x.shape[1], num_labels, hidden).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    best: HeadFit | None = None
    stale = 0
    epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            idx = idx.to(dev)
            loss = robust_loss(model(x[idx]), y[idx], w[idx], neg[idx], lam)
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc, vloss = _val(model, xv, yv)
        if best is None or vloss < best.val_loss:
            best = HeadFit({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, acc, vloss, epoch)
            stale = 0
        else:
            stale += 1
            if stale > patience:
                break
    assert best is not None  # epochs >= 1
    best.epochs_run = epoch
    return best


def save_head(folder: str, fit: HeadFit, dim: int, num_labels: int, hidden: int, encoder: dict[str, Any]) -> None:
    torch.save(fit.state, f"{folder}/{HEAD_WEIGHTS}")
    with open(f"{folder}/{HEAD_META}", "w", encoding="utf-8") as f:
        json.dump(
            {
                "dim": dim,
                "num_labels": num_labels,
                "hidden": hidden,
                "encoder": encoder,
                "val_accuracy": fit.val_accuracy,
                "epochs_run": fit.epochs_run,
            },
            f,
            indent=2,
        )


def is_head(model_dir: str) -> bool:
    """Whether ``model_dir`` (a local folder or a URI) holds a saved head."""
    from molal_ray.storage import resolve

    return resolve(model_dir).join(HEAD_META).exists()


class HeadPredictor:
    """Probabilities of a saved head, from embeddings; the embeddings themselves are what the
    strategies that need a representation (CoreSet) use."""

    input_column = "embedding"

    def __init__(self, model_dir: str, device: str = "cpu") -> None:
        from molal_ray.storage import resolve

        loc = resolve(model_dir)
        if not loc.is_local:  # a head on shared storage: a few kilobytes, copied here once
            self._tmp = tempfile.TemporaryDirectory(prefix="molal-head-")
            model_dir = loc.download(self._tmp.name)
        with open(f"{model_dir}/{HEAD_META}", encoding="utf-8") as f:
            self.meta = json.load(f)
        self.device = torch.device(device)
        self.model = Head(self.meta["dim"], self.meta["num_labels"], self.meta["hidden"]).to(self.device)
        self.model.load_state_dict(torch.load(f"{model_dir}/{HEAD_WEIGHTS}", map_location=self.device))
        self.model.eval()

    def _x(self, emb: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(emb, np.float32), device=self.device)

    @torch.inference_mode()
    def predict(self, emb: np.ndarray) -> dict[str, np.ndarray]:
        logits = self.model(self._x(emb)).float()
        return {"probs": torch.softmax(logits, -1).cpu().numpy(), "embeddings": np.asarray(emb, np.float32)}

    @torch.inference_mode()
    def noisy_probs(self, emb: np.ndarray, noise: float, copies: int, seed: int = 0) -> np.ndarray:
        """(copies, N, C): the head's weights perturbed with Gaussian noise of relative scale
        ``noise`` (the encoder is frozen, so the head is where the model's uncertainty lives)."""
        from molal_ray.training.classifier import perturbed_probs

        x = self._x(emb)
        return perturbed_probs(self.model, lambda: self.model(x), noise, copies, seed)
