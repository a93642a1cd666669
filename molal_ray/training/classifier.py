"""The text classifier: a Hugging Face sequence classifier trained with the robust loss.

Pure torch and transformers (no Ray): :func:`train_epoch`, :func:`evaluate` and
:class:`ClassifierPredictor` are used inside the Ray Train loop and Ray Data inference, and
directly by unit tests. Rows carry ``text, label, weight, negatives`` (a 0/1 mask per class).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from molal_ray.training.losses import robust_loss


def tokenize(tokenizer: Any, texts: list[str], max_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


def train_epoch(model: Any, tokenizer: Any, batches: Iterable[dict[str, np.ndarray]], optimizer: Any, lam: float,
                max_length: int, device: torch.device) -> float:
    """One pass; returns the mean loss. Each batch holds its rows' own weights and negatives."""
    model.train()
    total, n = 0.0, 0
    for batch in batches:
        inputs = tokenize(tokenizer, batch["text"].tolist(), max_length, device)
        logits = model(**inputs).logits
        loss = robust_loss(logits, torch.as_tensor(batch["label"], device=device).long(),
                           torch.as_tensor(batch["weight"], device=device).float(),
                           torch.as_tensor(np.stack(batch["negatives"]), device=device).float(), lam)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += float(loss) * len(batch["label"])
        n += len(batch["label"])
    return total / max(n, 1)


@torch.inference_mode()
def evaluate(model: Any, tokenizer: Any, batches: Iterable[dict[str, np.ndarray]], max_length: int,
             device: torch.device) -> float:
    """Accuracy on labelled batches."""
    model.eval()
    hits, n = 0, 0
    for batch in batches:
        logits = model(**tokenize(tokenizer, batch["text"].tolist(), max_length, device)).logits
        hits += int((logits.argmax(-1).cpu().numpy() == np.asarray(batch["label"])).sum())
        n += len(batch["label"])
    return hits / max(n, 1)


class ClassifierPredictor:
    """Probabilities and mean-pooled embeddings of a saved classifier (loaded once)."""

    def __init__(self, model_dir: str, max_length: int = 128, device: str = "cpu") -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(self.device).eval()
        self.max_length = max_length

    @torch.inference_mode()
    def predict(self, texts: list[str], noise: float = 0.0, copies: int = 0,
                seed: int = 0) -> dict[str, np.ndarray]:
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

    def _noisy(self, inputs: dict[str, torch.Tensor], noise: float, copies: int, seed: int) -> np.ndarray:
        params = [p for p in self.model.parameters() if p.dtype.is_floating_point]
        saved = [p.detach().clone() for p in params]
        gen = torch.Generator(device="cpu").manual_seed(seed)
        outs = []
        try:
            for _ in range(copies):
                for p, s in zip(params, saved):
                    scale = noise * s.norm() / max(s.numel(), 1) ** 0.5
                    p.copy_(s + scale * torch.randn(s.shape, generator=gen).to(s.device, s.dtype))
                outs.append(torch.softmax(self.model(**inputs).logits.float(), -1).cpu().numpy())
        finally:
            for p, s in zip(params, saved):
                p.copy_(s)
        return np.stack(outs)
