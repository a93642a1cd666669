"""Configs of the pool, the output, the Serve application and the label job."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from molal_ray.config.annotator import AnnotatorConfig, check_unique_names
from molal_ray.config.base import StrictModel, resolve_path
from molal_ray.config.task import TaskConfig


class PoolConfig(StrictModel):
    """The unlabeled pool: files with an id and a text column."""

    path: str = Field(..., description="A file, a folder or a glob of Parquet, JSONL(.gz) or CSV files.")
    format: Literal["auto", "parquet", "jsonl", "csv"] = Field(
        "auto", description="File format; 'auto' picks it from the file extension."
    )
    id_column: str = Field("id", description="Column holding each sample's unique id.")
    text_column: str = Field("text", description="Column holding the text to label.")
    max_text_chars: int = Field(
        20000,
        ge=1,
        description="Texts longer than this are cut before tokenisation and flagged 'truncated' "
        "(engines also cut to their model's context and flag it).",
    )
    shared: bool = Field(
        False,
        description="The local path is a mount every node of the cluster sees. On a cluster of more than one "
        "node a local pool path is refused unless this is set; a URI needs nothing.",
    )
    buckets: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Buckets the prepared pool is split into by id hash (repeated ids are resolved within "
        "one). None: one per 32 MiB of pool files. Part of the prepared pool's fingerprint: "
        "changing it prepares the pool again.",
    )

    @field_validator("path")
    @classmethod
    def _resolve(cls, v: str, info: ValidationInfo) -> str:
        return resolve_path(v, info)


class OutputConfig(StrictModel):
    """Where the annotation table is written (a folder of Parquet part files)."""

    path: str = Field(..., description="Output folder; parts are added atomically, so a rerun resumes.")
    mode: Literal["resume", "overwrite", "error"] = Field(
        "resume",
        description="An existing output: 'resume' skips the (sample, annotator) pairs already done; "
        "'overwrite' deletes it first; 'error' refuses to start.",
    )
    shared: bool = Field(
        False,
        description="The local path is a mount every node of the cluster sees (NFS and the like). On a "
        "cluster of more than one node a local path is refused unless this is set; a URI "
        "(s3://, gs://) needs nothing.",
    )

    @field_validator("path")
    @classmethod
    def _resolve(cls, v: str, info: ValidationInfo) -> str:
        return resolve_path(v, info)


class RayConfig(StrictModel):
    """How to reach Ray: None starts a local, embedded runtime."""

    address: str | None = Field(None, description="None: local Ray in-process; 'auto' or ray://...: a cluster.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local runtime (None: all).")
    serve_app_name: str = Field("annotators", description="Name of the Serve application of the annotators.")
    log_to_driver: bool = Field(
        False,
        description="Print the logs of Ray workers and Serve replicas "
        "in the driver's output (they are always in Ray's log files).",
    )
    keep_serve_running: bool = Field(
        False, description="Leave the annotator deployments up after the job (on a cluster)."
    )


class AnnotatorAppConfig(StrictModel):
    """Arguments of the Serve application (`serve_configs/*.yaml` args)."""

    task: TaskConfig = Field(..., description="Label set and prompt.")
    annotators: list[AnnotatorConfig] = Field(..., min_length=1, description="One deployment each.")

    _unique = field_validator("annotators")(check_unique_names)


class PipelineConfig(StrictModel):
    """How the pool streams through the annotators."""

    batch_size: int = Field(256, ge=1, description="Texts per batch sent to every annotator.")
    concurrency: int = Field(
        2,
        ge=1,
        description="Annotate-stage actors; each takes blocks of the prepared pool "
        "(a row group of a few thousand rows) one after another.",
    )
    in_flight: int = Field(
        4,
        ge=1,
        le=256,
        description="Batches each annotate actor keeps sent to the annotators at once: "
        "concurrency x in_flight batches in flight in all, which should cover "
        "the replicas of the slowest annotator.",
    )
    max_retries: int = Field(
        3, ge=0, description="Retries of a failed batch call before its rows are written as error rows."
    )
    retry_backoff_s: float = Field(1.0, ge=0.0, description="First wait between retries (doubles each time).")
    request_timeout_s: float = Field(600.0, gt=0, description="Timeout of one batch call to an annotator.")
    stage_num_cpus: float = Field(
        0.25, ge=0.0, description="CPUs reserved per annotate-stage actor (it mostly waits on the annotators)."
    )


class CascadeConfig(StrictModel):
    """Annotators called in stages: a sample goes on to the next stage only while the stages so
    far disagree on it or are unsure (``molal_ray/aggregation/cascade.py``)."""

    stages: list[list[str]] = Field(
        ...,
        min_length=2,
        description="Annotator names, stage by stage (every annotator in one stage; the surest first).",
    )
    min_vote_share: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="A sample is settled when every annotator asked "
        "so far put the same label on top and gave it at "
        "least this share of its sampled answers.",
    )
    order: Literal["config", "gold"] = Field(
        "config",
        description="'config': the stages as listed; 'gold': the "
        "same stage sizes filled with the annotators most "
        "accurate on labelled rows first (every annotator "
        "labels those rows once, before the pool).",
    )
    gold: str | None = Field(
        None,
        description="Label job with order 'gold': a CSV of known labels (sample_id, "
        "label) whose rows rank the annotators. The loop ranks them on its "
        "initial gold rows instead.",
    )

    @field_validator("gold")
    @classmethod
    def _resolve(cls, v: str | None, info: ValidationInfo) -> str | None:
        return resolve_path(v, info) if v else v

    @model_validator(mode="after")
    def _gold_for_order(self) -> CascadeConfig:
        if self.gold and self.order != "gold":
            raise ValueError("cascade.gold ranks the annotators and is read only with cascade.order: gold")
        return self

    def check_names(self, names: list[str]) -> None:
        flat = [a for stage in self.stages for a in stage]
        if any(not stage for stage in self.stages):
            raise ValueError("cascade.stages: an empty stage")
        dup = sorted({a for a in flat if flat.count(a) > 1})
        unknown = sorted(set(flat) - set(names))
        left = [a for a in names if a not in flat]
        if dup or unknown or left:
            raise ValueError(
                f"cascade.stages: every annotator in exactly one stage (twice: {dup}, not an annotator: "
                f"{unknown}, in no stage: {left})"
            )


def check_cascade(cascade: CascadeConfig | None, annotators: list[AnnotatorConfig]) -> None:
    if cascade is not None:
        cascade.check_names([a.name for a in annotators])


class LabelJobConfig(StrictModel):
    """`molal-ray label`: stream a pool through every annotator into the annotation table."""

    kind: ClassVar[str | None] = "label"

    task: TaskConfig
    annotators: list[AnnotatorConfig] = Field(..., min_length=1)
    pool: PoolConfig
    output: OutputConfig
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    cascade: CascadeConfig | None = Field(
        None, description="Call the annotators in stages (None: all of them on every text)."
    )

    _unique = field_validator("annotators")(check_unique_names)

    @model_validator(mode="after")
    def _cascade(self) -> LabelJobConfig:
        check_cascade(self.cascade, self.annotators)
        if self.task.few_shot is not None and self.task.few_shot.from_loop:
            raise ValueError(
                "task.few_shot.examples: 'loop' takes the loop's own labels (molal-ray run); a label "
                "job names a file of examples"
            )
        if self.cascade and self.cascade.order == "gold" and not self.cascade.gold:
            raise ValueError(
                "cascade.order 'gold' needs cascade.gold: a CSV (sample_id, label) of pool rows whose labels are known"
            )
        return self

    def stages(self) -> list[list[str]]:
        """The annotators stage by stage (one stage without a cascade)."""
        return self.cascade.stages if self.cascade else [[a.name for a in self.annotators]]

    def app_config(self) -> AnnotatorAppConfig:
        """The annotator application, with the few-shot examples read from their file (and the
        pool, for a sample_id,label file) into the task the replicas receive."""
        from molal_ray.engines.few_shot import with_examples

        return AnnotatorAppConfig(task=with_examples(self.task, self.pool), annotators=self.annotators)
