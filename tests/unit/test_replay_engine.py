from __future__ import annotations

import asyncio

import numpy as np
import pytest

from molal_ray.annotation import AnswerParser, votes_from_answers
from molal_ray.config import AnnotatorConfig, TaskConfig
from molal_ray.engines import build_engine
from molal_ray.engines.recording import load_recording, trec_jsonl_to_recording
from molal_ray.exceptions import AnnotatorError
from tests.conftest import TREC, TREC_LABELS


def _engine(name="yi", path=None):
    ann = AnnotatorConfig(name=name, engine={"type": "replay", "path": str(path or TREC / "recording.parquet")})
    return build_engine(ann, TaskConfig(labels=TREC_LABELS))


def test_replay_matches_the_recording_through_the_parser():
    eng = _engine("mistral")
    asyncio.run(eng.start())
    rec = load_recording(TREC / "recording.parquet", "mistral")
    ids = list(rec)[:300]
    out = asyncio.run(eng.annotate(ids, [""] * len(ids)))
    parser = AnswerParser(TREC_LABELS)
    for sid, a in zip(ids, out):
        raw_probs, samples = rec[sid]
        assert a.error is None
        np.testing.assert_allclose(a.probs, np.asarray(raw_probs) / np.sum(raw_probs), rtol=1e-12)
        votes, n_inv = votes_from_answers(parser.parse_many(samples), 6)
        np.testing.assert_allclose(a.votes, votes)
        assert a.n_invalid == n_inv and a.n_samples == 10
        assert a.votes.sum() == pytest.approx(1 - a.n_invalid / 10)
    assert sum(a.n_invalid for a in out) > 0  # mistral answers "human, entity" now and then


def test_unknown_id_is_an_error_row():
    eng = _engine()
    asyncio.run(eng.start())
    out = asyncio.run(eng.annotate(["trec-00000", "nope"], ["", ""]))
    assert out[0].error is None
    assert out[1].error.startswith("unknown_sample") and out[1].probs is None


def test_annotator_missing_from_recording_fails_at_start():
    with pytest.raises(AnnotatorError, match="no rows of annotator 'gpt'"):
        asyncio.run(_engine("gpt").start())


def test_jsonl_and_parquet_recordings_agree(tmp_path):
    import gzip
    import json

    rows = [
        {
            "id": "s1",
            "text": "q",
            "gold": "entity",
            "annotators": {"yi": {"label_probs": [0, 2, 0, 0, 0, 2], "samples": ["entity"] * 9 + ["date"]}},
        }
    ]
    p = tmp_path / "r.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write(json.dumps(rows[0]) + "\n")
    import pyarrow.parquet as pq

    pq.write_table(trec_jsonl_to_recording(p), tmp_path / "r.parquet")
    a = asyncio.run(_run(_engine("yi", p), ["s1"]))[0]
    b = asyncio.run(_run(_engine("yi", tmp_path / "r.parquet"), ["s1"]))[0]
    np.testing.assert_allclose(a.probs, [0, 0.5, 0, 0, 0, 0.5])
    np.testing.assert_allclose(a.probs, b.probs)
    assert a.n_invalid == b.n_invalid == 1


async def _run(eng, ids):
    await eng.start()
    return await eng.annotate(ids, [""] * len(ids))
