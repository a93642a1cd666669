"""Strict, YAML-loadable configuration models."""

from molal_ray.config.annotator import (
    AnnotatorConfig,
    AutoscalingConfig,
    HFEngineConfig,
    OpenAIEngineConfig,
    ReplayEngineConfig,
    ResourcesConfig,
    SamplingConfig,
    VLLMEngineConfig,
)
from molal_ray.config.base import StrictModel
from molal_ray.config.job import (
    AnnotatorAppConfig,
    LabelJobConfig,
    OutputConfig,
    PipelineConfig,
    PoolConfig,
    RayConfig,
)
from molal_ray.config.task import TaskConfig

__all__ = [
    "AnnotatorAppConfig",
    "AnnotatorConfig",
    "AutoscalingConfig",
    "HFEngineConfig",
    "LabelJobConfig",
    "OpenAIEngineConfig",
    "OutputConfig",
    "PipelineConfig",
    "PoolConfig",
    "RayConfig",
    "ReplayEngineConfig",
    "ResourcesConfig",
    "SamplingConfig",
    "StrictModel",
    "TaskConfig",
    "VLLMEngineConfig",
]
