"""Where the samples routed to people go: review files, or a running Label Studio."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from molal_ray.config.base import StrictModel

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ReviewConfig(StrictModel):
    """``review``: how people see the samples a loop routes to them (``loop.human_per_round``)."""

    backend: Literal["files", "label_studio", "simulated"] = Field(
        "files",
        description="'files': the loop writes OUT/review/round-N.csv (and a Label Studio import file) and "
        "pauses until --resume; 'label_studio': it pushes the samples to a running Label "
        "Studio project and waits for the reviewers' labels; 'simulated': people are simulated "
        "by the gold file (benchmarks, examples): every routed row must have a gold label. Only "
        "'simulated' ever answers from the gold file.",
    )
    url: str | None = Field(None, description="label_studio: the server's address, e.g. http://127.0.0.1:8080.")
    project: str | int | None = Field(
        None, description="label_studio: the project's title (created when no project has it) or its id (an int)."
    )
    token_env: str = Field(
        "LABEL_STUDIO_API_KEY",
        description="label_studio: the environment variable that holds "
        "the access token (a personal access token or a "
        "legacy token); the token itself is never written.",
    )
    poll_s: float = Field(10.0, gt=0, description="label_studio: seconds between two looks at the project.")
    wait_s: float = Field(
        3600.0,
        ge=0,
        description="label_studio: how long a round waits for people before the "
        "loop pauses (--resume continues; 0: push and pause at once).",
    )
    timeout_s: float = Field(30.0, gt=0, description="label_studio: the time limit of one request to the server.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"got {v!r}; expected an http:// or https:// address")
        return v.rstrip("/") if v is not None else v

    @field_validator("token_env")
    @classmethod
    def _env(cls, v: str) -> str:
        if not _ENV_NAME.match(v):
            raise ValueError(f"got {v!r}; expected the name of an environment variable (not the token itself)")
        return v

    @model_validator(mode="after")
    def _needs(self) -> ReviewConfig:
        if self.backend == "label_studio" and (self.url is None or self.project is None):
            raise ValueError("backend 'label_studio' needs url and project")
        return self
