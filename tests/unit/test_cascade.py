"""The annotator cascade: its rule, and the annotate stage calling the annotators in stages
(fake Serve handles over the replay engines, no Ray): later stages see only the unsettled rows,
annotators not asked are absent, and a run stopped after the first stage resumes to the same table."""

from __future__ import annotations

import asyncio

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from molal_ray import schema
from molal_ray.aggregation.cascade import settled, settled_ids
from molal_ray.config import AnnotatorConfig, TaskConfig
from molal_ray.engines import build_engine
from molal_ray.exceptions import ConfigError
from molal_ray.ids import hash_ids
from molal_ray.pipeline.annotate_stage import AnnotateStage
from molal_ray.pipeline.output import DoneIndex, read_annotation_table
from molal_ray.pipeline.pool_store import BUCKET
from molal_ray.pipeline.prepare import ID_HASH
from molal_ray.serve.deployment import pack_annotations
from tests.conftest import TREC, TREC_ANNOTATORS, TREC_LABELS

STAGES = [["yi", "mistral"], ["gemma", "llama", "qwen"]]


def test_the_rule():
    v = np.array(
        [
            [[1, 0], [0.9, 0.1]],  # agree, sure: settled
            [[1, 0], [0, 1]],  # disagree
            [[0.7, 0.3], [1, 0]],  # agree, one unsure
            [[1, 0], [np.nan] * 2],
        ]
    )  # one failed
    assert settled(v, ~np.isnan(v).any(2), 0.8).tolist() == [True, False, False, False]
    assert settled(v, ~np.isnan(v).any(2), 0.6).tolist() == [True, False, True, False]


class _Response:
    def __init__(self, payload):  # type: ignore[no-untyped-def]
        self.payload = payload

    def result(self, timeout_s=None):  # type: ignore[no-untyped-def]
        return self.payload


class _Handle:
    """A Serve handle stand-in: ``annotate.remote(ids, texts).result()`` from a replay engine."""

    def __init__(self, name, calls):  # type: ignore[no-untyped-def]
        self.engine = build_engine(
            AnnotatorConfig(name=name, engine={"type": "replay", "path": str(TREC / "recording.parquet")}),
            TaskConfig(labels=TREC_LABELS),
        )
        asyncio.run(self.engine.start())
        self.annotate = self
        self.name, self.calls = name, calls

    def remote(self, ids, texts):  # type: ignore[no-untyped-def]
        self.calls[self.name] = self.calls.get(self.name, 0) + len(ids)
        return _Response(pack_annotations(asyncio.run(self.engine.annotate(ids, texts)), len(TREC_LABELS)))


def _stage(parts, stages, calls, empty):  # type: ignore[no-untyped-def]
    parts.mkdir(parents=True, exist_ok=True)
    names = [a for s in stages for a in s]
    return AnnotateStage(
        "annotators",
        names,
        parts,
        DoneIndex(parts, empty=empty),
        max_retries=0,
        retry_backoff_s=0.0,
        request_timeout_s=10.0,
        batch_size=64,
        in_flight=2,
        stages=stages,
        num_classes=len(TREC_LABELS),
        min_vote_share=0.8,
        handles={a: _Handle(a, calls) for a in names},
    )  # stand-ins for the deployments


@pytest.fixture(scope="module")
def block():
    pool = pq.read_table(TREC / "pool.parquet").slice(0, 200)
    ids = pool.column("id").to_pylist()
    n = len(ids)
    return pa.table(
        {
            schema.SAMPLE_ID: ids,
            schema.TEXT: pool.column("text"),
            schema.POOL_ERROR: pa.nulls(n, pa.string()),
            schema.POOL_WARNING: pa.nulls(n, pa.string()),
            ID_HASH: pa.array(hash_ids(ids), pa.uint64()),
            BUCKET: pa.array(np.zeros(n, np.int32)),
        }
    )


def _pairs(table):  # type: ignore[no-untyped-def]
    return sorted(zip(table.column(schema.SAMPLE_ID).to_pylist(), table.column(schema.ANNOTATOR).to_pylist()))


def test_later_stages_see_only_unsettled_rows(tmp_path, block):
    calls: dict[str, int] = {}
    _stage(tmp_path / "parts", STAGES, calls, empty=True)(block)
    table = read_annotation_table(tmp_path)
    ids = block.column(schema.SAMPLE_ID).to_pylist()
    first = table.filter(pc.is_in(table.column(schema.ANNOTATOR), value_set=pa.array(STAGES[0])))
    unsettled = {i for i, ok in zip(ids, settled_ids(first, STAGES[0], 6, 0.8, ids)) if not ok}
    assert calls == {"yi": 200, "mistral": 200, **{a: len(unsettled) for a in STAGES[1]}}
    assert 0 < len(unsettled) < 200
    for a in STAGES[1]:  # the second stage's annotators are absent where the first settled the row
        asked = {i for i, x in _pairs(table) if x == a}
        assert asked == unsettled
    assert len(_pairs(table)) == len(set(_pairs(table))) == 400 + 3 * len(unsettled)


def test_a_run_stopped_after_the_first_stage_resumes_to_the_same_table(tmp_path, block):
    straight: dict[str, int] = {}
    _stage(tmp_path / "a" / "parts", STAGES, straight, empty=True)(block)
    calls: dict[str, int] = {}
    _stage(tmp_path / "b" / "parts", STAGES[:1], calls, empty=True)(block)  # stopped before stage 2
    _stage(tmp_path / "b" / "parts", STAGES, calls, empty=False)(block)  # resumed
    assert _pairs(read_annotation_table(tmp_path / "b")) == _pairs(read_annotation_table(tmp_path / "a"))
    assert calls == straight  # the resumed run asked stage 1 nothing again


def test_the_stages_name_every_annotator_once():
    from molal_ray.config import LabelJobConfig

    base = {
        "task": {"labels": TREC_LABELS},
        "pool": {"path": "p.parquet"},
        "output": {"path": "out"},
        "annotators": [{"name": n, "engine": {"type": "replay", "path": "r.parquet"}} for n in TREC_ANNOTATORS],
    }
    ok = LabelJobConfig.from_dict({**base, "cascade": {"stages": STAGES}})
    assert ok.stages() == STAGES and LabelJobConfig.from_dict(base).stages() == [TREC_ANNOTATORS]
    for stages, word in (
        ([["yi", "mistral"], ["gemma", "llama"]], "in no stage"),
        ([["yi", "mistral"], ["yi", "gemma", "llama", "qwen"]], "twice"),
        ([["yi", "mistral"], ["gemma", "llama", "qwen", "gpt"]], "not an annotator"),
    ):
        with pytest.raises(ConfigError, match=word):
            LabelJobConfig.from_dict({**base, "cascade": {"stages": stages}})


def _matrix(votes):  # type: ignore[no-untyped-def]
    from molal_ray.aggregation.features import AnnotationMatrix

    v = np.asarray(votes, np.float32)
    present = ~np.isnan(v).any(2)
    return AnnotationMatrix(
        np.array([f"s{i}" for i in range(len(v))], dtype=object), ["a", "b", "c", "d"], v.copy(), v.copy(), present
    )


N = [np.nan, np.nan]
SURE0, SURE1, HALF = [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]


def test_the_view_hides_what_the_cascade_would_not_have_asked():
    from molal_ray.aggregation.cascade import cascade_view, stage_reached

    stages = [["a"], ["b"], ["c"]]  # "d" is in no stage
    m = _matrix(
        [
            [SURE0, SURE0, SURE1, SURE1],  # settled by a: b and c hidden, d kept
            [HALF, SURE0, SURE0, SURE0],  # a unsure, a+b unsure: c reached
            [SURE0, SURE1, SURE0, SURE0],  # a sure, but b... b is never asked: settled at a
            [N, SURE0, SURE0, N],  # a failed: goes on, a+b not settled (a absent): c reached
            [SURE1, N, N, N],
        ]
    )  # a cascaded row: already as the cascade left it
    assert stage_reached(m, stages, 0.8).tolist() == [0, 2, 0, 2, 0]
    v = cascade_view(m, stages, 0.8)
    assert v.present.tolist() == [
        [True, False, False, True],
        [True, True, True, True],
        [True, False, False, True],
        [False, True, True, False],
        [True, False, False, False],
    ]
    assert np.isnan(v.votes[0, 1]).all() and np.isnan(v.probs[2, 2]).all() and v.votes[0, 3].tolist() == SURE1
    assert cascade_view(v, stages, 0.8) is v  # a table the cascade wrote is left as it is
    assert m.present.sum() == 15  # the input is not changed


def test_the_order_by_accuracy_keeps_the_stage_sizes():
    from molal_ray.aggregation.cascade import order_by_accuracy

    m = _matrix([[SURE0, SURE1, SURE0, SURE0], [SURE1, SURE1, N, SURE0], [SURE0, SURE0, SURE0, SURE1]])
    y = np.array([0, 1, 0])
    stages, acc = order_by_accuracy(m, np.arange(3), y, [["a", "b"], ["c", "d"]])
    # a: 3/3, b: 2/3, c: 2/3 (its missing answer counts as wrong), d: 1/3; b before c (config order)
    assert acc == pytest.approx({"a": 1.0, "b": 2 / 3, "c": 2 / 3, "d": 1 / 3})
    assert stages == [["a", "b"], ["c", "d"]]
    stages, _ = order_by_accuracy(m, np.arange(3), y, [["d"], ["c", "b", "a"]])
    assert stages == [["a"], ["c", "b", "d"]]


def test_order_gold_needs_gold_rows():
    from molal_ray.config import LabelJobConfig
    from molal_ray.config.loop import LoopJobConfig

    base = {
        "task": {"labels": TREC_LABELS},
        "pool": {"path": "p.parquet"},
        "output": {"path": "out"},
        "annotators": [{"name": n, "engine": {"type": "replay", "path": "r.parquet"}} for n in TREC_ANNOTATORS],
    }
    with pytest.raises(ConfigError, match="needs cascade.gold"):
        LabelJobConfig.from_dict({**base, "cascade": {"stages": STAGES, "order": "gold"}})
    with pytest.raises(ConfigError, match="only with cascade.order: gold"):
        LabelJobConfig.from_dict({**base, "cascade": {"stages": STAGES, "gold": "g.csv"}})
    ok = LabelJobConfig.from_dict(
        {**base, "cascade": {"stages": STAGES, "order": "gold", "gold": "g.csv"}}, base_dir="/cfg"
    )
    assert ok.cascade is not None and ok.cascade.gold == "/cfg/g.csv"
    loop = {**base, "gold": "g.csv", "classifier": {"backbone": "b"}}
    assert LoopJobConfig.from_dict({**loop, "cascade": {"stages": STAGES, "order": "gold"}}).cascade is not None
    with pytest.raises(ConfigError, match="ranks the annotators on its initial gold"):
        LoopJobConfig.from_dict({**loop, "cascade": {"stages": STAGES, "order": "gold", "gold": "g.csv"}})
