"""Aggregate an annotation table with gold labels: the Python API behind `molal-ray aggregate`."""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from molal_ray.aggregation.base import DEFAULT, Aggregator, Gold, available, get_aggregator, registered
from molal_ray.aggregation.features import AnnotationMatrix, build_matrix, check_table
from molal_ray.aggregation.validation import CVResult, annotator_quality, cross_validate, direct_accuracy
from molal_ray.exceptions import AggregationError, SchemaError

OUTPUT_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("label", pa.string()),
        ("probs", pa.list_(pa.float32())),
        ("confidence", pa.float32()),
        ("negatives", pa.list_(pa.string())),
        ("is_gold", pa.bool_()),
        ("n_annotators", pa.int16()),
    ]
)


def load_labels(spec: str) -> list[str]:
    """Labels from 'a,b,c' or from a file with one label a line."""
    if os.path.isfile(spec):
        labels = [ln.strip() for ln in Path(spec).read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    else:
        labels = [x.strip() for x in spec.split(",") if x.strip()]
    if len(labels) < 2:
        looks_like_file = "," not in spec and ("/" in spec or os.path.splitext(spec)[1] in (".txt", ".csv", ".labels"))
        if looks_like_file:
            raise AggregationError(f"labels: {spec} is no file here; expected 'a,b,c' or a file with one label a line")
        raise AggregationError(f"labels: got {labels!r}; expected at least 2 labels (comma-separated or a file)")
    if len({x.lower() for x in labels}) != len(labels):
        raise AggregationError(f"labels: got {labels!r}; expected distinct labels")
    return labels


def combine_gold(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Several gold sets as one (the first set and labels people reviewed later); an id given
    two different labels is an error."""
    df = pd.concat(frames, ignore_index=True).drop_duplicates(["sample_id", "y"])
    clash = df[df.duplicated("sample_id", keep=False)]
    if len(clash):
        raise AggregationError(
            f"gold: {clash['sample_id'].nunique()} ids have different labels in different files "
            f"(first: {clash['sample_id'].iloc[0]!r})"
        )
    return df.reset_index(drop=True)


def load_gold(path: str | os.PathLike[str], labels: list[str]) -> pd.DataFrame:
    """Gold labels (``sample_id, label``) from CSV or Parquet (a local path or a URI), checked
    against the label set."""
    from molal_ray.storage import resolve

    loc = resolve(path, field="gold")
    p = Path(loc.name)
    if not loc.is_file():
        raise AggregationError(f"gold: got {str(loc)!r}; expected a CSV or Parquet file")
    try:
        data = io.BytesIO(loc.read_bytes())
        df = pd.read_parquet(data) if p.suffix == ".parquet" else pd.read_csv(data, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        raise AggregationError(f"gold: cannot read {loc}: {exc}") from None
    return check_gold_frame(df, labels, str(loc), csv_lines=p.suffix != ".parquet")


def check_gold_frame(
    df: pd.DataFrame, labels: list[str], source: str = "gold frame", csv_lines: bool = False
) -> pd.DataFrame:
    """Gold labels of a ``sample_id, label`` frame checked against the label set (labels match
    case-insensitively): the frame with the class index ``y``, one row per sample. ``csv_lines``:
    bad rows are named by their CSV line."""
    loc = source
    missing = [c for c in ("sample_id", "label") if c not in df.columns]
    if missing:
        raise SchemaError(
            f"gold {loc}: missing columns {missing}; got {list(df.columns)}; expected columns sample_id,label"
        )
    if not len(df):
        raise AggregationError(f"gold {loc}: holds no rows (only a header); expected sample_id,label rows")
    df = df[["sample_id", "label"]].astype(str)
    lookup = {x.lower(): i for i, x in enumerate(labels)}
    y = df["label"].str.strip().str.lower().map(lookup)
    bad = y.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        where = f"line {i + 2}" if csv_lines else f"row {i}"
        raise AggregationError(
            f"gold {loc}: {int(bad.sum())} labels not in the label set (first at {where}: "
            f"{df['label'].iloc[i]!r}); expected one of {labels}"
        )
    df = df.assign(y=y.astype(int))
    conflict = df.groupby("sample_id")["y"].nunique()
    if (conflict > 1).any():
        sid = conflict[conflict > 1].index[0]
        raise AggregationError(f"gold {loc}: sample {sid!r} has conflicting gold labels")
    return df.drop_duplicates("sample_id").reset_index(drop=True)


def align_gold(gold_df: pd.DataFrame, m: AnnotationMatrix, num_classes: int) -> tuple[Gold, int]:
    """Gold aligned to the matrix rows; ids absent from the table are ignored (and counted)."""
    idx = pd.Index(m.sample_ids).get_indexer(gold_df["sample_id"].to_numpy())
    known = idx >= 0
    if not known.any():
        raise AggregationError(
            f"gold: none of the {len(gold_df)} gold ids is in the annotation table "
            f"(first gold id: {gold_df['sample_id'].iloc[0]!r})"
        )
    return Gold(idx[known], gold_df["y"].to_numpy()[known], num_classes), int((~known).sum())


@dataclass
class AggregationResult:
    table: pa.Table
    report: dict[str, Any] = field(default_factory=dict)

    def write(self, path: str | os.PathLike[str]) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.table, path)


def _cv_dict(r: CVResult) -> dict[str, Any]:
    return {"accuracy": r.accuracy, "ci95": [r.ci_low, r.ci_high], "n_gold": r.n, "folds": r.folds, "note": r.note}


def attach_embeddings(
    m: AnnotationMatrix, embeddings: tuple[np.ndarray, np.ndarray]
) -> tuple[AnnotationMatrix, dict[str, Any]]:
    """``m`` with the pool's embeddings (ids, (N, D) vectors) of its samples, and what was found
    (for the report). Raises :class:`AggregationError` when none of its samples has one (the
    embeddings of another pool)."""
    ids, vectors = embeddings
    out = m.with_embeddings(ids, vectors)
    found = int(out.has_embedding.sum())
    if found == 0:
        first = m.sample_ids[0] if len(m) else None
        raise AggregationError(
            f"embeddings: none of the table's {len(m)} samples is among the {len(ids)} embedded "
            f"pool rows (first table id: {first!r}); is it the pool that was labelled?"
        )
    return out, {"dim": int(np.asarray(vectors).shape[1]), "samples_with": found, "samples_without": len(m) - found}


def fit_aggregator(
    m: AnnotationMatrix,
    gold: Gold,
    name: str = "default",
    params: dict[str, Any] | None = None,
    seed: int | None = None,
) -> Aggregator:
    """The aggregator ``name`` with ``params``, fitted on ``m`` and ``gold``: the one way both
    ``aggregate`` (and so ``molal-ray aggregate``) and the loop's rounds fit it, so that the same
    table, labelled rows and settings give the same labels in both."""
    settings = dict(params or {})
    given = settings.pop("seed", None)  # a setting of the loop's config; an explicit seed wins
    return get_aggregator(name, seed=given if seed is None else seed, **settings).fit(m, gold)


def text_view_summary(model: Aggregator) -> dict[str, Any] | None:
    """What a text-aware aggregator's text view did in its last fit (used or not, rows, the
    weight chosen and its held-out evidence, a note); None for an aggregator without one."""
    summary = getattr(model, "text_summary", None)
    return summary() if callable(summary) else None


def aggregate(
    table: pa.Table,
    gold_df: pd.DataFrame,
    labels: list[str],
    method: str = "default",
    *,
    negative_threshold: float = 0.05,
    folds: int = 5,
    seed: int = 0,
    validate: bool = True,
    baselines: bool = True,
    cascade: dict[str, Any] | None = None,
    embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    progress: Callable[[str], None] | None = None,
    params: dict[str, Any] | None = None,
) -> AggregationResult:
    """Fit ``method`` on the table and gold, label every sample, and report honest accuracies.

    ``cascade`` (the ``cascade.json`` of a cascaded label job: ``stages``, ``min_vote_share``):
    every row is seen as the cascade leaves it (``aggregation/cascade.py``), so that the gold rows
    every annotator labelled to rank them look like the rows the aggregator labels.
    ``embeddings``: (sample ids, (N, D) vectors) of the pool's texts, for a text-aware
    aggregator (the default uses them; the others ignore them). ``progress`` is told each step.
    ``params``: the method's settings (as a loop's ``aggregator:`` gives them; defaults otherwise)."""
    say = progress or (lambda msg: None)
    C = len(labels)
    m = raw = build_matrix(table, C)
    text_info: dict[str, Any] | None = None
    if embeddings is not None:
        m, text_info = attach_embeddings(m, embeddings)
    hidden = 0
    if cascade:
        from molal_ray.aggregation.cascade import cascade_view

        seen = cascade_view(m, cascade["stages"], float(cascade["min_vote_share"]))
        hidden, m = int(m.present.sum() - seen.present.sum()), seen
    gold, n_ignored = align_gold(gold_df, m, C)
    name = DEFAULT if method == "default" else method
    report: dict[str, Any] = {
        "method": name,
        "samples": len(m),
        "annotators": m.annotators,
        "gold_used": len(gold),
        "gold_ignored_not_in_table": n_ignored,
        "table_checks": check_table(table, raw),
        "warnings": [],
    }
    if cascade:
        report["cascade"] = {
            "stages": cascade["stages"],
            "min_vote_share": cascade["min_vote_share"],
            "answers_hidden": hidden,
        }
    if len(np.unique(gold.y)) < 2:
        report["warnings"].append(
            "gold holds a single class: learned aggregators fall back to Dawid-Skene or predict that class"
        )
    if text_info is not None and text_info["samples_without"]:
        report["warnings"].append(
            f"embeddings: {text_info['samples_without']} of {len(m)} samples have none (not in "
            "the pool given); they are labelled from the answers alone"
        )
    say(
        f"fitting {name} on {len(m):,} samples x {len(m.annotators)} annotators, {len(gold)} gold"
        + (", with the texts' embeddings" if text_info else "")
    )
    model = fit_aggregator(m, gold, name, params, seed)
    if text_info is None and model.without_text:
        report["text_view"] = {
            "used": False,
            "note": f"no embeddings of the texts (--pool): {model.without_text} on the answers alone",
        }
    if text_info is not None:
        summary = text_view_summary(model)
        text_info.update(
            summary
            if summary is not None
            else {"used": False, "rows": 0, "note": "this aggregator does not read the texts"}
        )
        report["text_view"] = text_info
    probs = model.predict_proba(m)
    probs[gold.index] = gold.one_hot()
    is_gold = np.zeros(len(m), bool)
    is_gold[gold.index] = True
    label_idx = probs.argmax(1)
    lab = np.asarray(labels, dtype=object)
    negatives = [lab[row < negative_threshold].tolist() for row in probs]
    out = pa.table(
        {
            "sample_id": pa.array(m.sample_ids.tolist(), pa.string()),
            "label": pa.array(lab[label_idx].tolist(), pa.string()),
            "probs": pa.array(probs.astype(np.float32).tolist(), pa.list_(pa.float32())),
            "confidence": pa.array(probs.max(1).astype(np.float32)),
            "negatives": pa.array(negatives, pa.list_(pa.string())),
            "is_gold": pa.array(is_gold),
            "n_annotators": pa.array(m.present.sum(1).astype(np.int16)),
        },
        schema=OUTPUT_SCHEMA,
    )
    report["annotator_quality"] = annotator_quality(raw, gold)  # every answer on the gold rows, cascade or not
    if validate:
        methods = [name] + ([x for x in available() if x != name] if baselines else [])
        if m.embeddings is None:  # without texts a text-aware aggregator is its answers-only one: list one of them
            twin = registered(name).without_text
            methods = [x for x in methods if x != twin and (x == name or not registered(x).without_text)]
        report["validation"] = {}
        for i, n in enumerate(methods):
            say(f"cross-validating on the gold rows: {n} ({i + 1}/{len(methods)})")
            agg = get_aggregator(n, seed=seed, **((params or {}) if n == name else {}))
            # Accuracy only: the copies skip what changes confidence but never the label (a temperature).
            r = (
                cross_validate(functools.partial(agg.unfitted_copy, **agg.label_only), m, gold, folds, seed)
                if agg.uses_gold
                else direct_accuracy(agg.fit(m, gold).predict_proba(m), gold)
            )
            report["validation"][n] = _cv_dict(r)
    return AggregationResult(out, report)


def report_lines(report: dict[str, Any], labels: list[str]) -> list[str]:
    """The validation report as text."""
    lines = [
        f"samples: {report['samples']}  annotators: {', '.join(report['annotators'])}  "
        f"gold used: {report['gold_used']} (ignored, not in table: {report['gold_ignored_not_in_table']})"
    ]
    checks = report["table_checks"]
    lines.append(
        f"table: {checks['error_rows']} error rows, {checks['non_finite_or_negative']} rows with "
        f"NaN/negative values, {checks['absent_pairs']} (sample, annotator) pairs absent"
    )
    for w in report["warnings"]:
        lines.append(f"warning: {w}")
    tv = report.get("text_view")
    if tv is not None and "samples_with" in tv:
        lines.append(
            f"texts: embeddings of {tv['samples_with']} samples (width {tv['dim']}); "
            + (f"text view trained on {tv['rows']} rows; {tv['note']}" if tv.get("trained") else tv["note"])
        )
    elif tv is not None:
        lines.append(f"texts: {tv['note']}")
    if "validation" in report:
        lines.append("accuracy on gold (learned methods: K-fold cross-validation; 95% Wilson interval):")
        for n, r in report["validation"].items():
            acc = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
            ci = "" if r["ci95"][0] is None else f" [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
            star = " <- chosen" if n == report["method"] else ""
            lines.append(f"  {n:<12} {acc}{ci}{' ' + r['note'] if r['note'] else ''}{star}")
    lines.append("annotators on gold (vote accuracy / top-probability accuracy):")
    for n, q in report["annotator_quality"].items():
        if q["n"]:
            lines.append(f"  {n:<12} {q['vote_accuracy']:.3f} / {q['prob_accuracy']:.3f}  (n={q['n']})")
        else:
            lines.append(f"  {n:<12} no gold rows")
    del labels
    return lines
