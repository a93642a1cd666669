"""Review files: the samples the mixture is least sure of, for people to confirm or fix.

Pure Python and Arrow (no Ray). Two formats people already use:

- **CSV**: ``sample_id, text, suggested, confidence, label``; a reviewer fills ``label`` (empty:
  not reviewed yet). Read back, the ``label`` column is what counts.
- **Label Studio**: an import file of tasks (``data`` holds ``text`` and ``sample_id``), each with
  the aggregated label as a pre-annotation (``predictions``), so that a reviewer confirms or fixes
  it; plus the labeling config (``<Choices>`` over the label set) to paste into the project.
  Read back: Label Studio's JSON export (tasks with ``annotations``; a cancelled annotation or a
  task without one is not reviewed).

:func:`read_review` checks every label is in the label set and every id is one it expects, and
raises :class:`~molal_ray.exceptions.ReviewError` naming the first bad rows before anything is
used: a bad file changes nothing.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from molal_ray.exceptions import ReviewError

CSV_COLUMNS = ("sample_id", "text", "suggested", "confidence", "label")
LS_FROM, LS_TO = "label", "text"  # the names of the Choices and Text tags of the labeling config


@dataclass
class ReviewItem:
    sample_id: str
    text: str
    suggested: str
    confidence: float


# -- which samples ------------------------------------------------------------------------------
def uncertainty(probs: np.ndarray, rule: str, votes: np.ndarray | None = None) -> np.ndarray:
    """How unsure the aggregated label of each row is (higher: less sure). ``rule``: ``margin``
    (1 - (p1 - p2)), ``entropy``, ``confidence`` (1 - p1), ``disagreement`` (the share of
    annotators whose top vote is not the aggregated label; ``votes``: (N, A, C), NaN absent)."""
    p = np.asarray(probs, np.float64)
    if rule == "margin":
        top2 = np.sort(p, axis=1)[:, -2:] if p.shape[1] > 1 else np.c_[np.zeros(len(p)), p]
        return 1.0 - (top2[:, 1] - top2[:, 0])
    if rule == "entropy":
        q = np.clip(p, 1e-12, 1.0)
        return -(q * np.log(q)).sum(1)
    if rule == "confidence":
        return 1.0 - p.max(1)
    if rule == "disagreement":
        if votes is None:
            raise ReviewError("routing rule 'disagreement' needs the annotators' votes")
        v = np.asarray(votes, np.float64)
        present = ~np.isnan(v).any(2)
        top = np.nan_to_num(v).argmax(2)
        differ = (top != p.argmax(1)[:, None]) & present
        return differ.sum(1) / np.maximum(present.sum(1), 1)
    raise ReviewError(f"routing rule: got {rule!r}; expected margin, entropy, confidence or disagreement")


def least_certain(probs: np.ndarray, n: int, rule: str = "margin", votes: np.ndarray | None = None,
                  ids: Sequence[str] | None = None) -> np.ndarray:
    """Positions of the ``n`` least certain rows (ties broken by id, then position)."""
    u = uncertainty(probs, rule, votes)
    key = np.arange(len(u)) if ids is None else np.argsort(np.argsort(np.asarray(ids, dtype=object)))
    order = np.lexsort((key, -u))
    return np.sort(order[:max(0, min(n, len(u)))])


# -- writing ------------------------------------------------------------------------------------
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    """A text cell a spreadsheet shows as text, not as a formula (a leading quote where it starts
    with =, +, -, @, tab or carriage return). The text column is never read back on import."""
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def csv_text(items: Sequence[ReviewItem]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for it in items:
        w.writerow([it.sample_id, spreadsheet_safe(it.text), it.suggested, f"{it.confidence:.4f}", ""])
    return buf.getvalue()


def labelstudio_tasks(items: Sequence[ReviewItem], model_version: str = "molal_ray") -> list[dict[str, Any]]:
    """Label Studio import tasks, the aggregated label as each task's pre-annotation."""
    return [{"data": {"text": it.text, "sample_id": it.sample_id},
             "predictions": [{"model_version": model_version, "score": round(float(it.confidence), 4),
                              "result": [{"from_name": LS_FROM, "to_name": LS_TO, "type": "choices",
                                          "value": {"choices": [it.suggested]}}]}]} for it in items]


def labelstudio_config(labels: Sequence[str]) -> str:
    """The labeling config of a Label Studio project for these tasks."""
    choices = "\n".join(f"    <Choice value={quoteattr(lab)}/>" for lab in labels)
    return (f'<View>\n  <Text name="{LS_TO}" value="$text"/>\n'
            f'  <Choices name="{LS_FROM}" toName="{LS_TO}" choice="single" showInline="true">\n{choices}\n'
            "  </Choices>\n</View>\n")


# -- reading ------------------------------------------------------------------------------------
def _read_csv(text: str, source: str) -> list[tuple[str, str]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        return []
    cols = set(rows[0])
    if not {"sample_id", "label"} <= cols:
        raise ReviewError(f"{source}: got columns {sorted(cols)}; expected at least sample_id and label")
    return [(str(r["sample_id"]), (r["label"] or "").strip()) for r in rows]


def _read_labelstudio(data: Any, source: str) -> list[tuple[str, str]]:
    if not isinstance(data, list):
        raise ReviewError(f"{source}: expected a Label Studio JSON export (a list of tasks)")
    out = []
    for i, task in enumerate(data):
        if not isinstance(task, dict) or "data" not in task:
            raise ReviewError(f"{source}: task {i} has no 'data'; expected a Label Studio JSON export")
        sid = task["data"].get("sample_id")
        if sid is None:
            raise ReviewError(f"{source}: task {i} has no data.sample_id")
        chosen = ""
        for ann in task.get("annotations") or []:  # the last annotation that was not cancelled
            if ann.get("was_cancelled"):
                continue
            for res in ann.get("result") or []:
                choices = (res.get("value") or {}).get("choices")
                if res.get("type") == "choices" and choices:
                    if len(choices) != 1:
                        raise ReviewError(f"{source}: task {i} ({sid!r}) has {len(choices)} choices; expected one")
                    chosen = str(choices[0])
        out.append((str(sid), chosen.strip()))
    return out


def read_review(path: str, labels: Sequence[str], expected_ids: Sequence[str] | None = None,
                require_all: bool = False) -> dict[str, str]:
    """The reviewed labels of a CSV or a Label Studio JSON export: ``{sample_id: label}`` (rows
    left empty are not reviewed and left out). Raises :class:`ReviewError`, before anything is
    used, for a label outside ``labels``, an id outside ``expected_ids``, an id given twice with
    different labels, or (``require_all``) an expected id left unreviewed."""
    from molal_ray.storage import resolve

    loc = resolve(path, field="review file")
    if not loc.exists():
        raise ReviewError(f"review file: {path} does not exist")
    text = loc.read_text()
    if path.lower().endswith(".json"):
        try:
            pairs = _read_labelstudio(json.loads(text), path)
        except json.JSONDecodeError as exc:
            raise ReviewError(f"{path}: not valid JSON ({exc})") from None
    else:
        pairs = _read_csv(text, path)
    allowed = set(labels)
    known = set(expected_ids) if expected_ids is not None else None
    out: dict[str, str] = {}
    bad_label, unknown, clash = [], [], []
    for sid, lab in pairs:
        if known is not None and sid not in known:
            unknown.append(sid)
        if not lab:
            continue
        if lab not in allowed:
            bad_label.append((sid, lab))
        elif out.get(sid, lab) != lab:
            clash.append(sid)
        out[sid] = lab
    if bad_label:
        raise ReviewError(f"{path}: {len(bad_label)} labels are not in the label set (first: {bad_label[0][1]!r} for "
                          f"{bad_label[0][0]!r}); expected one of {list(labels)}")
    if unknown:
        raise ReviewError(f"{path}: {len(unknown)} ids are not among the samples sent for review "
                          f"(first: {unknown[0]!r})")
    if clash:
        raise ReviewError(f"{path}: {len(clash)} ids have two different labels (first: {clash[0]!r})")
    if require_all and known is not None:
        missing = sorted(known - set(out))
        if missing:
            raise ReviewError(f"{path}: {len(missing)} of {len(known)} samples are not reviewed yet "
                              f"(first: {missing[0]!r}); fill their label")
    return out


def gold_csv(labels: dict[str, str]) -> str:
    """``sample_id,label`` rows: what ``molal-ray aggregate --gold`` and ``gold:`` read."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["sample_id", "label"])
    for sid, lab in labels.items():
        w.writerow([sid, lab])
    return buf.getvalue()
