"""Few-shot demonstrations: read once by the job, chosen per text by the engine.

``task.few_shot.examples`` names a file of labelled examples (``sample_id,label`` joined to the
pool's texts, or ``text,label``). :func:`with_examples` reads and checks it in the driver (labels in
the label set, ids in the pool) and puts the examples into the task config the annotators
receive, so replicas on other nodes never read the pool for it. :class:`ExampleSelector` picks k
of them per text: the most similar by the sentence encoder's cosine similarity (the most similar
last, next to the text), k at random (seeded by the text's id), or the file's first k. A text is
never its own demonstration: an example with the text's id or the same text is skipped.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from molal_ray.config import PoolConfig, TaskConfig
from molal_ray.config.task import FewShotConfig, FewShotExample
from molal_ray.engines.label_trie import text_rng
from molal_ray.exceptions import ConfigError


def read_examples_file(
    fs: FewShotConfig, labels: Sequence[str]
) -> tuple[list[tuple[str | None, str | None, str]], str]:
    """(sample_id, text, label) rows of the examples file, labels checked and canonical."""
    import pandas as pd

    from molal_ray.storage import resolve

    where = f"task.few_shot.examples {fs.examples}"
    loc = resolve(fs.examples, field="task.few_shot.examples")
    if not loc.is_file():
        raise ConfigError(f"{where}: expected an existing CSV or Parquet file")
    parquet = Path(loc.name).suffix.lower() == ".parquet"
    try:
        data = io.BytesIO(loc.read_bytes())
        df = pd.read_parquet(data) if parquet else pd.read_csv(data, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        raise ConfigError(
            f"{where}: cannot read it as {'Parquet' if parquet else 'CSV'}: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    if "label" not in df.columns or not ({"sample_id", "text"} & set(df.columns)):
        raise ConfigError(f"{where}: got columns {list(df.columns)}; expected sample_id,label or text,label")
    lookup = {x.lower(): x for x in labels}
    canon = df["label"].astype(str).str.strip().str.lower().map(lookup)
    bad = np.flatnonzero(canon.isna().to_numpy())
    if len(bad):
        at = f"row {bad[0]}" if parquet else f"line {bad[0] + 2}"
        raise ConfigError(
            f"{where}: {len(bad)} labels not in the label set (first at {at}: "
            f"{df['label'].iloc[bad[0]]!r}); expected one of {list(labels)}"
        )
    if not len(df):
        raise ConfigError(f"{where}: holds no examples")
    ids = df["sample_id"].astype(str).tolist() if "sample_id" in df.columns else [None] * len(df)
    texts = df["text"].astype(str).tolist() if "text" in df.columns else [None] * len(df)
    return list(zip(ids, texts, canon.tolist())), where


def load_examples(fs: FewShotConfig, labels: Sequence[str], pool: PoolConfig | None) -> list[FewShotExample]:
    """The examples of the file, with their texts (from the pool for a ``sample_id,label`` file)."""
    rows, where = read_examples_file(fs, labels)
    need = [sid for sid, text, _ in rows if text is None and sid is not None]
    texts: dict[str, str] = {}
    if need:
        if pool is None:
            raise ConfigError(
                f"{where}: a sample_id,label file needs the pool's texts; give a text,label file "
                "when no pool is configured"
            )
        from molal_ray.pipeline.pool import texts_of_ids

        texts = texts_of_ids(pool, need)
        lost = [sid for sid in need if sid not in texts]
        if lost:
            raise ConfigError(
                f"{where}: {len(lost)} of {len(need)} ids are not in the pool {pool.path} (first: {lost[0]!r})"
            )
    out = [
        FewShotExample(sample_id=sid, text=text if text is not None else texts[str(sid)], label=label)
        for sid, text, label in rows
    ]
    if fs.k > len(out):
        raise ConfigError(f"task.few_shot.k: got {fs.k}; {where} holds {len(out)} examples")
    return out


def with_examples(task: TaskConfig, pool: PoolConfig | None) -> TaskConfig:
    """The task with its few-shot examples read into ``few_shot.items`` (unchanged without few_shot;
    none yet for ``examples: loop``, whose examples come with each request)."""
    if task.few_shot is None or task.few_shot.items is not None:
        return task
    items = [] if task.few_shot.from_loop else load_examples(task.few_shot, task.labels, pool)
    return task.model_copy(update={"few_shot": task.few_shot.model_copy(update={"items": items})})


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


class ExampleSelector:
    """``selector.select(sample_ids, texts)`` -> per text, its demonstrations in prompt order."""

    def __init__(self, fs: FewShotConfig, labels: Sequence[str], device: str = "cpu") -> None:
        self.config = fs
        if fs.items is not None:
            examples = list(fs.items)
        elif fs.from_loop:
            examples = []  # until the loop sends its labels
        else:  # an engine used on its own, without a job: a text,label file is read here
            rows, where = read_examples_file(fs, labels)
            if any(text is None for _, text, _ in rows):
                raise ConfigError(
                    f"{where}: a sample_id,label file is joined to the pool's texts by the job; "
                    "used on its own an engine needs a text,label file"
                )
            examples = [FewShotExample(sample_id=s, text=t, label=lab) for s, t, lab in rows]
        if fs.k > len(examples) and not fs.from_loop:
            raise ConfigError(f"task.few_shot.k: got {fs.k}; the examples hold {len(examples)}")
        self.encoder = None
        if fs.select == "nearest":
            from molal_ray.models import resolve_package_path
            from molal_ray.training.encoder import FrozenEncoder

            try:
                backbone = resolve_package_path(fs.encoder)
            except ValueError as exc:
                raise ConfigError(f"task.few_shot.encoder: expected {exc}") from None
            self.encoder = FrozenEncoder(backbone, max_length=128, device=device, batch_size=64)
        self.replace(examples)

    def replace(self, examples: Sequence[FewShotExample]) -> None:
        """Choose among these examples from now on (a loop's labels: fewer than k at first)."""
        self.examples = list(examples)
        self.ids = [e.sample_id for e in self.examples]
        self.keys = [_key(e.text) for e in self.examples]
        if self.encoder is not None and self.examples:
            self.emb = self.encoder([e.text for e in self.examples])

    def _own(self, sample_id: str, text: str) -> np.ndarray:
        key = _key(text)
        return np.array([i == sample_id or k == key for i, k in zip(self.ids, self.keys)], dtype=bool)

    def select(self, sample_ids: Sequence[str], texts: Sequence[str]) -> list[list[FewShotExample]]:
        k = self.config.k
        out: list[list[FewShotExample]] = []
        if not self.examples:
            return [[] for _ in texts]
        sims = self.encoder(list(texts)) @ self.emb.T if self.encoder is not None else None
        for b, (sid, text) in enumerate(zip(sample_ids, texts)):
            own = self._own(sid, text)
            eligible = np.flatnonzero(~own)
            if self.config.select == "nearest":
                assert sims is not None
                s = sims[b, eligible]
                top = eligible[np.argsort(-s, kind="stable")[:k]]
                picked = list(top[::-1])  # the most similar last, next to the text
            elif self.config.select == "random":
                rng = text_rng(self.config.seed, sid)
                picked = list(rng.choice(eligible, size=min(k, len(eligible)), replace=False))
            else:
                picked = list(eligible[:k])
            out.append([self.examples[i] for i in picked])
        return out
