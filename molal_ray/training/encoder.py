"""A frozen text encoder: sentence embeddings of a Hugging Face backbone (mean pooling, L2 norm).

Pure torch and transformers. The ``head`` classifier mode embeds the pool once with it
(``pipeline/embeddings.py``) and trains only a small head each round (``training/head.py``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch


class FrozenEncoder:
    """``encoder(texts) -> (N, H x (1 + first_tokens)) float32``: the mean of the last hidden
    states over the text's tokens (what sentence-transformers models such as all-MiniLM-L6-v2 are
    trained for), followed by the last hidden states of its first ``first_tokens`` tokens after
    the start token; each part scaled to unit length, the whole to unit length.

    The first tokens carry what a mean washes out when the label lives in a text's opening words
    (a question's type: "How many", "Who", "Where"): on TREC with all-MiniLM-L6-v2, a logistic
    regression on 450 gold labels reached 0.88 test accuracy with ``first_tokens: 2`` against 0.74
    with the mean alone (1,000 test questions, one draw; ``benchmarks/frozen_features.py``)."""

    def __init__(
        self,
        backbone: str,
        max_length: int = 128,
        device: str = "cpu",
        threads: int | None = None,
        batch_size: int = 128,
        first_tokens: int = 0,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(backbone)
        self.model = AutoModel.from_pretrained(backbone).to(self.device).eval()
        self.max_length = max_length
        self.batch_size = batch_size
        self.first_tokens = first_tokens

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size) * (1 + self.first_tokens)

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        # Texts of similar length share a batch: less padding, same result.
        order = np.argsort([len(t) for t in texts], kind="stable")
        for i in range(0, len(texts), self.batch_size):
            idx = order[i : i + self.batch_size]
            enc = self.tokenizer(
                [texts[j] for j in idx], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            parts = [(hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)]
            for k in range(1, self.first_tokens + 1):  # padding (a text shorter than k tokens) counts as zeros
                parts.append(hidden[:, k] * mask[:, k] if k < hidden.shape[1] else torch.zeros_like(parts[0]))
            emb = torch.cat([torch.nn.functional.normalize(p, dim=-1) for p in parts], -1)
            out[idx] = torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()
        return out


def encoder_fingerprint(backbone: str, max_length: int, first_tokens: int = 0) -> dict[str, Any]:
    """What the embeddings depend on (a stored set is reused only when this matches)."""
    from pathlib import Path

    ident: dict[str, Any] = {
        "backbone": backbone,
        "max_length": max_length,
        "pooling": "mean-l2",
        "first_tokens": first_tokens,
    }
    weights = [p for p in (Path(backbone) / n for n in ("model.safetensors", "pytorch_model.bin")) if p.is_file()]
    if weights:  # a local folder: its weights' size and start, so a retrained model is noticed
        with open(weights[0], "rb") as f:
            ident["weights"] = [weights[0].stat().st_size, hashlib.blake2b(f.read(1 << 20), digest_size=8).hexdigest()]
    return json.loads(json.dumps(ident))
