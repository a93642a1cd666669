"""The text classifier: a Hugging Face sequence classifier trained with the robust loss.

Pure torch and transformers (no Ray): :func:`train_epoch`, :func:`evaluate` and
:class:`ClassifierPredictor` are used inside the Ray Train loop and Ray Data inference, and
directly by unit tests. Rows carry ``text, label, weight, negatives`` (a 0/1 mask per class).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from molal_ray.exceptions import SchemaError
from molal_ray.training.losses import robust_loss


def tokenize(tokenizer: Any, texts: list[str], max_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


def train_epoch(
    model: Any,
    tokenizer: Any,
    batches: Iterable[dict[str, np.ndarray]],
    optimizer: Any,
    lam: float,
    max_length: int,
    device: torch.device,
) -> float:
    """One pass; returns the mean loss. Each batch holds its rows' own weights and negatives."""
    model.train()
    total, n = 0.0, 0
    for batch in batches:
        inputs = tokenize(tokenizer, batch["text"].tolist(), max_length, device)
        logits = model(**inputs).logits
        loss = robust_loss(
            logits,
            torch.as_tensor(batch["label"], device=device).long(),
            torch.as_tensor(batch["weight"], device=device).float(),
            torch.as_tensor(np.stack(list(batch["negatives"])), device=device).float(),
            lam,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += float(loss) * len(batch["label"])
        n += len(batch["label"])
    return total / max(n, 1)


@torch.inference_mode()
def evaluate(
    model: Any,
    tokenizer: Any,
    batches: Iterable[dict[str, np.ndarray]],
    max_length: int,
    device: torch.device,
    all_reduce: Callable[[np.ndarray], np.ndarray] | None = None,
) -> float:
    """Accuracy on labelled batches (``all_reduce`` sums [hits, rows] over data-parallel workers,
    so that every worker sees the same accuracy and takes the same early-stopping decision)."""
    model.eval()
    counts = np.zeros(2, np.float64)
    for batch in batches:
        logits = model(**tokenize(tokenizer, batch["text"].tolist(), max_length, device)).logits
        counts += ((logits.argmax(-1).cpu().numpy() == np.asarray(batch["label"])).sum(), len(batch["label"]))
    if all_reduce is not None:
        counts = all_reduce(counts)
    return float(counts[0] / max(counts[1], 1))


@dataclass
class TrainResult:
    model_dir: str
    val_accuracy: float
    epochs_run: int


def check_frames(train: Any, val: Any) -> None:
    """Training frames carry ``text, label, weight, negatives`` on every row."""
    for df, split in ((train, "train"), (val, "val")):
        missing = {"text", "label", "weight", "negatives"} - set(df.columns)
        if missing:
            raise SchemaError(f"{split} rows: missing columns {sorted(missing)}")


def fit_epochs(
    model: Any,
    tokenizer: Any,
    optimizer: Any,
    *,
    epochs: int,
    patience: int,
    lam: float,
    max_length: int,
    device: torch.device,
    train_batches: Callable[[int], Iterable[dict[str, np.ndarray]]],
    val_batches: Callable[[], Iterable[dict[str, np.ndarray]]],
    on_epoch: Callable[[dict[str, float], bool], None],
    all_reduce: Callable[[np.ndarray], np.ndarray] | None = None,
) -> int:
    """Train epoch by epoch with early stopping on validation accuracy; ``on_epoch(metrics,
    improved)`` keeps the best model. Stops after ``patience`` epochs without improvement; returns
    the epochs run."""
    best, stale = -1.0, 0
    for epoch in range(epochs):
        loss = train_epoch(model, tokenizer, train_batches(epoch), optimizer, lam, max_length, device)
        val_acc = evaluate(model, tokenizer, val_batches(), max_length, device, all_reduce)
        improved = val_acc > best
        on_epoch({"epoch": epoch, "train_loss": loss, "val_accuracy": val_acc}, improved)
        if improved:
            best, stale = val_acc, 0
        else:
            stale += 1
            if stale > patience:
                return epoch + 1
    return epochs


def frame_batches(df: Any, batch_size: int, seed: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Batches of a pandas frame as dicts of numpy columns (shuffled with ``seed`` unless None)."""
    order = np.arange(len(df)) if seed is None else np.random.default_rng(seed).permutation(len(df))
    for i in range(0, len(df), batch_size):
        part = df.iloc[order[i : i + batch_size]]
        yield {c: part[c].to_numpy() for c in part.columns}


class ClassifierPredictor:
    """Probabilities and mean-pooled embeddings of a saved classifier (loaded once, from a local
    folder or a URI on shared storage)."""

    input_column = "text"

    def __init__(self, model_dir: str, max_length: int = 128, device: str = "cpu") -> None:
        import tempfile

        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from molal_ray.storage import resolve

        loc = resolve(model_dir)
        if not loc.is_local:  # a model on shared storage is copied next to this process once
            self._tmp = tempfile.TemporaryDirectory(prefix="molal-model-")
            model_dir = loc.download(self._tmp.name)
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(self.device).eval()
        self.max_length = max_length

    @torch.inference_mode()
    def predict(self, texts: list[str], noise: float = 0.0, copies: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
        """``probs`` (N, C), ``embeddings`` (N, H); with ``copies`` > 0 also ``noisy_probs``
        (copies, N, C) from copies of the model with Gaussian weight noise of relative scale
        ``noise`` (noise stability, BEMPS)."""
        inputs = tokenize(self.tokenizer, texts, self.max_length, self.device)
        out = self.model(**inputs, output_hidden_states=True)
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        emb = (out.hidden_states[-1] * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        result = {"probs": torch.softmax(out.logits.float(), -1).cpu().numpy(), "embeddings": emb.cpu().numpy()}
        if copies > 0:
            result["noisy_probs"] = self._noisy(inputs, noise, copies, seed)
        return result

    @torch.inference_mode()
    def noisy_probs(self, texts: list[str], noise: float, copies: int, seed: int = 0) -> np.ndarray:
        """Only the ``noisy_probs`` of :meth:`predict` (no clean pass): (copies, N, C)."""
        return self._noisy(tokenize(self.tokenizer, texts, self.max_length, self.device), noise, copies, seed)

    def _noisy(self, inputs: dict[str, torch.Tensor], noise: float, copies: int, seed: int) -> np.ndarray:
        return perturbed_probs(self.model, lambda: self.model(**inputs).logits, noise, copies, seed)


@torch.inference_mode()
def perturbed_probs(
    model: torch.nn.Module, forward: Callable[[], torch.Tensor], noise: float, copies: int, seed: int
) -> np.ndarray:
    """(copies, N, C) softmax of ``forward()`` with ``model``'s weights perturbed by Gaussian
    noise of relative scale ``noise`` (each tensor's RMS), restored afterwards."""
    params = [p for p in model.parameters() if p.dtype.is_floating_point]
    saved = [p.detach().clone() for p in params]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    outs = []
    try:
        for _ in range(copies):
            for p, s in zip(params, saved):
                scale = noise * s.norm() / max(s.numel(), 1) ** 0.5
                p.copy_(s + scale * torch.randn(s.shape, generator=gen).to(s.device, s.dtype))
            outs.append(torch.softmax(forward().float(), -1).cpu().numpy())
    finally:
        for p, s in zip(params, saved):
            p.copy_(s)
    return np.stack(outs)
