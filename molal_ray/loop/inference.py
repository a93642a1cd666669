"""Ray Data batch inference with the current classifier (thin shell over ClassifierPredictor)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from molal_ray.strategies import PoolView


class PredictStage:
    """``map_batches`` UDF: rows ``id, text`` -> ``id, probs, embeddings[, noisy_probs]``."""

    def __init__(self, model_dir: str, max_length: int, copies: int, noise: float, seed: int) -> None:
        from molal_ray.training.classifier import ClassifierPredictor

        self.predictor = ClassifierPredictor(model_dir, max_length=max_length)
        self.copies, self.noise, self.seed = copies, noise, seed

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = self.predictor.predict(batch["text"].tolist(), noise=self.noise, copies=self.copies, seed=self.seed)
        res = pd.DataFrame({"id": batch["id"].to_numpy(), "probs": list(out["probs"]),
                            "embeddings": list(out["embeddings"])})
        if self.copies:
            res["noisy_probs"] = list(np.transpose(out["noisy_probs"], (1, 0, 2)).reshape(len(batch), -1))
        return res


def predict_frame(df: pd.DataFrame, model_dir: str, max_length: int, copies: int = 0, noise: float = 0.0,
                  seed: int = 0, batch_size: int = 64) -> pd.DataFrame:
    """Predictions for ``df`` (columns id, text), in ``df``'s order."""
    import ray.data

    if len(df) == 0:
        return pd.DataFrame({"id": [], "probs": [], "embeddings": []})
    ds = ray.data.from_pandas(df[["id", "text"]]).map_batches(
        PredictStage, fn_constructor_kwargs={"model_dir": model_dir, "max_length": max_length, "copies": copies,
                                             "noise": noise, "seed": seed},
        batch_size=batch_size, batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    out = ds.to_pandas()
    return out.set_index("id").loc[df["id"].to_numpy()].reset_index()


def pool_view(pred: pd.DataFrame, copies: int, labeled_embeddings: np.ndarray | None) -> PoolView:
    probs = np.stack(pred["probs"].to_numpy())
    noisy = None
    if copies and "noisy_probs" in pred:
        noisy = np.transpose(np.stack(pred["noisy_probs"].to_numpy()).reshape(len(pred), copies, -1), (1, 0, 2))
    return PoolView(ids=pred["id"].to_numpy(dtype=object), probs=probs,
                    embeddings=np.stack(pred["embeddings"].to_numpy()), labeled_embeddings=labeled_embeddings,
                    noisy_probs=noisy)
