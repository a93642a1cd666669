"""The coordinator: owns the loop state and runs each round (the paper's central coordinator).

A round: draw the candidates (row numbers of the prepared pool, never a list of its ids), have
them scored by the current classifier, pick the queries with the strategy, have the annotators
label them, turn their answers into labels, weights and negatives with the aggregator, train the
classifier, score the test split (and the next round's candidates in the same pass), save.

:class:`Coordinator` is plain Python: everything that touches the cluster goes through a
:class:`RoundServices` (Ray Data scoring, Serve annotators, Ray Train; ``loop/services.py``), so
the round's logic is tested without Ray against fakes. ``loop/actor.py`` runs it as a Ray actor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from molal_ray import schema
from molal_ray.aggregation import Gold, build_matrix, get_aggregator
from molal_ray.aggregation.api import fit_aggregator, text_view_summary
from molal_ray.aggregation.cascade import CascadePlan, everyone, needs_ranking, plan_for, rank
from molal_ray.aggregation.features import AnnotationMatrix
from molal_ray.config.job import CascadeConfig
from molal_ray.config.loop import LoopSettings
from molal_ray.exceptions import AggregationError, PoolExhaustedError, SchemaError
from molal_ray.loop.scoring import ScoreRequest, ScoreResult
from molal_ray.loop.state import HUMAN_SOURCES, LabeledRow, LoopState
from molal_ray.pipeline.prepare import ROW
from molal_ray.review import ReviewItem, agreement, least_certain, matrix_answers
from molal_ray.review.backend import ReviewProgress
from molal_ray.strategies import SubsamplingQueryStrategy, get_strategy
from molal_ray.strategies.base import draw_rows
from molal_ray.training.classifier import TrainResult
from molal_ray.training.losses import discrepancy_weights, lambda_for_round

SOURCES_OF_MODE = {"molal": "molal", "gold": "gold", "majority": "majority"}


class RoundServices(Protocol):
    """What a round asks of the cluster."""

    def score(self, model_dir: str, request: ScoreRequest) -> ScoreResult:
        """Run the classifier over the rows the request names."""

    def annotate(
        self, rows: pa.Table, stages: list[list[str]] | None = None, examples: list[dict[str, str]] | None = None
    ) -> int:
        """Have the annotators label these pool rows (``_row, sample_id``) into the loop's table,
        in ``stages`` (a cascade; None: the configured ones) (pairs already there are skipped),
        with these few-shot ``examples`` (``sample_id, text, label``; None: the task's own);
        returns the (sample, annotator) pairs it asked for."""

    def annotations(self) -> pa.Table:
        """The loop's annotation table."""

    def texts(self, keys: np.ndarray) -> list[str]:
        """Texts of usable pool rows, in the order of ``keys``."""

    def text_embeddings(self, keys: np.ndarray) -> np.ndarray | None:
        """The pool's frozen embeddings of these rows, (len(keys), D) in their order; None when
        the loop has none (``classifier.mode: finetune``)."""

    def review(
        self, round_: int, items: list[ReviewItem], status: Callable[[str], None] | None = None
    ) -> ReviewProgress:
        """People's labels of the round's routed ``items`` (label names) and the ones they
        skipped, once all are in; raises :class:`ReviewPending` while they are not (``status``
        gets a progress line while it waits)."""

    def train(self, train: pd.DataFrame, val: pd.DataFrame, lam: float, name: str) -> TrainResult:
        """Fit the classifier on rows ``_row, label, weight, negatives`` (the service fetches the
        model's inputs by row key); returns where the best model is."""


class PoolGeometry(Protocol):
    """The prepared pool's row numbering (``PreparedPool`` has it)."""

    @property
    def n_usable(self) -> int: ...

    def keys_of(self, dense: np.ndarray) -> np.ndarray: ...

    def dense_of(self, keys: np.ndarray) -> np.ndarray: ...


class Stream(IntEnum):
    """The loop's random streams. Each draw is seeded by ``[seed, round, stream]`` (the split's
    by ``[seed, stream]``), so a resumed round draws what an uninterrupted one did and no two
    purposes share numbers."""

    INITIAL_GOLD = 0  # round 0's gold rows (with the seed only)
    CANDIDATES = 1  # the rows a sub-sampling strategy scores
    PICKS = 2  # the strategy's choice; its first number is the tie-break key, so that a per-row
    #            strategy's block-wise top n (while scoring, Ray Data) equals choosing over all rows
    VALIDATION = 3  # the labelled rows held out for early stopping
    ROUTING = 4  # routing 'random': the queried rows that go to people
    TEST_SPLIT = 7  # the gold rows held out as the test split (with the seed only)


@dataclass
class Split:
    """Gold labels as the loop uses them: the held-out test rows (keys sorted, with their
    labels), and the other gold-labelled rows of the pool (round 0 draws from them)."""

    test_rows: np.ndarray
    test_y: np.ndarray
    gold_rows: dict[str, int]  # sample id -> row key, test rows excluded
    gold: dict[str, int]  # sample id -> class, every gold label

    @classmethod
    def make(
        cls, found: pa.Table, gold: dict[str, int], test_fraction: float, test_max: int | None, seed: int
    ) -> Split:
        """``found``: the ``_row, sample_id`` of the gold ids that are usable pool rows. The test
        rows are drawn with the seed from them, sorted by id, so the split depends on the seed,
        the pool and the gold file only."""
        found = found.sort_by(schema.SAMPLE_ID)
        ids = found.column(schema.SAMPLE_ID).to_pylist()
        keys = found.column(ROW).to_numpy()
        n_test = int(round(len(ids) * test_fraction))
        if test_max:
            n_test = min(n_test, test_max)
        rng = np.random.default_rng([seed, Stream.TEST_SPLIT])
        pick = np.sort(rng.choice(len(ids), n_test, replace=False)) if n_test else np.zeros(0, np.int64)
        is_test = np.zeros(len(ids), bool)
        is_test[pick] = True
        order = np.argsort(keys[is_test])
        test_rows = keys[is_test][order]
        test_y = np.array([gold[i] for i in np.asarray(ids, dtype=object)[is_test][order]], dtype=np.int64)
        return cls(test_rows, test_y, {i: int(k) for i, k, t in zip(ids, keys, is_test) if not t}, gold)

    def initial(self, n: int, seed: int) -> list[str]:
        """The ``n`` gold ids of round 0, drawn with the seed among the gold-labelled pool rows
        outside the test split."""
        ids = sorted(self.gold_rows)
        if len(ids) < n:
            raise SchemaError(
                f"initial gold: {len(ids)} pool rows have gold labels outside the test split; {n} requested"
            )
        return [ids[i] for i in np.random.default_rng([seed, Stream.INITIAL_GOLD]).choice(len(ids), n, replace=False)]


def labels_info(
    annotation_accuracy: float | None = None,
    llm_label_accuracy: float | None = None,
    n_human: int = 0,
    n_down_weighted: int = 0,
    n_relabelled: int = 0,
    text_view_rows: int = 0,
    people_agreement: dict[str, Any] | None = None,
    text_view: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a round's metrics say of the labels it received (every round has every key;
    ``loop/report.py`` reads them): their accuracy on gold rows (all, and those from the LLMs),
    how many came from people, how many the discrepancy rule down-weighted, how many earlier labels
    ``relabel`` changed, the rows the aggregator's text view fitted on, people's agreement with
    the mixture and each LLM, and what the aggregator's text view did (``text_view``: used or
    not, its weight and the held-out evidence it was chosen on; ``TextAwareAggregator.text_summary``)."""
    return {
        "annotation_accuracy": annotation_accuracy,
        "llm_label_accuracy": llm_label_accuracy,
        "n_human": n_human,
        "n_down_weighted": n_down_weighted,
        "n_relabelled": n_relabelled,
        "text_view_rows": text_view_rows,
        "people_agreement": people_agreement,
        "text_view": text_view,
    }


class PhaseClock:
    """Wall seconds per phase of a round (query, annotate, aggregate, train, score)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.current: str | None = None
        self._t = 0.0

    def __call__(self, name: str) -> PhaseClock:
        self.current, self._t = name, time.monotonic()
        return self

    def __enter__(self) -> PhaseClock:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.current is not None:
            self.seconds[self.current] = round(self.seconds.get(self.current, 0.0) + time.monotonic() - self._t, 2)
        self.current = None


class Coordinator:
    def __init__(
        self,
        state: LoopState,
        settings: LoopSettings,
        pool: PoolGeometry,
        split: Split,
        services: RoundServices,
        state_dir: Any,
        cascade: CascadeConfig | None = None,
        examples_from_labels: bool = False,
        simulated_people: bool = False,
    ) -> None:
        self.state = state
        # review.backend 'simulated': the gold file answers for people (never another backend).
        self.simulated_people = simulated_people
        # task.few_shot.examples 'loop': the annotators are shown the people's labels so far.
        self.examples_from_labels = examples_from_labels
        self.settings = settings
        self.cascade = cascade
        self.pool = pool
        self.split = split
        self.services = services
        self.state_dir = state_dir
        self.strategy = get_strategy(
            settings.strategy, subsample=settings.subsample, labelable=settings.labelable_weight
        )
        self.base = self.strategy.base if isinstance(self.strategy, SubsamplingQueryStrategy) else self.strategy
        self.clock = PhaseClock()
        self.waiting: str | None = None  # a progress line while the round waits for people
        self.text_view: dict[str, Any] | None = None  # what the text view did in the last aggregation
        # The next round's candidates, scored in the same pass as the test split after training.
        self._scored: tuple[int, ScoreRequest, ScoreResult] | None = None
        self.t0 = time.monotonic()

    # -- small helpers ----------------------------------------------------------------------------
    def examples(self) -> list[dict[str, str]] | None:
        """The few-shot examples the annotators get now: every row people labelled (round 0's
        gold and the rows routed to them; never a test row, which is not in the state)."""
        if not self.examples_from_labels:
            return None
        people = [x for x in self.state.labeled if x.source in HUMAN_SOURCES]
        texts = self.services.texts(np.array([x.row for x in people], dtype=np.int64)) if people else []
        return [
            {"sample_id": x.sample_id, "text": t, "label": self.state.labels[x.label]} for x, t in zip(people, texts)
        ]

    def annotate(self, rows: pa.Table, stages: list[list[str]] | None) -> int:
        return self.services.annotate(rows, stages, examples=self.examples())

    @property
    def finished(self) -> bool:
        return self.state.round > self.settings.rounds

    @property
    def annotates(self) -> bool:
        return self.settings.annotation != "gold"

    @property
    def num_classes(self) -> int:
        return len(self.state.labels)

    def rng(self, stream: Stream, round_: int) -> np.random.Generator:
        return np.random.default_rng([self.state.seed, round_, int(stream)])

    def phase(self) -> str | None:
        return self.waiting or self.clock.current

    def plan(self) -> CascadePlan | None:
        """The cascade's plan: ranked on the gold rows (``order: gold``, once round 0 ranked the
        annotators) or as configured (``aggregation/cascade.py``); None without a cascade."""
        return None if self.cascade is None else plan_for(self.cascade, self.state.cascade)

    def stages(self) -> list[list[str]] | None:
        plan = self.plan()
        return None if plan is None else plan.stages

    def rank_annotators(self, rows: list[LabeledRow]) -> int:
        """``cascade.order: gold``: every annotator labels the gold ``rows``; the stages are
        refilled by their accuracy there (kept in the state). Returns the LLM calls made."""
        assert self.cascade is not None
        calls = self.annotate(_rows_table([x.row for x in rows], [x.sample_id for x in rows]), everyone(self.cascade))
        m = build_matrix(self.services.annotations(), self.num_classes)
        idx = {s: i for i, s in enumerate(m.sample_ids)}
        known = [x for x in rows if x.sample_id in idx]
        plan = rank(
            self.cascade,
            m,
            np.array([idx[x.sample_id] for x in known], dtype=np.int64),
            np.array([x.label for x in known], dtype=np.int64),
        )
        self.state.cascade = plan.to_dict()
        return calls

    def rerank_if_reshaped(self) -> int:
        """A loop resumed with ``order: gold`` and stages of another shape than it ranked for
        ranks again on its gold rows (their answers are in the table: few or no calls)."""
        if self.cascade is None or not needs_ranking(self.cascade, self.state.cascade):
            return 0
        return self.rank_annotators([x for x in self.state.labeled if x.source == "gold"])

    def matrix(self, table: pa.Table) -> AnnotationMatrix:
        """The annotation matrix the labels are drawn from; with a cascade, as the cascade leaves
        each row (``cascade_view``: the gold rows that ranked the annotators lose the answers
        their stage-one annotators would have made unnecessary)."""
        m = build_matrix(table, self.num_classes)
        plan = self.plan()
        return m if plan is None else plan.view(m)

    # -- the round --------------------------------------------------------------------------------
    def run_round(self) -> dict[str, Any]:
        """Run the next round; returns its metrics (also appended to the history and saved)."""
        r = self.state.round
        self.clock = clock = PhaseClock()
        info = labels_info()  # round 0: people's labels only
        # The round's LLM calls: the pairs the table holds for its rows, counted from the table, so
        # that a round resumed after a kill also counts the calls made before it.
        llm_calls = 0
        if r == 0:
            rows = self.initial_gold()
            self.state.add(rows)
            info = labels_info(n_human=len(rows))
            if self.annotates:
                with clock("annotate"):
                    if self.cascade is not None and self.cascade.order == "gold":
                        self.rank_annotators(rows)
                    else:
                        self.annotate(_rows_table([x.row for x in rows], [x.sample_id for x in rows]), self.stages())
                llm_calls = _pairs_of(self.services.annotations(), [x.sample_id for x in rows])
        else:
            with clock("query"):
                queried, prev = self.query(r)
            table = None
            if self.annotates:
                with clock("annotate"):
                    llm_calls = self.rerank_if_reshaped()  # gold rows asked again: this run's calls
                    self.annotate(queried, self.stages())
                table = self.services.annotations()
                llm_calls += _pairs_of(table, queried.column(schema.SAMPLE_ID).to_pylist())
            with clock("aggregate"):
                info = self.assign(queried, table, prev)
        with clock("train"):
            res, lam = self.train(r)
        with clock("score"):
            nxt = self.request(r + 1) if r < self.settings.rounds else None
            scored = self.services.score(res.model_dir, self._with_test(nxt))
            self._scored = (r + 1, nxt, scored) if nxt is not None else None
        metrics = {
            "round": r,
            "n_labeled": len(self.state.labeled),
            **evaluate(scored, self.split),
            **info,
            "llm_calls": llm_calls,
            "val_accuracy": res.val_accuracy,
            "epochs": res.epochs_run,
            "lambda": lam,
            "model_dir": res.model_dir,
            "elapsed_s": round(time.monotonic() - self.t0, 1),
            "phase_s": clock.seconds,
        }
        self.finish_round(metrics)
        return metrics

    def initial_gold(self) -> list[LabeledRow]:
        """Round 0: the human labels the loop starts from."""
        return [
            LabeledRow(i, self.split.gold_rows[i], self.split.gold[i], "gold")
            for i in self.split.initial(self.settings.initial_gold, self.state.seed)
        ]

    def _excluded(self) -> np.ndarray:
        """Dense row numbers no query may take: labelled and test rows."""
        keys = np.concatenate([self.state.label_rows(), self.split.test_rows])
        return np.unique(self.pool.dense_of(keys))

    def request(self, round_: int) -> ScoreRequest:
        """What the classifier must compute for round ``round_``'s query (the pool does not change
        between the end of a round and the next query, so it is known right after training)."""
        exclude = self._excluded()
        n = min(self.settings.query_size, self.pool.n_usable - exclude.size)
        if n <= 0:
            raise PoolExhaustedError(self.pool.n_usable - exclude.size, self.settings.query_size)
        rng = self.rng(Stream.CANDIDATES, round_)
        dense: np.ndarray | None
        if self.base.model_free:  # only the rows it will query, for the discrepancy weights
            dense = draw_rows(self.pool.n_usable, n, exclude, rng)
        else:
            dense = self.strategy.candidate_rows(self.pool.n_usable, exclude, rng)
        needs = tuple(self.base.requires)
        per_row = getattr(self.base, "per_row", False)
        return ScoreRequest(
            test=np.zeros(0, np.int64),
            candidates=None if dense is None else np.sort(self.pool.keys_of(dense)),
            labeled=self.state.label_rows() if "embeddings" in needs else np.zeros(0, np.int64),
            exclude=np.sort(self.pool.keys_of(exclude)) if dense is None else np.zeros(0, np.int64),
            strategy=self.settings.strategy,
            needs=needs,
            top_n=n if per_row else None,
            tiebreak_key=int(self.rng(Stream.PICKS, round_).integers(2**63)) if per_row else 0,
            noise_copies=self.settings.noise_copies,
            noise_scale=self.settings.noise_scale,
            seed=self.state.seed,
        )

    def _with_test(self, req: ScoreRequest | None) -> ScoreRequest:
        if req is None:
            return ScoreRequest(test=self.split.test_rows, candidates=np.zeros(0, np.int64))
        req.test = self.split.test_rows
        return req

    def label_confidence(self, keys: np.ndarray) -> np.ndarray:
        """The LLMs' expected agreement on the pool rows ``keys`` (not annotated yet): their
        agreement on the nearest annotated texts, by the pool's frozen embeddings."""
        from molal_ray.strategies.labelable import agreement_shares, expected_agreement

        m = self.matrix(self.services.annotations())
        by_id = {r.sample_id: r.row for r in self.state.labeled}
        rows = [i for i, s in enumerate(m.sample_ids.tolist()) if s in by_id]
        annotated = self.services.text_embeddings(np.array([by_id[m.sample_ids[i]] for i in rows], np.int64))
        candidates = self.services.text_embeddings(np.asarray(keys, np.int64))
        if annotated is None or candidates is None:
            raise AggregationError(
                "loop.labelable_weight: the loop has no embeddings of the pool (classifier.mode head)"
            )
        return expected_agreement(candidates, annotated, agreement_shares(m.votes[np.array(rows, np.int64)]))

    def query(self, r: int) -> tuple[pa.Table, dict[str, int]]:
        """The round's queries (``_row, sample_id``) and the previous classifier's prediction for
        each (for the discrepancy weights)."""
        if self._scored is not None and self._scored[0] == r:
            _, req, result = self._scored
        else:  # after a resume: score with the last round's model
            req = self.request(r)
            result = self.services.score(self.state.history[-1]["model_dir"], req)
        cand = result.candidates
        if req.top_n is None:
            view = result.view(self.settings.noise_copies)
            if self.settings.labelable_weight:
                view.label_confidence = self.label_confidence(result.candidates.sort_by(ROW).column(ROW).to_numpy())
            picks = self.strategy.select(view, min(self.settings.query_size, len(view)), self.rng(Stream.PICKS, r))
            pos = {sid: i for i, sid in enumerate(cand.column(schema.SAMPLE_ID).to_pylist())}
            cand = cand.take(pa.array([pos[sid] for sid in picks.tolist()], pa.int64()))
        prev = dict(zip(cand.column(schema.SAMPLE_ID).to_pylist(), cand.column("pred").to_pylist()))
        return _rows_table(cand.column(ROW).to_numpy(), cand.column(schema.SAMPLE_ID).to_pylist()), prev

    def assign(self, queried: pa.Table, table: pa.Table | None, previous_pred: dict[str, int]) -> dict[str, Any]:
        """Labels for the queried rows by the configured annotation mode, the least certain of them
        from people (``human_per_round``); adds them to the state. Returns the round's label metrics."""
        ids = queried.column(schema.SAMPLE_ID).to_pylist()
        keys = queried.column(ROW).to_pylist()
        mode = self.settings.annotation
        earlier = (
            [r for r in self.state.labeled if r.source == "molal"] if self.settings.relabel and mode == "molal" else []
        )
        probs, earlier_probs, matrix = self.distributions(ids, keys, table, earlier)
        labels = probs.argmax(1)
        human, agreed = self.ask_people(ids, keys, probs, labels, matrix)
        source = SOURCES_OF_MODE.get(mode, "annotator")
        prev = np.array([previous_pred.get(i, -1) for i in ids])
        weights = self.label_weights(probs, prev) if mode == "molal" else np.ones(len(ids), np.float32)
        weights[human] = 1.0
        new = [
            self.labeled_row(sid, k, lab, "human" if h else source, w, p, pp)
            for sid, k, lab, w, p, h, pp in zip(ids, keys, labels, weights, probs, human, prev)
        ]
        relabelled = self.relabel(earlier, earlier_probs)  # once people's labels are in (no pause past here)
        self.state.add(new)
        return labels_info(
            annotation_accuracy=self.gold_accuracy(ids, labels),
            llm_label_accuracy=self.gold_accuracy(ids, labels, ~human),
            n_human=int(human.sum()),
            n_down_weighted=int((weights < 1).sum()),
            n_relabelled=relabelled,
            text_view_rows=int(self.text_view["rows"]) if mode == "molal" and self.text_view else 0,
            people_agreement=agreed,
            text_view=self.text_view if mode == "molal" else None,
        )

    def distributions(
        self, ids: list[str], keys: list[int], table: pa.Table | None, earlier: list[LabeledRow]
    ) -> tuple[np.ndarray, np.ndarray, AnnotationMatrix | None]:
        """The label distributions of the queried ``ids`` and of the ``earlier`` rows to relabel,
        and the annotation matrix they came from: one-hot gold labels (``annotation: gold``), else
        the aggregator's over the annotators' answers in ``table``."""
        if self.settings.annotation == "gold":
            missing = [i for i in ids if i not in self.split.gold]
            if missing:
                raise SchemaError(
                    f"loop.annotation 'gold': {len(missing)} queried rows have no gold label (first: {missing[0]!r})"
                )
            return np.eye(self.num_classes)[[self.split.gold[i] for i in ids]], np.zeros((0, self.num_classes)), None
        if table is None:
            raise AggregationError("loop: no annotation table for the queried rows")
        matrix = self.matrix(table)
        if self.settings.annotation == "molal":
            matrix = self.with_embeddings(matrix, dict(zip(ids, keys)))
        both = self.aggregate(matrix, ids + [r.sample_id for r in earlier])
        return both[: len(ids)], both[len(ids) :], matrix

    def ask_people(
        self, ids: list[str], keys: list[int], probs: np.ndarray, labels: np.ndarray, matrix: AnnotationMatrix | None
    ) -> tuple[np.ndarray, dict[str, Any] | None]:
        """``human_per_round``: the least certain of the queried rows go to people; their labels
        replace the mixture's in ``labels`` (a skipped sample keeps the mixture's). Returns which
        rows people labelled and how their labels agree with the mixture's and each LLM's."""
        human = np.zeros(len(ids), bool)
        n = min(self.settings.n_human(), len(ids)) if self.settings.annotation != "gold" else 0
        if not n:
            return human, None
        pos = self.route(probs, ids, matrix, n)
        shown, top = (
            matrix_answers(matrix, [ids[i] for i in pos], self.state.labels)
            if matrix is not None
            else ([{} for _ in pos], None)
        )
        people = self.human_labels([ids[i] for i in pos], np.asarray(keys)[pos], probs[pos], shown)
        got = np.array([ids[i] in people for i in pos], bool)
        answered = pos[got]
        given = np.array([people[ids[i]] for i in answered], dtype=np.int64)
        agreed = agreement(
            given, labels[answered], None if top is None else top[got], matrix.annotators if matrix is not None else []
        )
        labels[answered] = given
        human[answered] = True
        return human, agreed

    def labeled_row(
        self, sample_id: str, key: int, label: int, source: str, weight: float, probs: np.ndarray, previous_pred: int
    ) -> LabeledRow:
        """A row of the state; an aggregator's label keeps its negatives (the classes it deems
        near-impossible) and the classifier's prediction it was weighed against."""
        molal = source == "molal"
        return LabeledRow(
            sample_id,
            int(key),
            int(label),
            source,
            float(weight),
            self.negatives(probs) if molal else [],
            int(previous_pred) if molal else -1,
            None if source in HUMAN_SOURCES else float(probs[label]),
        )

    def negatives(self, probs: np.ndarray) -> list[int]:
        return [int(c) for c in np.flatnonzero(probs < self.settings.negative_threshold)]

    def gold_accuracy(self, ids: list[str], labels: np.ndarray, mask: np.ndarray | None = None) -> float | None:
        """The share of ``labels`` (of ``ids``, where ``mask``) that match the gold labels known; None: none known."""
        keep = np.ones(len(ids), bool) if mask is None else mask
        known = [(lab, self.split.gold[i]) for lab, i, k in zip(labels, ids, keep) if k and i in self.split.gold]
        return float(np.mean([a == t for a, t in known])) if known else None

    def relabel(self, rows: list[LabeledRow], probs: np.ndarray) -> int:
        """``loop.relabel``: earlier aggregator-labelled ``rows`` take this round's distributions
        ``probs`` (label, negatives, discrepancy weight against the classifier of their round).
        Returns how many labels changed."""
        changed = 0
        for r, p in zip(rows, probs):
            label = int(p.argmax())
            changed += label != r.label
            r.label = label
            r.confidence = float(p[label])
            r.negatives = self.negatives(p)
            r.weight = float(self.label_weights(p[None], np.array([r.previous_pred]))[0])
        return changed

    def label_weights(self, probs: np.ndarray, previous_pred: np.ndarray) -> np.ndarray:
        """Training weights of aggregator labels (``probs``: their distributions): the discrepancy
        weight against the previous classifier's prediction (-1: none, weight 1)."""
        labels = probs.argmax(1)
        w = np.ones(len(labels), np.float32)
        had = previous_pred >= 0
        w[had] = discrepancy_weights(labels[had], previous_pred[had], self.settings.discrepancy_alpha)
        return w

    def route(self, probs: np.ndarray, ids: list[str], m: Any, n: int) -> np.ndarray:
        """Positions of the queried rows that go to people: the ``n`` least certain by the rule."""
        if self.settings.routing == "random":
            return np.sort(self.rng(Stream.ROUTING, self.state.round).choice(len(ids), n, replace=False))
        votes = None
        if self.settings.routing == "disagreement" and m is not None:
            at = {s: i for i, s in enumerate(m.sample_ids)}
            votes = m.votes[np.array([at[i] for i in ids], dtype=np.int64)]
        return least_certain(probs, n, self.settings.routing, votes, ids)

    def human_labels(
        self, ids: list[str], keys: np.ndarray, probs: np.ndarray, answers: list[dict[str, str]] | None = None
    ) -> dict[str, int]:
        """People's labels of these rows: from the gold file with ``review.backend: simulated``
        (every row must have one), else from the review backend (each row shown with the mixture's
        label and ``answers``, what each LLM said; never from the gold file, even where it has
        them); raises :class:`ReviewPending` while they are not in. A row a reviewer skipped has
        no label here (it keeps the mixture's)."""
        if self.simulated_people:
            missing = [i for i in ids if i not in self.split.gold]
            if missing:
                raise SchemaError(
                    f"review.backend 'simulated': {len(missing)} of the {len(ids)} rows routed to people have no "
                    f"gold label (first: {missing[0]!r}); simulated people answer from the gold file only"
                )
            return {i: self.split.gold[i] for i in ids}
        texts = self.services.texts(keys)
        answers = answers or [{} for _ in ids]
        items = [
            ReviewItem(i, t, self.state.labels[int(p.argmax())], float(p.max()), a)
            for i, t, p, a in zip(ids, texts, probs, answers)
        ]
        try:
            got = self.services.review(self.state.round, items, self._wait_line)
        finally:
            self.waiting = None
        index = {lab: k for k, lab in enumerate(self.state.labels)}
        return {i: index[got.labels[i]] for i in ids if i in got.labels}

    def _wait_line(self, line: str) -> None:
        self.waiting = line

    def with_embeddings(self, m: AnnotationMatrix, queried: dict[str, int]) -> AnnotationMatrix:
        """``m`` with the pool's embeddings of its rows (the labelled rows and the ``queried``
        ones, by sample id -> row key) when the loop has them, for a text-aware aggregator."""
        keys = {r.sample_id: r.row for r in self.state.labeled}
        keys.update(queried)
        ids = [s for s in m.sample_ids.tolist() if s in keys]
        emb = self.services.text_embeddings(np.array([keys[s] for s in ids], dtype=np.int64)) if ids else None
        return m if emb is None else m.with_embeddings(np.asarray(ids, dtype=object), emb)

    def aggregate(self, m: AnnotationMatrix, ids: list[str]) -> np.ndarray:
        """Label distributions of ``ids`` from the loop's annotation matrix: the aggregator fitted
        on it with the labels people gave (round 0's and those routed to them; ``molal``),
        majority vote, or one annotator's votes."""
        idx = {s: i for i, s in enumerate(m.sample_ids)}
        missing = [i for i in ids if i not in idx]
        if missing:
            raise AggregationError(f"{len(missing)} queried samples have no annotation (first: {missing[0]!r})")
        rows = np.array([idx[i] for i in ids], dtype=np.int64)
        mode = self.settings.annotation
        if mode == "molal":
            gold_rows = [r for r in self.state.labeled if r.source in HUMAN_SOURCES and r.sample_id in idx]
            gold = Gold(
                np.array([idx[r.sample_id] for r in gold_rows], dtype=np.int64),
                np.array([r.label for r in gold_rows], dtype=np.int64),
                self.num_classes,
            )
            agg = fit_aggregator(m, gold, self.settings.aggregator.name, self.settings.aggregator.params())
            self.text_view = text_view_summary(agg)
            return agg.predict_proba(m.take(rows))
        if mode == "majority":
            return get_aggregator("majority").predict_proba(m.take(rows))
        a = m.annotators.index(mode)  # one annotator's own majority of its samples
        v = np.nan_to_num(m.votes[rows, a])
        return np.where(v.sum(1, keepdims=True) > 0, v, 1.0 / self.num_classes)

    def train(self, r: int) -> tuple[TrainResult, float]:
        rows = self.state.labeled
        order = self.rng(Stream.VALIDATION, r).permutation(len(rows))
        n_val = max(1, int(round(len(rows) * self.settings.val_fraction)))
        neg = np.zeros((len(rows), self.num_classes), np.float32)
        for i, x in enumerate(rows):
            neg[i, x.negatives] = 1.0
        frame = pd.DataFrame(
            {
                ROW: np.array([x.row for x in rows], dtype=np.int64),
                "label": np.array([x.label for x in rows], dtype=np.int64),
                "weight": np.array([x.weight for x in rows], dtype=np.float32),
                "negatives": list(neg),
            }
        )
        val, train = frame.iloc[order[:n_val]], frame.iloc[order[n_val:]]
        lam = lambda_for_round(r, self.settings.lambda_start, self.settings.lambda_step)
        return self.services.train(train, val, lam, f"round-{r}"), lam

    def gold_report(self) -> dict[str, Any]:
        """How good the labels were on the queried rows that have gold labels: the labels the
        loop assigned (aggregator, majority or one annotator), their confusion matrix, and each
        annotator's accuracy on the same rows (the class most of its votes went to)."""
        from sklearn.metrics import confusion_matrix

        assigned = [r for r in self.state.labeled if r.source not in HUMAN_SOURCES and r.sample_id in self.split.gold]
        truth = np.array([self.split.gold[r.sample_id] for r in assigned], dtype=np.int64)
        pred = np.array([r.label for r in assigned], dtype=np.int64)
        report: dict[str, Any] = {
            "labels": list(self.state.labels),
            "annotators": {},
            "assigned": {
                "rows": len(assigned),
                "accuracy": float((truth == pred).mean()) if assigned else None,
                "confusion": confusion_matrix(truth, pred, labels=list(range(self.num_classes))).tolist()
                if assigned
                else None,
            },
        }
        if self.annotates and assigned:
            m = build_matrix(self.services.annotations(), self.num_classes)
            idx = {s: i for i, s in enumerate(m.sample_ids)}
            keep = np.array([r.sample_id in idx for r in assigned])
            rows = np.array([idx[r.sample_id] for r, k in zip(assigned, keep) if k], dtype=np.int64)
            y = truth[keep]
            for a, name in enumerate(m.annotators):
                v, p = m.votes[rows, a], m.probs[rows, a]
                ok = m.present[rows, a]
                guess = (v[ok] + 1e-3 * p[ok]).argmax(1)  # votes first, probabilities break ties
                report["annotators"][name] = {
                    "accuracy": float((guess == y[ok]).mean()) if ok.any() else None,
                    "rows": int(ok.sum()),
                }
        return report

    def finish_round(self, metrics: dict[str, Any]) -> None:
        self.state.history.append(metrics)
        self.state.round += 1
        self.state.save(self.state_dir)


def _pairs_of(table: pa.Table, ids: list[str]) -> int:
    """The (sample, annotator) rows of the annotation table about these samples."""
    import pyarrow.compute as pc

    return int(pc.sum(pc.is_in(table.column(schema.SAMPLE_ID), value_set=pa.array(ids, pa.string()))).as_py() or 0)


def _rows_table(keys: Any, ids: list[str]) -> pa.Table:
    return pa.table({ROW: pa.array(np.asarray(keys, dtype=np.int64)), schema.SAMPLE_ID: pa.array(ids, pa.string())})


def evaluate(scored: ScoreResult, split: Split) -> dict[str, float]:
    """Test accuracy and F1 of the classifier's predictions on the test split."""
    from sklearn.metrics import accuracy_score, f1_score

    pred = dict(zip(scored.test_rows.tolist(), scored.test_pred.tolist()))
    missing = [k for k in split.test_rows.tolist() if k not in pred]
    if missing:
        raise SchemaError(f"scoring: {len(missing)} test rows came back without a prediction")
    p = np.array([pred[k] for k in split.test_rows.tolist()])
    y = split.test_y
    if len(y) == 0:
        return {"test_accuracy": float("nan"), "test_micro_f1": float("nan"), "test_macro_f1": float("nan")}
    return {
        "test_accuracy": float(accuracy_score(y, p)),
        "test_micro_f1": float(f1_score(y, p, average="micro")),
        "test_macro_f1": float(f1_score(y, p, average="macro")),
    }
