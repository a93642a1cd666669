"""The active-learning loop's state: a plain object of size O(labelled), saved after every round.

It holds the labelled rows (id, row key in the prepared pool, label, source, weight, negative
labels), the round and the history; the unlabelled set is never listed: it is the prepared pool
minus these rows. The unit of resume is a finished round: ``save`` writes the state whole (a
rename on a disk, one upload on an object store), ``load`` reads it back, and a resumed loop
starts at ``state.round``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from molal_ray.exceptions import SchemaError
from molal_ray.layout import LoopLayout
from molal_ray.storage import Location, resolve

STATE_FILE = LoopLayout.STATE_FILE  # in the loop output's state folder (layout.py)
STATE_VERSION = 2
SOURCES = ("gold", "human", "molal", "majority", "annotator")
HUMAN_SOURCES = ("gold", "human")  # labels people gave: round 0's, and those routed to them


@dataclass
class LabeledRow:
    sample_id: str
    row: int  # the row's key in the prepared pool
    label: int
    source: str  # one of SOURCES
    weight: float = 1.0
    negatives: list[int] = field(default_factory=list)
    previous_pred: int = -1  # the classifier's class for the row when it was queried (-1: none); loop.relabel
    confidence: float | None = None  # the label's probability where it came from (None: people, or not kept)


@dataclass
class LoopState:
    labels: list[str]
    round: int = 0
    labeled: list[LabeledRow] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0
    pool: str = ""  # the prepared pool's fingerprint digest: a resume must run on the same pool
    # cascade.order 'gold': the stages chosen on round 0's gold rows and each annotator's accuracy there
    cascade: dict[str, Any] | None = None

    def label_ids(self) -> set[str]:
        return {r.sample_id for r in self.labeled}

    def label_rows(self) -> np.ndarray:
        """Sorted row keys of the labelled rows."""
        return np.sort(np.fromiter((r.row for r in self.labeled), dtype=np.int64, count=len(self.labeled)))

    def add(self, rows: list[LabeledRow]) -> None:
        """Label rows (each id once)."""
        have = self.label_ids()
        dup = [r.sample_id for r in rows if r.sample_id in have]
        if dup or len({r.sample_id for r in rows}) != len(rows):
            raise SchemaError(f"loop state: ids labelled twice (first: {(dup or [rows[0].sample_id])[0]!r})")
        self.labeled.extend(rows)

    def to_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        if d.get("version") != STATE_VERSION:
            raise SchemaError(
                f"loop state: version {d.get('version')!r}; expected {STATE_VERSION} (a state saved by "
                "another version of molal_ray: start the loop again in a new output folder)"
            )
        rows = [LabeledRow(**r) for r in d.get("labeled", [])]
        bad = [r.source for r in rows if r.source not in SOURCES]
        if bad:
            raise SchemaError(f"loop state: label source {bad[0]!r}; expected one of {SOURCES}")
        return cls(
            labels=list(d["labels"]),
            round=int(d["round"]),
            labeled=rows,
            history=list(d.get("history", [])),
            seed=int(d.get("seed", 0)),
            pool=str(d.get("pool", "")),
            cascade=d.get("cascade"),
        )

    def save(self, folder: str | Location) -> Location:
        loc = resolve(folder)
        loc.mkdirs()
        target = loc.join(STATE_FILE)
        target.write_text(json.dumps(self.to_dict()))
        return target

    @classmethod
    def load(cls, folder: str | Location) -> LoopState:
        p = resolve(folder).join(STATE_FILE)
        if not p.exists():
            raise SchemaError(f"loop state: no {STATE_FILE} in {folder}; nothing to resume")
        return cls.from_dict(json.loads(p.read_text()))
