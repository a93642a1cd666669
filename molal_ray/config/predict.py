"""Config of `molal-ray predict`: a loop's classifier over a whole pool, and the escalation of
its doubtful texts to the LLM annotators (``molal_ray/predict``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from molal_ray.config.base import StrictModel
from molal_ray.config.job import OutputConfig, PoolConfig, RayConfig
from molal_ray.config.review import ReviewConfig


class PredictorConfig(StrictModel):
    """The predictor actors: each loads the classifier once and takes blocks of the prepared pool."""

    batch_size: int = Field(128, ge=1, description="Texts per forward pass of the classifier.")
    concurrency: int = Field(1, ge=1, description="Predictor actors (one model load each).")
    num_cpus: float = Field(1.0, ge=0.0, description="CPUs reserved per predictor actor.")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per predictor actor (0: the classifier runs on CPUs).")
    threads: int | None = Field(
        None, ge=1, description="Torch threads per actor on CPUs (None: torch's default, all cores)."
    )


class EscalationConfig(StrictModel):
    """Student-first labelling: the texts the classifier is least sure of go to the annotators of
    a label config; the aggregator, fitted on the loop's people-given labels, labels them."""

    label_config: str = Field(..., description="A `molal-ray label` config: its task and annotators are used.")
    budget: float | None = Field(
        None, gt=0.0, le=1.0, description="The share of the pool's usable rows to escalate, least confident first."
    )
    below: float | None = Field(
        None, ge=0.0, le=1.0, description="Escalate every row whose classifier confidence is below this."
    )
    people: int = Field(
        0,
        ge=0,
        description="The escalated rows least sure after the mixture (and the classifier) that go to people "
        "(review.backend: files in PRED/review/, or a running Label Studio); their labels, once given, replace "
        "the mixture's when the command runs again.",
    )
    review: ReviewConfig = Field(default_factory=ReviewConfig, description="Where the people's rows go.")
    aggregator: str = Field(
        "pooled",
        description="The aggregator of the escalated rows' answers (fitted on the loop's gold and people's "
        "labels); 'pooled' reads the answers alone.",
    )

    combine: Literal["product", "mixture"] = Field(
        "product",
        description="An escalated row's label: 'product' of the mixture's and the classifier's distributions "
        "(renormalised: the answers and the text are two views of the row), or the 'mixture''s alone.",
    )

    @model_validator(mode="after")
    def _one_rule(self) -> EscalationConfig:
        if (self.budget is None) == (self.below is None):
            raise ValueError("escalation: give exactly one of budget (a share of the pool) and below (a confidence)")
        if self.people and self.review.backend == "simulated":
            raise ValueError(
                "escalation.review.backend: 'simulated' answers from a loop's gold file; predict has none: "
                "use 'files' or 'label_studio'"
            )
        return self


class PredictJobConfig(StrictModel):
    """`molal-ray predict`: every text of a pool through an exported classifier."""

    model: str = Field(..., description="An exported classifier: a loop's OUT/model or `molal-ray export --to`.")
    pool: PoolConfig
    output: OutputConfig
    known: str | None = Field(
        "auto",
        description="A labels.parquet of the loop (sample_id, label, source, confidence): pool rows it holds "
        "keep its label and source. 'auto': the labels.parquet beside the model folder (a loop's OUT/), if "
        "any; None or 'none': no known labels.",
    )

    @field_validator("known")
    @classmethod
    def _none(cls, v: str | None) -> str | None:
        return None if v in (None, "", "none") else v

    predictor: PredictorConfig = Field(default_factory=PredictorConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    escalation: EscalationConfig | None = None
