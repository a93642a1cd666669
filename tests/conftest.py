"""Shared fixtures: paths of the committed TREC example and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREC = ROOT / "examples" / "trec"
TREC_LABELS = ["abbreviation", "entity", "description", "human", "location", "numeric"]
TREC_ANNOTATORS = ["gemma", "llama", "mistral", "qwen", "yi"]


@pytest.fixture(scope="session")
def trec_dir() -> Path:
    return TREC


@pytest.fixture(scope="session")
def trec_recording():
    import pyarrow.parquet as pq

    return pq.read_table(TREC / "recording.parquet")
