"""The active-learning loop's state: a plain object, saved after every finished round.

The unit of resume is a finished round: ``save`` writes the state atomically, ``load`` reads it
back, and a resumed loop starts at ``state.round``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from molal_ray.exceptions import SchemaError

STATE_FILE = "state.json"
SOURCES = ("gold", "molal", "majority", "annotator")


@dataclass
class LabeledRow:
    sample_id: str
    label: int
    source: str  # one of SOURCES
    weight: float = 1.0
    negatives: list[int] = field(default_factory=list)


@dataclass
class LoopState:
    labels: list[str]
    round: int = 0
    labeled: list[LabeledRow] = field(default_factory=list)
    pool_ids: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0

    def label_ids(self) -> set[str]:
        return {r.sample_id for r in self.labeled}

    def add(self, rows: list[LabeledRow]) -> None:
        """Move rows from the pool to the labeled set (each id once)."""
        have = self.label_ids()
        dup = [r.sample_id for r in rows if r.sample_id in have]
        if dup:
            raise SchemaError(f"loop state: {len(dup)} ids are labeled already (first: {dup[0]!r})")
        new = {r.sample_id for r in rows}
        self.labeled.extend(rows)
        self.pool_ids = [i for i in self.pool_ids if i not in new]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoopState":
        rows = [LabeledRow(**r) for r in d.get("labeled", [])]
        bad = [r.source for r in rows if r.source not in SOURCES]
        if bad:
            raise SchemaError(f"loop state: label source {bad[0]!r}; expected one of {SOURCES}")
        return cls(labels=list(d["labels"]), round=int(d["round"]), labeled=rows, pool_ids=list(d["pool_ids"]),
                   history=list(d.get("history", [])), seed=int(d.get("seed", 0)))

    def save(self, folder: str | os.PathLike[str]) -> Path:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        os.replace(tmp, out / STATE_FILE)
        return out / STATE_FILE

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> "LoopState":
        p = Path(folder) / STATE_FILE
        if not p.is_file():
            raise SchemaError(f"loop state: no {STATE_FILE} in {folder}; nothing to resume")
        return cls.from_dict(json.loads(p.read_text()))
