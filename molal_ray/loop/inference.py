"""Batch inference with the current classifier: Ray Data over an actor (``trainer: ray``) or the
same stage in this process (``trainer: local``). A thin shell over ClassifierPredictor."""

from __future__ import annotations

import numpy as np
import pandas as pd

from molal_ray.strategies import PoolView

NOISY = "noisy"  # optional bool column: also score this row under weight noise


class PredictStage:
    """``map_batches`` UDF: rows ``id, text[, noisy]`` -> ``id, probs, embeddings[, noisy_probs]``.

    ``noisy_probs`` (copies x classes, flattened) is computed for the rows whose ``noisy`` flag is
    set (all rows when the column is absent) and is NaN for the others."""

    def __init__(self, model_dir: str, max_length: int, copies: int, noise: float, seed: int,
                 threads: int | None = None) -> None:
        import torch

        from molal_ray.training.classifier import ClassifierPredictor

        if threads:
            torch.set_num_threads(threads)
        self.predictor = ClassifierPredictor(model_dir, max_length=max_length)
        self.copies, self.noise, self.seed = copies, noise, seed

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        texts = batch["text"].tolist()
        out = self.predictor.predict(texts)
        res = pd.DataFrame({"id": batch["id"].to_numpy(), "probs": list(out["probs"]),
                            "embeddings": list(out["embeddings"])})
        if self.copies:
            want = batch[NOISY].to_numpy(bool) if NOISY in batch else np.ones(len(batch), bool)
            noisy = np.full((len(batch), self.copies * out["probs"].shape[1]), np.nan, np.float32)
            if want.any():
                sub = self.predictor.noisy_probs([t for t, w in zip(texts, want) if w], noise=self.noise,
                                                 copies=self.copies, seed=self.seed)
                noisy[want] = np.transpose(sub, (1, 0, 2)).reshape(int(want.sum()), -1)
            res["noisy_probs"] = list(noisy)
        return res


def predict_frame(df: pd.DataFrame, model_dir: str, max_length: int, copies: int = 0, noise: float = 0.0,
                  seed: int = 0, batch_size: int = 64, *, local: bool = False,
                  threads: int | None = None) -> pd.DataFrame:
    """Predictions for ``df`` (columns id, text[, noisy]), in ``df``'s order."""
    if len(df) == 0:
        return pd.DataFrame({"id": [], "probs": [], "embeddings": []})
    cols = ["id", "text"] + ([NOISY] if NOISY in df else [])
    kwargs = {"model_dir": model_dir, "max_length": max_length, "copies": copies, "noise": noise, "seed": seed,
              "threads": threads}
    if local:
        stage = PredictStage(**kwargs)
        return pd.concat([stage(df[cols].iloc[i:i + batch_size]) for i in range(0, len(df), batch_size)],
                         ignore_index=True)
    import ray.data

    ds = ray.data.from_pandas(df[cols]).map_batches(
        PredictStage, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
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
