"""What a loop leaves for its users: ``OUT/model/`` (the classifier of a round, portable) and
``OUT/labels.parquet`` (every labelled row with where its label came from).

``labels.parquet`` has one row per labelled sample: ``sample_id, label, source, confidence, round,
weight``: ``source`` is ``gold`` (round 0's people), ``human`` (rows routed to people), ``molal``
(the aggregator of the LLMs' answers), ``majority`` or ``annotator`` (the loop's other annotation
modes); ``confidence`` is the label's probability under the distribution it came from (1 for
people's labels; empty for rows of a loop saved before it was kept); ``round`` is the round that
labelled the row; ``weight`` is the training weight the loop gave it (the discrepancy rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from molal_ray.exceptions import ConfigError
from molal_ray.layout import LoopLayout
from molal_ray.loop.state import HUMAN_SOURCES, LoopState
from molal_ray.storage import Location, resolve

LABELS_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("label", pa.string()),
        ("source", pa.string()),
        ("confidence", pa.float32()),
        ("round", pa.int32()),
        ("weight", pa.float32()),
    ]
)


def labels_table(state: LoopState) -> pa.Table:
    """Every labelled row of a loop's state (``LABELS_SCHEMA``), in the order they were labelled."""
    rows = state.labeled
    counts = np.array([h["n_labeled"] for h in state.history], dtype=np.int64)
    # rows are added round after round: a row's round is the first whose count passes its position
    rounds = np.searchsorted(counts, np.arange(len(rows)), side="right")
    confidence = [1.0 if r.source in HUMAN_SOURCES else r.confidence for r in rows]
    return pa.table(
        {
            "sample_id": pa.array([r.sample_id for r in rows], pa.string()),
            "label": pa.array([state.labels[r.label] for r in rows], pa.string()),
            "source": pa.array([r.source for r in rows], pa.string()),
            "confidence": pa.array(confidence, pa.float32()),
            "round": pa.array(rounds.astype(np.int32)),
            "weight": pa.array([r.weight for r in rows], pa.float32()),
        },
        schema=LABELS_SCHEMA,
    )


@dataclass
class ExportSummary:
    model: str  # where the classifier went
    kind: str  # 'head' or 'finetune'
    round: int
    labels: str  # where labels.parquet went
    rows: int  # labelled rows in it


def export_loop(out: str | Location, round_: int | None = None, to: str | None = None) -> ExportSummary:
    """Write a finished (or paused) loop's products: the classifier of round ``round_`` (the last
    finished one by default) to ``to`` (``OUT/model`` by default) and ``OUT/labels.parquet``."""
    from molal_ray.products.model import export_finetune, export_head
    from molal_ray.training.head import is_head

    layout = LoopLayout.at(out)
    if not layout.state_file.exists():
        raise ConfigError(
            f"export: {out} holds no loop (no {layout.STATE}/{layout.STATE_FILE}); expected a run's output"
        )
    state = LoopState.load(layout.state)
    done = [h["round"] for h in state.history]
    if not done:
        raise ConfigError(f"export: the loop in {out} has finished no round yet")
    r = done[-1] if round_ is None else round_
    if r not in done:
        raise ConfigError(f"export --round: got {r}; the loop in {out} has finished rounds {done[0]}..{done[-1]}")
    h = state.history[done.index(r)]
    extra: dict[str, Any] = {
        "round": r,
        "labelled_rows": h["n_labeled"],
        "test_accuracy": h.get("test_accuracy"),
        "test_macro_f1": h.get("test_macro_f1"),
    }
    target = resolve(to, field="--to") if to else layout.model
    kind = "head" if is_head(h["model_dir"]) else "finetune"
    (export_head if kind == "head" else export_finetune)(h["model_dir"], target, list(state.labels), extra)
    table = labels_table(state)
    layout.labels.write_parquet(table)
    return ExportSummary(str(target), kind, r, str(layout.labels), table.num_rows)
