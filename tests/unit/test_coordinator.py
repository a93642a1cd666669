"""The coordinator's round logic without Ray: fake services around the real scoring stage (with a
fake classifier), the real replay annotators of the TREC recording and the real aggregators."""

from __future__ import annotations

import asyncio
import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from molal_ray import schema
from molal_ray.aggregation.api import load_gold
from molal_ray.config import AnnotatorConfig, TaskConfig
from molal_ray.config.loop import LoopSettings
from molal_ray.engines import build_engine
from molal_ray.exceptions import PoolExhaustedError, ReviewPending, SchemaError
from molal_ray.loop.coordinator import Coordinator, Split
from molal_ray.loop.scoring import ScoreStage, collect
from molal_ray.loop.state import LoopState
from molal_ray.pipeline.annotate_stage import annotation_rows
from molal_ray.pipeline.prepare import ROW
from molal_ray.serve.deployment import pack_annotations
from molal_ray.training.classifier import TrainResult
from tests.conftest import TREC, TREC_ANNOTATORS, TREC_LABELS

N = 300


class FakePredictor:
    """Class probabilities from a hash of the text and the model's name: deterministic, and
    different for every trained model."""

    def __init__(self, model: str) -> None:
        self.model = model

    def _p(self, text: str, salt: str = "") -> np.ndarray:
        h = hashlib.blake2b(f"{self.model}|{salt}|{text}".encode(), digest_size=24).digest()
        logits = np.frombuffer(h, dtype=np.uint8)[:6].astype(np.float64) / 40.0
        return np.exp(logits) / np.exp(logits).sum()

    def predict(self, texts):  # type: ignore[no-untyped-def]
        probs = np.stack([self._p(t) for t in texts])
        return {"probs": probs, "embeddings": np.stack([np.r_[self._p(t, "e"), self._p(t, "f")] for t in texts])}

    def noisy_probs(self, texts, noise, copies, seed=0):  # type: ignore[no-untyped-def]
        return np.stack([np.stack([self._p(t, f"n{k}") for t in texts]) for k in range(copies)])


class Geometry:
    def __init__(self, n: int) -> None:
        self.n_usable = n

    def keys_of(self, dense):  # type: ignore[no-untyped-def]
        return np.asarray(dense, dtype=np.int64) + 1000  # keys differ from row numbers on purpose

    def dense_of(self, keys):  # type: ignore[no-untyped-def]
        return np.asarray(keys, dtype=np.int64) - 1000


class FakeServices:
    def __init__(self, pool: pa.Table) -> None:
        self.pool = pool  # _row, sample_id, text
        self.by_key = {k: i for i, k in enumerate(pool.column(ROW).to_pylist())}
        task = TaskConfig(labels=TREC_LABELS)
        self.engines = {
            a: build_engine(
                AnnotatorConfig(name=a, engine={"type": "replay", "path": str(TREC / "recording.parquet")}), task
            )
            for a in TREC_ANNOTATORS
        }
        for e in self.engines.values():
            asyncio.run(e.start())
        self.tables: list[pa.Table] = []
        self.annotated: list[str] = []
        self.pairs: set[tuple[str, str]] = set()
        self.review_dir = None
        self.requests = []
        self.examples_sent: list = []
        self.embeddings = None  # (pool rows, D): what a head-mode loop's services fetch by row key

    def score(self, model_dir, request):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        stage = ScoreStage(model_dir, request, 32, predictor=FakePredictor(model_dir))
        return collect([stage(self.pool.slice(i, 37)) for i in range(0, self.pool.num_rows, 37)], request)

    def annotate(self, rows, stages=None, examples=None):  # type: ignore[no-untyped-def]
        """Each (sample, annotator) pair once; in stages like the annotate stage (a cascade)."""
        from molal_ray.aggregation.cascade import settled_ids

        self.examples_sent.append(examples)
        all_ids, all_keys = rows.column(schema.SAMPLE_ID).to_pylist(), rows.column(ROW).to_pylist()
        self.annotated += [i for i in all_ids if i not in self.annotated]
        go, calls = np.ones(len(all_ids), bool), 0
        for k, stage in enumerate(stages or [list(self.engines)]):
            if k:
                earlier = [a for st in stages[:k] for a in st]
                go &= ~settled_ids(self.annotations(), earlier, 6, 0.8, all_ids)
            for a in stage:
                todo = [(i, key) for i, key, g in zip(all_ids, all_keys, go) if g and (i, a) not in self.pairs]
                if not todo:
                    continue
                ids, keys = [i for i, _ in todo], [key for _, key in todo]
                self.pairs |= {(i, a) for i in ids}
                payload = pack_annotations(asyncio.run(self.engines[a].annotate(ids, self.texts(keys))), 6)
                self.tables.append(annotation_rows(a, ids, payload, [None] * len(ids)))
                calls += len(ids)
        return calls

    def review(self, round_, items, status=None):  # type: ignore[no-untyped-def]
        from molal_ray.config.review import ReviewConfig
        from molal_ray.review.backend import FileReview, review_round
        from molal_ray.storage import resolve

        return review_round(
            FileReview(resolve(str(self.review_dir)), TREC_LABELS), ReviewConfig(), round_, items, status
        )

    def annotations(self):  # type: ignore[no-untyped-def]
        return pa.concat_tables(self.tables)

    def texts(self, keys):  # type: ignore[no-untyped-def]
        return [self.pool.column("text")[self.by_key[int(k)]].as_py() for k in keys]

    def text_embeddings(self, keys):  # type: ignore[no-untyped-def]
        if self.embeddings is None:
            return None
        return self.embeddings[[self.by_key[int(k)] for k in keys]]

    def train(self, train, val, lam, name):  # type: ignore[no-untyped-def]
        assert set(train.columns) == {ROW, "label", "weight", "negatives"} and len(val) >= 1
        assert set(train[ROW]).isdisjoint(val[ROW]) and set(train[ROW]) <= set(self.by_key)
        return TrainResult(model_dir=f"model-{name}-{len(train)}", val_accuracy=0.5, epochs_run=1)


@pytest.fixture(scope="module")
def trec():
    pool = pq.read_table(TREC / "pool.parquet").slice(0, N).sort_by("id")
    table = pa.table(
        {
            ROW: pa.array(np.arange(N, dtype=np.int64) + 1000),
            schema.SAMPLE_ID: pool.column("id"),
            "text": pool.column("text"),
        }
    )
    gold_df = load_gold(TREC / "gold.csv", TREC_LABELS)
    gold = dict(zip(gold_df["sample_id"], gold_df["y"].astype(int)))
    return table, gold


def _coordinator(trec, tmp_path, cascade=None, examples_from_labels=False, simulated_people=False, **settings):
    table, gold = trec
    s = LoopSettings(
        **{
            "initial_gold": 20,
            "rounds": 2,
            "query_size": 15,
            "strategy": "max-entropy",
            "subsample": 100,
            "test_fraction": 0.2,
            "test_max": 40,
            "seed": 1,
            **settings,
        }
    )
    found = table.select([ROW, schema.SAMPLE_ID])
    split = Split.make(found, gold, s.test_fraction, s.test_max, s.seed)
    services = FakeServices(table)
    services.review_dir = tmp_path / "review"
    state = LoopState(labels=TREC_LABELS, seed=s.seed)
    return Coordinator(
        state,
        s,
        Geometry(N),
        split,
        services,
        tmp_path / "state",
        cascade,
        examples_from_labels=examples_from_labels,
        simulated_people=simulated_people,
    ), services


def _run(coord):
    out = []
    while not coord.finished:
        out.append(coord.run_round())
    return out


def test_rounds_query_annotate_aggregate_and_keep_only_labelled_rows_in_the_state(trec, tmp_path):
    coord, services = _coordinator(trec, tmp_path)
    metrics = _run(coord)
    assert [m["round"] for m in metrics] == [0, 1, 2] and [m["n_labeled"] for m in metrics] == [20, 35, 50]
    state = coord.state
    ids = [x.sample_id for x in state.labeled]
    assert len(set(ids)) == 50 and not {x.row for x in state.labeled} & set(coord.split.test_rows.tolist())
    assert [x.source for x in state.labeled].count("gold") == 20
    molal = [x for x in state.labeled if x.source == "molal"]
    assert all(x.weight in (1.0, 0.5) for x in molal) and any(x.weight == 0.5 for x in molal)
    assert any(x.negatives for x in molal)
    assert sorted(services.annotated) == sorted(ids)  # each labelled row annotated once
    assert 0.4 < metrics[2]["annotation_accuracy"] <= 1.0
    assert set(metrics[1]["phase_s"]) == {"query", "annotate", "aggregate", "train", "score"}
    # Scoring asked only for sub-samples that avoid labelled and test rows.
    for req in services.requests:
        if req.candidates is not None and len(req.candidates):
            assert len(req.candidates) == 100 and req.top_n == 15
    saved = json.loads((tmp_path / "state" / "state.json").read_text())
    assert len(saved["labeled"]) == 50 and "pool_ids" not in saved
    # Max-entropy picked the most uncertain candidates of the scored sub-sample.
    req = services.requests[0]
    stage = ScoreStage("model-round-0-16", req, 32, predictor=FakePredictor("model-round-0-16"))
    probs = stage.predictor.predict(services.texts(req.candidates))["probs"]
    entropy = -(probs * np.log(probs)).sum(1)
    picked = {x.row for x in state.labeled[20:35]}
    assert min(entropy[[k in picked for k in req.candidates.tolist()]]) >= np.sort(entropy)[-15] - 1e-12


def test_aggregator_labels_weigh_alpha_where_they_disagree_with_the_previous_classifier(trec, tmp_path):
    """One weight rule for new rows and relabelled ones: 1 where the label agrees with the
    previous classifier or there was none (-1), loop.discrepancy_alpha where it disagrees."""
    probs = np.array([[0.9, 0.1, 0.0], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.6, 0.4, 0.0]])
    prev = np.array([0, 1, 0, -1])  # agrees, disagrees, disagrees, no previous classifier
    coord, _ = _coordinator(trec, tmp_path, discrepancy_alpha=0.3)
    np.testing.assert_allclose(coord.label_weights(probs, prev), [1.0, 0.3, 0.3, 1.0])


def test_a_resumed_coordinator_repeats_an_uninterrupted_one(trec, tmp_path):
    straight, _ = _coordinator(trec, tmp_path / "a")
    _run(straight)
    first, _ = _coordinator(trec, tmp_path / "b", rounds=1)
    _run(first)
    resumed, _ = _coordinator(trec, tmp_path / "b")
    resumed.state = LoopState.load(tmp_path / "b" / "state")
    _run(resumed)
    assert [x.sample_id for x in straight.state.labeled] == [x.sample_id for x in resumed.state.labeled]
    assert [m["test_accuracy"] for m in straight.state.history] == [m["test_accuracy"] for m in resumed.state.history]


def test_a_round_resumed_after_its_annotation_counts_the_calls_made_before(trec, tmp_path):
    """Killed after the round's pairs were asked but before it was saved: the resumed round asks
    nothing again and still reports the calls its rows cost."""
    coord, services = _coordinator(trec, tmp_path, rounds=1)
    assert coord.run_round()["llm_calls"] == 20 * 5
    queried, _ = coord.query(1)
    assert services.annotate(queried) == 15 * 5  # ... then the process dies
    resumed, _ = _coordinator(trec, tmp_path, rounds=1)
    resumed.services = services  # the same annotation table
    resumed.state = LoopState.load(tmp_path / "state")
    asked = []
    real = services.annotate
    services.annotate = lambda rows, stages=None, examples=None: asked.append(real(rows, stages)) or asked[-1]
    m = resumed.run_round()
    assert asked == [0] and m["llm_calls"] == 15 * 5
    assert sorted(x.sample_id for x in resumed.state.labeled[20:]) == sorted(queried.column("sample_id").to_pylist())


def test_few_shot_examples_from_the_loop_are_the_peoples_labels_so_far(trec, tmp_path, monkeypatch):
    """task.few_shot.examples 'loop': each round's annotators get every row people labelled so
    far (round 0's gold, then also the rows routed to people), with its text and label name;
    never a test row."""
    coord, services = _coordinator(
        trec, tmp_path, rounds=2, human_per_round=5, simulated_people=True, examples_from_labels=True
    )
    metrics = _run(coord)
    assert len(metrics) == 3
    sent = services.examples_sent
    # Round 0: the gold rows; round r: also the rows people labelled in rounds before it (a round's
    # routed rows reach people after the LLMs answered them).
    assert [len(e) for e in sent] == [20, 20, 25]
    texts = {
        sid: services.pool.column("text")[i].as_py()
        for i, sid in enumerate(services.pool.column("sample_id").to_pylist())
    }
    people = {x.sample_id: TREC_LABELS[x.label] for x in coord.state.labeled if x.source in ("gold", "human")}
    for batch in sent:
        assert all(e["label"] == people[e["sample_id"]] and e["text"] == texts[e["sample_id"]] for e in batch)
    test_keys = set(coord.split.test_rows.tolist())
    test_ids = {
        sid
        for key, sid in zip(services.pool.column(ROW).to_pylist(), services.pool.column("sample_id").to_pylist())
        if key in test_keys
    }
    assert test_ids and not {e["sample_id"] for e in sent[-1]} & test_ids
    plain, services = _coordinator(trec, tmp_path / "plain", rounds=1)
    _run(plain)
    assert services.examples_sent == [None, None]  # without it, the task's own examples


def test_a_head_loop_aggregates_with_the_texts_a_finetune_loop_without(trec, tmp_path):
    from molal_ray.testing.synthetic import synthetic_embeddings

    table, gold = trec
    coord, services = _coordinator(trec, tmp_path / "text", rounds=1, query_size=30)
    classes = np.array([gold.get(i, 0) for i in table.column(schema.SAMPLE_ID).to_pylist()])
    services.embeddings = synthetic_embeddings(classes, dim=16, noise=0.3)
    with_text = _run(coord)[1]
    assert with_text["text_view_rows"] >= 20  # the default read the pool's embeddings of its rows
    coord, services = _coordinator(trec, tmp_path / "plain", rounds=1, query_size=30)
    assert _run(coord)[1]["text_view_rows"] == 0


def test_labelable_weighing_queries_where_the_llms_agreed_on_similar_texts(trec, tmp_path, monkeypatch):
    """labelable_weight: each candidate's expected agreement comes from the annotated rows'
    embeddings; the queries lean to where it is high, against plain max-entropy's on the same
    candidates."""
    from molal_ray.loop.coordinator import Coordinator
    from molal_ray.strategies import labelable
    from molal_ray.testing.synthetic import synthetic_embeddings

    table, gold = trec
    classes = np.array([gold.get(i, 0) for i in table.column(schema.SAMPLE_ID).to_pylist()])
    inputs, expected = [], {}
    real_agreement, real_confidence = labelable.expected_agreement, Coordinator.label_confidence

    def recording_agreement(candidates, annotated, agreement, **kw):  # type: ignore[no-untyped-def]
        inputs.append((len(candidates), len(annotated), agreement))
        return real_agreement(candidates, annotated, agreement, **kw)

    def recording_confidence(self, keys):  # type: ignore[no-untyped-def]
        conf = real_confidence(self, keys)
        expected.update(zip(np.asarray(keys).tolist(), conf.tolist()))
        return conf

    monkeypatch.setattr(labelable, "expected_agreement", recording_agreement)
    monkeypatch.setattr(Coordinator, "label_confidence", recording_confidence)
    picked = {}
    for w in (4.0, 0.0):
        coord, services = _coordinator(trec, tmp_path / str(w), rounds=1, query_size=15, labelable_weight=w)
        services.embeddings = synthetic_embeddings(classes, dim=16, noise=0.3)
        _run(coord)
        picked[w] = [x.row for x in coord.state.labeled[20:]]
    assert len(inputs) == 1  # weighed once: the loop with labelable_weight
    n_cand, n_annotated, agreement = inputs[0]
    assert n_cand == 100 and n_annotated == 20 and np.isfinite(agreement).all()  # subsample; round 0's gold rows
    assert set(picked[0.0]) <= set(expected) and set(picked[4.0]) <= set(expected)  # the same 100 candidates
    assert np.mean([expected[k] for k in picked[4.0]]) > np.mean([expected[k] for k in picked[0.0]]) + 0.02


@pytest.mark.parametrize("strategy", ["random", "coreset", "bemps", "noise-stability"])
def test_every_strategy_runs_a_round(trec, tmp_path, strategy):
    coord, services = _coordinator(trec, tmp_path, rounds=1, strategy=strategy, noise_copies=2)
    _run(coord)
    assert len(coord.state.labeled) == 35
    req = services.requests[0]
    if strategy == "random":  # scores only the rows it queries (for the discrepancy weights)
        assert len(req.candidates) == 15
    if strategy == "coreset":
        assert len(req.labeled) == 20  # the labelled rows' embeddings are the first centres


def test_majority_and_single_annotator_modes_label_by_the_votes(trec, tmp_path):
    for mode in ("majority", "yi"):
        coord, services = _coordinator(trec, tmp_path / mode, rounds=1, annotation=mode, strategy="random")
        _run(coord)
        table = services.annotations().to_pandas()
        for row in coord.state.labeled[20:]:
            votes = table[(table.sample_id == row.sample_id)]
            if mode == "yi":
                v = np.asarray(votes[votes.annotator == "yi"]["votes"].iloc[0])
                assert row.label == int(np.argmax(v)) and row.source == "annotator"
            else:
                total = np.sum(np.stack(votes["votes"].to_numpy()), axis=0)
                assert total[row.label] == total.max() and row.source == "majority"
            assert row.weight == 1.0 and row.negatives == []


def test_gold_mode_asks_no_annotator(trec, tmp_path):
    coord, services = _coordinator(trec, tmp_path, rounds=1, annotation="gold")
    metrics = _run(coord)
    assert services.annotated == [] and metrics[1]["annotation_accuracy"] == 1.0


def test_an_exhausted_pool_is_a_clear_error(trec, tmp_path):
    coord, _ = _coordinator(trec, tmp_path, rounds=30, query_size=15)
    with pytest.raises(PoolExhaustedError, match="Pool exhausted"):
        _run(coord)


def test_gold_report_scores_the_assigned_labels_and_each_annotator_on_the_same_rows(trec, tmp_path):
    coord, services = _coordinator(trec, tmp_path, rounds=2)
    _run(coord)
    report = coord.gold_report()
    gold = coord.split.gold
    assigned = [r for r in coord.state.labeled if r.source == "molal"]
    assert report["assigned"]["rows"] == len(assigned) == 30
    conf = np.array(report["assigned"]["confusion"])
    assert conf.sum() == 30 and np.trace(conf) == sum(gold[r.sample_id] == r.label for r in assigned)
    assert report["assigned"]["accuracy"] == pytest.approx(np.trace(conf) / 30)
    table = services.annotations().to_pandas()
    for name in TREC_ANNOTATORS:
        hits = []
        for r in assigned:
            row = table[(table.sample_id == r.sample_id) & (table.annotator == name)].iloc[0]
            guess = int(np.argmax(np.asarray(row["votes"]) + 1e-3 * np.asarray(row["probs"])))
            hits.append(guess == gold[r.sample_id])
        assert report["annotators"][name] == {"accuracy": pytest.approx(np.mean(hits)), "rows": 30}


def test_routed_samples_get_peoples_labels_and_join_the_aggregators_gold(trec, tmp_path, monkeypatch):
    from molal_ray.loop import coordinator as mod
    from molal_ray.review import uncertainty

    fits, seen = [], {}

    class RecordingGold(mod.Gold):  # the gold set each round's aggregator is fitted on
        def __init__(self, index, y, num_classes):  # type: ignore[no-untyped-def]
            super().__init__(index, y, num_classes)
            fits.append(len(y))

    monkeypatch.setattr(mod, "Gold", RecordingGold)
    coord, services = _coordinator(trec, tmp_path, rounds=2, human_per_round=5, simulated_people=True)
    real_aggregate = coord.aggregate

    def recording_aggregate(m, ids):  # type: ignore[no-untyped-def]
        seen[coord.state.round] = (list(ids), p := real_aggregate(m, ids))
        return p

    coord.aggregate = recording_aggregate  # type: ignore[method-assign]
    metrics = _run(coord)
    assert [m["n_human"] for m in metrics] == [20, 5, 5] and [m["llm_calls"] for m in metrics] == [100, 75, 75]
    assert fits == [20, 25]  # round 2's aggregator also fits on round 1's five human labels
    gold = coord.split.gold
    for r in (1, 2):
        ids, probs = seen[r]
        human = {x.sample_id for x in coord.state.labeled[20 + 15 * (r - 1) : 20 + 15 * r] if x.source == "human"}
        assert len(human) == 5
        u = dict(zip(ids, uncertainty(probs, "margin")))
        assert min(u[i] for i in human) >= max(u[i] for i in ids if i not in human)  # the least certain went
        # people (the gold file here) against the mixture's label on the same five rows
        mixture = {i: int(p.argmax()) for i, p in zip(ids, probs)}
        agreed = metrics[r]["people_agreement"]
        assert agreed["n"] == 5 and agreed["mixture"] == np.mean([mixture[i] == gold[i] for i in human])
        assert set(agreed["annotators"]) == set(TREC_ANNOTATORS)
    for x in coord.state.labeled[20:]:
        if x.source == "human":
            assert x.label == gold[x.sample_id] and x.weight == 1.0 and x.negatives == []
    assert metrics[2]["llm_label_accuracy"] is not None


def test_people_are_asked_through_review_files_even_where_the_gold_file_knows_the_labels(trec, tmp_path):
    from molal_ray.exceptions import ReviewError
    from molal_ray.loop.state import LoopState

    coord, services = _coordinator(trec, tmp_path, rounds=1, human_per_round=5)
    coord.run_round()
    # Every pool row has a gold label here; people are still asked, through the review files.
    assert set(trec[0].column(schema.SAMPLE_ID).to_pylist()) <= set(coord.split.gold)
    with pytest.raises(ReviewPending, match="round 1: 5 samples need a person's label") as err:
        coord.run_round()
    review = tmp_path / "review" / "round-1.csv"
    assert err.value.path == str(review)
    assert (tmp_path / "review" / "round-1.labelstudio.json").is_file()  # the file hand-off for Label Studio
    assert (tmp_path / "review" / "labelstudio-config.xml").is_file()
    rows = review.read_text().splitlines()
    assert rows[0] == "sample_id,text,suggested,confidence,label" and len(rows) == 6

    def resumed():  # type: ignore[no-untyped-def]
        state = LoopState.load(tmp_path / "state")
        return Coordinator(state, coord.settings, coord.pool, coord.split, services, tmp_path / "state")

    filled = [r + ("entity" if i else "") for i, r in enumerate(rows)]
    review.write_text("\n".join(filled[:-1] + [filled[-1][: -len("entity")] + "no-such-label"]) + "\n")
    again = resumed()
    with pytest.raises(ReviewError, match="not in the label set"):
        again.run_round()
    assert LoopState.load(tmp_path / "state").round == 1  # nothing applied
    review.write_text("\n".join(filled) + "\n")
    again = resumed()
    m = again.run_round()
    human = [x for x in again.state.labeled if x.source == "human"]
    assert m["round"] == 1 and m["n_human"] == 5 and [x.label for x in human] == [1] * 5


def test_a_cascade_ordered_on_gold_ranks_on_round_0_then_asks_the_best_first(trec, tmp_path):
    from molal_ray.aggregation import build_matrix
    from molal_ray.config.job import CascadeConfig

    cascade = CascadeConfig(stages=[["gemma"], ["llama", "mistral", "qwen", "yi"]], order="gold")
    coord, services = _coordinator(trec, tmp_path, cascade=cascade)
    metrics = _run(coord)
    state = coord.state
    table = services.annotations()
    m = build_matrix(table, 6)
    at = {s: i for i, s in enumerate(m.sample_ids)}
    gold = [x for x in state.labeled if x.source == "gold"]
    rows = np.array([at[x.sample_id] for x in gold])
    assert m.present[rows].all() and metrics[0]["llm_calls"] == 20 * 5  # everyone labelled the gold rows
    acc = {a: float((m.votes[rows, j].argmax(1) == [x.label for x in gold]).mean()) for j, a in enumerate(m.annotators)}
    assert state.cascade["accuracy_on_gold"] == pytest.approx(acc) and state.cascade["gold_rows"] == 20
    first = state.cascade["stages"][0]
    assert len(first) == 1 and acc[first[0]] == max(acc.values())
    assert sorted(state.cascade["stages"][1]) == sorted(set(TREC_ANNOTATORS) - set(first))
    # Later rounds: the best annotator on every queried row, the others only where it was unsure.
    j = m.annotators.index(first[0])
    queried = np.array([at[x.sample_id] for x in state.labeled if x.source == "molal"])

    def sure_of(rows):  # type: ignore[no-untyped-def]  # the rule: its top label has 0.8 of its valid votes
        v = m.votes[rows, j]
        return v.max(1) / np.maximum(v.sum(1), 1e-12) >= 0.8

    sure = sure_of(queried)
    assert m.present[queried, j].all() and 0 < sure.sum() < len(queried)
    assert (m.present[queried].sum(1) == np.where(sure, 1, 5)).all()
    assert sum(x["llm_calls"] for x in metrics[1:]) == 30 + 4 * int((~sure).sum())
    # The aggregator sees the gold rows as the cascade would have left them.
    seen = coord.matrix(table)
    g_sure = sure_of(rows)
    assert (seen.present[rows].sum(1) == np.where(g_sure, 1, 5)).all() and g_sure.any()
    assert LoopState.load(tmp_path / "state").cascade == state.cascade  # a resume keeps the ranking
    # Resumed with stages of another shape: ranked again on the gold rows, whose answers are all there.
    coord.cascade = CascadeConfig(stages=[["gemma", "llama"], ["mistral", "qwen", "yi"]], order="gold")
    coord.settings = coord.settings.model_copy(update={"rounds": 3})
    coord.run_round()
    assert [len(st) for st in state.cascade["stages"]] == [2, 3] and state.cascade["accuracy_on_gold"] == pytest.approx(
        acc
    )
    assert sorted(acc[a] for a in state.cascade["stages"][0]) == sorted(acc.values())[-2:]


def test_relabel_gives_earlier_rows_the_labels_of_the_latest_aggregator(trec, tmp_path):
    import copy

    coord, _ = _coordinator(trec, tmp_path, rounds=2, human_per_round=5, simulated_people=True, relabel=True)
    seen = {}
    real_aggregate = coord.aggregate

    def recording_aggregate(m, ids):  # type: ignore[no-untyped-def]
        p = real_aggregate(m, ids)
        if coord.state.round == 2:  # a later aggregator that disagrees with every earlier label
            p[15:] = np.roll(p[15:], 1, axis=1)
        seen[coord.state.round] = (list(ids), p)
        return p

    coord.aggregate = recording_aggregate  # type: ignore[method-assign]
    metrics = [coord.run_round(), coord.run_round()]
    after_1 = copy.deepcopy(coord.state.labeled)
    metrics.append(coord.run_round())
    ids, probs = seen[2]
    earlier = [x for x in after_1 if x.source == "molal"]
    assert len(earlier) == 10 and ids[15:] == [x.sample_id for x in earlier]  # one fit for both
    now = {x.sample_id: x for x in coord.state.labeled}
    for x, p in zip(earlier, probs[15:]):
        y = now[x.sample_id]
        assert y.label == int(p.argmax()) and y.negatives == [int(c) for c in np.flatnonzero(p < 0.05)]
        assert y.previous_pred == x.previous_pred >= 0 and y.weight == (1.0 if y.label == y.previous_pred else 0.5)
    assert metrics[2]["n_relabelled"] == sum(now[x.sample_id].label != x.label for x in earlier) == 10
    assert metrics[1]["n_relabelled"] == 0  # round 1 had no earlier aggregator labels
    for x in after_1:  # people's and round 0's labels stay as they were
        if x.source != "molal":
            assert now[x.sample_id] == x


def test_simulated_people_answer_from_the_gold_file_and_only_where_it_has_every_routed_row(trec, tmp_path):
    coord, _ = _coordinator(trec, tmp_path, rounds=1, human_per_round=5, simulated_people=True)
    coord.run_round()
    coord.split.gold = {x.sample_id: x.label for x in coord.state.labeled}  # none of round 1's queries
    with pytest.raises(SchemaError, match=r"review.backend 'simulated': 5 of the 5 rows routed to people have no gold"):
        coord.run_round()
