"""`molal-ray run`: the active-learning loop's config."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, SerializeAsAny, ValidationInfo, field_validator, model_validator

from molal_ray.config.aggregation import AggregatorSettings, parse_aggregator
from molal_ray.config.annotator import AnnotatorConfig, check_unique_names
from molal_ray.config.base import StrictModel, resolve_path
from molal_ray.config.job import CascadeConfig, OutputConfig, PipelineConfig, PoolConfig, RayConfig, check_cascade
from molal_ray.config.review import ReviewConfig
from molal_ray.config.task import TaskConfig
from molal_ray.config.training import ClassifierConfig


class LoopSettings(StrictModel):
    """The MoLLIA loop (paper defaults where the paper gives them)."""

    initial_gold: int = Field(50, ge=2, description="Human-labelled samples of round 0 (paper: 50).")
    rounds: int = Field(8, ge=1, description="Query rounds after round 0.")
    query_size: int = Field(50, ge=1, description="Samples queried (and annotated) per round.")
    strategy: str = Field("random", description="Query strategy: random, max-entropy, coreset, bemps, noise-stability.")
    subsample: int | None = Field(2000, ge=1, description="Pool rows scored per round (None: the whole pool).")
    labelable_weight: float = Field(
        0.0,
        ge=0,
        description="Weigh the strategy's scores by how well the LLMs are "
        "expected to label each candidate (their agreement on "
        "its nearest annotated texts), to this power: query "
        "what the classifier needs and the mixture can label. "
        "0: off. Score strategies, classifier.mode head.",
    )
    annotation: str = Field(
        "molal",
        description="Who labels queried samples: 'molal' (the aggregator), 'gold' (human labels: the upper "
        "reference), 'majority' (majority vote), or one annotator's name.",
    )
    aggregator: SerializeAsAny[AggregatorSettings] = Field(
        default_factory=lambda: parse_aggregator("default"),
        description="Aggregator used when annotation is 'molal': a name (default, pooled, molam-xgb, dawid-skene, "
        "majority, mean-probs) or {name: ..., <its settings>}.",
    )
    discrepancy_alpha: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Weight of a MoLAM-labelled sample whose label "
        "disagrees with the previous classifier (paper: 0.5).",
    )
    lambda_start: float = Field(0.4, ge=0, description="Negative-learning weight in round 0 (paper: 0.4).")
    lambda_step: float = Field(0.06, ge=0, description="Its increase per round (paper: 0.06).")
    negative_threshold: float = Field(
        0.05, ge=0, le=1, description="Labels below this aggregated probability are a sample's negatives."
    )
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of gold-labelled rows held out as the test split.")
    test_max: int | None = Field(1000, ge=1, description="At most this many test rows (evaluation cost).")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the labelled rows used for early stopping.")
    noise_copies: int = Field(5, ge=1, description="Perturbed classifier copies for noise stability and BEMPS.")
    noise_scale: float = Field(0.01, gt=0, description="Relative scale of that weight noise.")
    seed: int = Field(0, description="Seed of the gold draw, the test split and the strategies.")
    human_per_round: float = Field(
        0,
        ge=0,
        description="Queried samples per round labelled by people instead of the LLMs: a count (1 or more) "
        "or a share of query_size (below 1). They are the samples whose aggregated label is "
        "least certain (routing); their labels join the gold set the aggregator fits on. With "
        "gold labels for them (the example's gold file), the people are simulated by it; "
        "otherwise the loop writes the round's review file and stops until --resume.",
    )
    routing: Literal["margin", "entropy", "confidence", "disagreement", "random"] = Field(
        "margin",
        description="Which queried samples go to people: the smallest margin between the aggregated "
        "label's two most likely classes, the highest entropy, the lowest top probability, "
        "the most annotators voting against the aggregated label, or random (a baseline).",
    )

    relabel: bool = Field(
        False,
        description="Each round, give the earlier rounds' aggregator-labelled rows the "
        "labels (and negatives, and discrepancy weights) of this round's "
        "aggregator, fitted with every human label so far: with people in "
        "the loop (human_per_round) the old labels improve as theirs "
        "accumulate. annotation 'molal' only.",
    )

    def n_human(self) -> int:
        """Samples per round that go to people."""
        h = self.human_per_round
        return int(round(h * self.query_size)) if h < 1 else int(h)

    @model_validator(mode="after")
    def _human(self) -> LoopSettings:
        h = self.human_per_round
        if h >= 1 and (h != int(h) or h > self.query_size):
            raise ValueError(
                f"loop.human_per_round: got {h}; expected a share below 1 or a whole count of at most "
                f"query_size ({self.query_size})"
            )
        if self.subsample is not None and self.subsample < self.query_size:
            raise ValueError(
                f"loop.subsample: got {self.subsample}; expected at least query_size ({self.query_size}): "
                "a round queries among the rows it scores"
            )
        return self

    @field_validator("aggregator", mode="before")
    @classmethod
    def _aggregator(cls, v: Any) -> AggregatorSettings:
        return parse_aggregator(v)


class LoopJobConfig(StrictModel):
    kind: ClassVar[str | None] = "run"

    task: TaskConfig
    annotators: list[AnnotatorConfig] = Field(default_factory=list)
    pool: PoolConfig
    gold: str = Field(
        ...,
        description="CSV or Parquet with sample_id,label: the human labels (initial set, "
        "test split, the 'gold' mode and annotation accuracy).",
    )
    loop: LoopSettings = Field(default_factory=LoopSettings)
    classifier: ClassifierConfig
    output: OutputConfig
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    cascade: CascadeConfig | None = Field(
        None, description="Call the annotators in stages (None: all of them on every queried text)."
    )
    review: ReviewConfig = Field(default_factory=ReviewConfig)

    _unique = field_validator("annotators")(check_unique_names)

    @field_validator("gold")
    @classmethod
    def _resolve(cls, v: str, info: ValidationInfo) -> str:
        return resolve_path(v, info)

    @model_validator(mode="after")
    def _modes(self) -> LoopJobConfig:
        from molal_ray.strategies import available as strategies

        names = [a.name for a in self.annotators]
        mode = self.loop.annotation
        if mode not in ("molal", "gold", "majority", *names):
            raise ValueError(
                f"loop.annotation one of ['molal', 'gold', 'majority', {', '.join(map(repr, names))}] (got {mode!r})"
            )
        if mode != "gold" and not names:
            raise ValueError(f"annotators for loop.annotation {mode!r} (none configured)")
        check_cascade(self.cascade, self.annotators)
        if self.cascade and self.cascade.gold:
            raise ValueError(
                "cascade.gold is for the label job: the loop ranks the annotators on its initial gold "
                "rows (cascade.order: gold)"
            )
        if self.loop.strategy not in strategies():
            raise ValueError(f"loop.strategy one of {strategies()} (got {self.loop.strategy!r})")
        if self.loop.labelable_weight:
            from molal_ray.strategies import get_strategy

            if self.classifier.mode != "head" or mode == "gold":
                raise ValueError(
                    "loop.labelable_weight needs classifier.mode 'head' (the pool's embeddings) and "
                    "annotators (loop.annotation other than 'gold')"
                )
            get_strategy(self.loop.strategy, labelable=self.loop.labelable_weight)  # a score strategy
        return self

    def stages(self) -> list[list[str]]:
        """The annotators stage by stage (one stage without a cascade)."""
        return self.cascade.stages if self.cascade else [[a.name for a in self.annotators]]

    def app_config(self):
        """The annotator application the loop deploys once and labels every round through (few-shot
        examples read into the task, as for the label job)."""
        from molal_ray.config.job import AnnotatorAppConfig
        from molal_ray.engines.few_shot import with_examples

        return AnnotatorAppConfig(task=with_examples(self.task, self.pool), annotators=self.annotators)
