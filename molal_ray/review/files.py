"""Review files: the samples the mixture is least sure of, for people to confirm or fix.

Pure Python and Arrow (no Ray). Two formats people already use:

- **CSV**: ``sample_id, text, suggested, confidence, label``; a reviewer fills ``label`` (empty:
  not reviewed yet). Read back, the ``label`` column is what counts.
- **Label Studio**: an import file of tasks (``data`` holds ``text``, ``sample_id`` and the LLMs'
  answers), each with the aggregated label as a pre-annotation (``predictions``), so that a
  reviewer confirms or fixes it; plus the labeling config (``<Choices>`` over the label set) to
  paste into the project. Read back: Label Studio's JSON export (tasks with ``annotations``; the
  latest annotation that was not cancelled counts; a task with none is not reviewed). The same
  tasks and config go to a running server through :mod:`molal_ray.review.label_studio`.

:func:`read_review` checks every label is in the label set and every id is one it expects, and
raises :class:`~molal_ray.exceptions.ReviewError` naming the first bad rows before anything is
used: a bad file changes nothing.
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

from molal_ray.exceptions import ReviewError

CSV_COLUMNS = ("sample_id", "text", "suggested", "confidence", "label")
LS_FROM, LS_TO = "label", "text"  # the names of the Choices and Text tags of the labeling config
LS_ANSWERS = "llm_answers"  # the task field (and Text tag) that shows each LLM's answer


@dataclass
class ReviewItem:
    sample_id: str
    text: str
    suggested: str
    confidence: float
    answers: dict[str, str] = field(default_factory=dict)  # annotator -> its answer, as a reviewer reads it

    def answers_text(self) -> str:
        return "; ".join(f"{name}: {answer}" for name, answer in self.answers.items()) or "(none)"


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


def labelstudio_tasks(
    items: Sequence[ReviewItem], model_version: str = "molal_ray", batch: str = ""
) -> list[dict[str, Any]]:
    """Label Studio import tasks, the aggregated label as each task's pre-annotation (its
    confidence as the prediction's score) and each LLM's answer shown beside the text; ``batch``
    (e.g. ``round-3``) is kept in the task's data."""
    return [
        {
            "data": {LS_TO: it.text, "sample_id": it.sample_id, LS_ANSWERS: it.answers_text(), "batch": batch},
            "predictions": [
                {
                    "model_version": model_version,
                    "score": round(float(it.confidence), 4),
                    "result": [
                        {
                            "from_name": LS_FROM,
                            "to_name": LS_TO,
                            "type": "choices",
                            "value": {"choices": [it.suggested]},
                        }
                    ],
                }
            ],
        }
        for it in items
    ]


def labelstudio_config(labels: Sequence[str]) -> str:
    """The labeling config of a Label Studio project for these tasks."""
    choices = "\n".join(f"    <Choice value={quoteattr(lab)}/>" for lab in labels)
    return (
        f'<View>\n  <Text name="{LS_TO}" value="${LS_TO}"/>\n'
        f'  <Choices name="{LS_FROM}" toName="{LS_TO}" choice="single" showInline="true">\n{choices}\n'
        "  </Choices>\n"
        f'  <Header value="What the LLMs answered" size="6"/>\n  <Text name="{LS_ANSWERS}" value="${LS_ANSWERS}"/>\n'
        "</View>\n"
    )


def check_labelstudio_config(config: str, labels: Sequence[str], source: str) -> None:
    """Refuse a project's labeling config that cannot hold these tasks' labels: it needs a
    single-choice ``<Choices name="label" toName="text">`` over exactly ``labels`` and a
    ``<Text name="text" value="$text">``; other tags (a layout a team made) are fine."""
    try:
        root = ET.fromstring(config)
    except ET.ParseError as exc:
        raise ReviewError(f"{source}: its labeling config is not valid XML ({exc})") from None
    texts = [t for t in root.iter("Text") if t.get("name") == LS_TO]
    if not texts or texts[0].get("value") != f"${LS_TO}":
        raise ReviewError(
            f'{source}: its labeling config has no <Text name="{LS_TO}" value="${LS_TO}"/>; '
            "expected the config molal-ray makes (review push creates it in a new project)"
        )
    boxes = [c for c in root.iter("Choices") if c.get("name") == LS_FROM]
    if not boxes or boxes[0].get("toName") != LS_TO:
        raise ReviewError(
            f'{source}: its labeling config has no <Choices name="{LS_FROM}" toName="{LS_TO}">; '
            "expected the config molal-ray makes (review push creates it in a new project)"
        )
    if boxes[0].get("choice", "single") != "single":
        raise ReviewError(f'{source}: its <Choices name="{LS_FROM}"> allows several choices; expected choice="single"')
    have = [c.get("value") for c in boxes[0].iter("Choice")]
    if sorted(str(v) for v in have) != sorted(labels):
        missing, extra = sorted(set(labels) - set(have)), sorted(str(v) for v in set(have) - set(labels))
        raise ReviewError(
            f"{source}: its labeling config's choices differ from the task's labels (missing: "
            f"{missing}, not in the task: {extra}); fix the project's config or name another project"
        )


# -- reading ------------------------------------------------------------------------------------
def _read_csv(text: str, source: str) -> list[tuple[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise ReviewError(f"{source}: the file is empty; expected a review CSV with sample_id and label columns")
    cols = set(reader.fieldnames)
    rows = list(reader)
    if not {"sample_id", "label"} <= cols:
        raise ReviewError(f"{source}: got columns {sorted(cols)}; expected at least sample_id and label")
    return [(str(r["sample_id"]), (r["label"] or "").strip()) for r in rows]


def labelstudio_answers(data: Any, source: str) -> list[tuple[str, str, bool]]:
    """``(sample_id, label, skipped)`` of each task of a Label Studio export (or of the tasks a
    server lists): the label of the task's latest annotation that was not cancelled ("" when it
    has none); ``skipped`` when every annotation it has was cancelled (a reviewer skipped it)."""
    if not isinstance(data, list):
        raise ReviewError(f"{source}: expected a Label Studio JSON export (a list of tasks)")
    out = []
    for i, task in enumerate(data):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise ReviewError(f"{source}: task {i} has no 'data'; expected a Label Studio JSON export")
        sid = task["data"].get("sample_id")
        if sid is None:
            raise ReviewError(f"{source}: task {i} has no data.sample_id")
        anns = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        kept = [a for a in anns if not a.get("was_cancelled")]
        # the latest first by time (ISO timestamps sort as text), then by the server's id
        kept.sort(key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))
        chosen = ""
        for res in (kept[-1].get("result") or []) if kept else []:
            choices = (res.get("value") or {}).get("choices")
            if res.get("type") == "choices" and res.get("from_name", LS_FROM) == LS_FROM and choices:
                if len(choices) != 1:
                    raise ReviewError(f"{source}: task {i} ({sid!r}) has {len(choices)} choices; expected one")
                chosen = str(choices[0])
        out.append((str(sid), chosen.strip(), bool(anns) and not kept))
    return out


def _read_labelstudio(data: Any, source: str) -> list[tuple[str, str]]:
    return [(sid, label) for sid, label, _ in labelstudio_answers(data, source)]


def read_review(
    path: str, labels: Sequence[str], expected_ids: Sequence[str] | None = None, require_all: bool = False
) -> dict[str, str]:
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
    return checked_labels(pairs, labels, expected_ids, require_all, path)


def checked_labels(
    pairs: Sequence[tuple[str, str]],
    labels: Sequence[str],
    expected_ids: Sequence[str] | None,
    require_all: bool,
    path: str,
) -> dict[str, str]:
    """``{sample_id: label}`` of reviewed ``(sample_id, label)`` pairs ("" : not reviewed), every
    one checked as :func:`read_review` says; ``path`` names their source in errors."""
    by_case: dict[str, list[str]] = {}
    for name in labels:
        by_case.setdefault(name.strip().lower(), []).append(name)

    def canonical(lab: str) -> str | None:
        """The label set's spelling of ``lab``: itself, or the one label it names with other case or
        spaces around it ('Human ', 'HUMAN'); None when it names none, or two."""
        if lab in labels:
            return lab
        same = by_case.get(lab.strip().lower(), [])
        return same[0] if len(same) == 1 else None

    known = set(expected_ids) if expected_ids is not None else None
    out: dict[str, str] = {}
    bad_label, unknown, clash = [], [], []
    for sid, given in pairs:
        if known is not None and sid not in known:
            unknown.append(sid)
        if not given.strip():
            continue
        lab = canonical(given)
        if lab is None:
            bad_label.append((sid, given))
            continue
        if out.get(sid, lab) != lab:
            clash.append(sid)
        out[sid] = lab
    if bad_label:
        raise ReviewError(
            f"{path}: {len(bad_label)} labels are not in the label set (first: {bad_label[0][1]!r} for "
            f"{bad_label[0][0]!r}); expected one of {list(labels)}"
        )
    if unknown:
        raise ReviewError(
            f"{path}: {len(unknown)} ids are not among the samples sent for review (first: {unknown[0]!r})"
        )
    if clash:
        raise ReviewError(f"{path}: {len(clash)} ids have two different labels (first: {clash[0]!r})")
    if require_all and known is not None:
        missing = sorted(known - set(out))
        if missing:
            raise ReviewError(
                f"{path}: {len(missing)} of {len(known)} samples are not reviewed yet "
                f"(first: {missing[0]!r}); fill their label"
            )
    return out


def gold_csv(labels: dict[str, str]) -> str:
    """``sample_id,label`` rows: what ``molal-ray aggregate --gold`` and ``gold:`` read."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["sample_id", "label"])
    for sid, lab in labels.items():
        w.writerow([sid, lab])
    return buf.getvalue()
