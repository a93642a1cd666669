"""The loop's report: ``report.json``, ``summary.md``, ``curves.png`` and a self-contained
``report.html`` (figures embedded as PNG) with the learning curve, the accuracy of the labels each
round received, each annotator's accuracy on the gold rows, the confusion matrix of the assigned
labels on gold rows, how often people confirmed the mixture's label and each LLM's (rounds with
samples routed to people), the seconds each phase took per round, and the weight the aggregator's
text view earned each round and on what evidence."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import numpy as np

from molal_ray.layout import LoopLayout
from molal_ray.storage import Location, resolve

KEYS = (
    "round",
    "n_labeled",
    "test_accuracy",
    "test_micro_f1",
    "test_macro_f1",
    "annotation_accuracy",
    "llm_label_accuracy",
    "n_human",
    "people_agreement",
    "llm_calls",
    "n_down_weighted",
    "n_relabelled",
    "text_view_rows",
    "text_view",
    "val_accuracy",
    "elapsed_s",
    "phase_s",
)
PHASES = ("query", "annotate", "aggregate", "train", "score")


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _figures(history: list[dict[str, Any]], meta: dict[str, Any], gold: dict[str, Any] | None) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, bytes] = {}
    n = [h["n_labeled"] for h in history]
    rounds = [h["round"] for h in history]

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, name in (("test_accuracy", "test accuracy"), ("test_macro_f1", "test macro-F1")):
        ax.plot(n, [h[key] for h in history], marker="o", label=name)
    ax.set(xlabel="labelled samples", ylim=(0, 1), title=f"learning curve ({meta.get('strategy')})")
    ax.grid(alpha=0.3)
    ax.legend()
    figs["learning curve"] = _png(fig)

    acc = [(r, h["annotation_accuracy"]) for r, h in zip(rounds, history) if h.get("annotation_accuracy") is not None]
    if acc:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.bar([r for r, _ in acc], [a for _, a in acc], color="tab:green")
        ax.set(
            xlabel="round",
            ylabel="accuracy",
            ylim=(0, 1),
            title=f"accuracy of the labels each round received ({meta.get('annotation')})",
        )
        ax.grid(alpha=0.3, axis="y")
        figs["labels received"] = _png(fig)

    if gold and gold.get("annotators"):
        names = list(gold["annotators"])
        vals = [gold["annotators"][a]["accuracy"] or 0.0 for a in names]
        assigned = gold.get("assigned", {}).get("accuracy")
        if assigned is not None:
            names.append(f"loop ({meta.get('annotation')})")
            vals.append(assigned)
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.barh(
            names,
            vals,
            color=["tab:blue"] * len(gold["annotators"]) + ["tab:orange"] * (len(names) - len(gold["annotators"])),
        )
        for i, v in enumerate(vals):
            ax.text(v + 0.01, i, f"{v:.3f}", va="center")
        ax.set(
            xlim=(0, 1.1),
            xlabel="accuracy on the queried rows (their gold labels)",
            title="annotators against the gold labels",
        )
        figs["annotators"] = _png(fig)

    conf = (gold or {}).get("assigned", {}).get("confusion")
    if gold is not None and conf is not None:
        from sklearn.metrics import ConfusionMatrixDisplay

        fig, ax = plt.subplots(figsize=(6, 5))
        ConfusionMatrixDisplay(np.asarray(conf), display_labels=gold["labels"]).plot(
            ax=ax, colorbar=False, xticks_rotation=45, cmap="Blues"
        )
        ax.set(title="assigned labels against gold (queried rows)", xlabel="assigned", ylabel="gold")
        figs["confusion"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.2))
    bottom = np.zeros(len(history))
    for p in PHASES:
        secs = np.array([h.get("phase_s", {}).get(p, 0.0) for h in history])
        if secs.any():
            ax.bar(rounds, secs, bottom=bottom, label=p)
            bottom += secs
    ax.set(xlabel="round", ylabel="seconds", title="seconds per phase")
    ax.legend(ncol=3, fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    figs["phases"] = _png(fig)
    return figs


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def agreement_rows(history: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The table of people against the mixture and each LLM, a row per round that routed
    samples to people: header and rows of text."""
    rounds = [h for h in history if h.get("people_agreement")]
    names = sorted({a for h in rounds for a in h["people_agreement"].get("annotators", {})})
    header = ["round", "people's labels", "confirmed the mixture", *names]
    rows = [
        [
            str(h["round"]),
            str(h["people_agreement"]["n"]),
            _fmt(h["people_agreement"]["mixture"]),
            *[_fmt(h["people_agreement"]["annotators"].get(a)) for a in names],
        ]
        for h in rounds
    ]
    return header, rows


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _html(history: list[dict[str, Any]], meta: dict[str, Any], figs: dict[str, bytes]) -> str:
    rows = "".join(
        f"<tr><td>{h['round']}</td><td>{h['n_labeled']}</td><td>{h['test_accuracy']:.3f}</td>"
        f"<td>{h['test_macro_f1']:.3f}</td><td>{_num(h.get('annotation_accuracy'))}</td>"
        f"<td>{h.get('n_human', '-')}</td><td>{h.get('llm_calls', '-')}</td>"
        f"<td title='{html.escape((h.get('text_view') or {}).get('note', ''), quote=True)}'>"
        f"{'-' if not h.get('text_view') else format(h['text_view']['weight'], 'g')}</td>"
        f"<td>{h.get('elapsed_s', 0):.0f}</td></tr>"
        for h in history
    )
    settings = ", ".join(f"{k}: {html.escape(str(v))}" for k, v in meta.items())
    images = "".join(
        f"<figure><img alt='{html.escape(k)}' src='data:image/png;base64,{base64.b64encode(v).decode()}'></figure>"
        for k, v in figs.items()
    )
    header, agree = agreement_rows(history)
    people = (
        ""
        if not agree
        else (
            "<h2>People against the mixture and each LLM</h2><p>Share of people's labels that match the mixture's "
            "label and each annotator's answer, on the samples routed to them.</p><table><tr>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in header)
            + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in agree)
            + "</table>"
        )
    )
    title = html.escape(str(meta.get("task")))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>molal_ray: {title}</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:2em auto;color:#222}}
figure{{display:inline-block;margin:.5em}}img{{max-width:600px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:right}}</style></head>
<body><h1>Active learning: {html.escape(str(meta.get("task")))}</h1><p>{settings}</p>{images}
<h2>Rounds</h2><table><tr><th>round</th><th>labelled</th><th>test acc</th><th>macro-F1</th>
<th>labels acc</th><th>human labels</th><th>LLM calls</th><th>text weight</th><th>seconds</th></tr>{rows}</table>
<p>Text weight: the weight the aggregator's text view earned that round on the labelled rows, out of fold
(0: the answers alone); hover for the evidence.</p>{people}</body></html>
"""


def write_report(
    out: str | Location | LoopLayout,
    history: list[dict[str, Any]],
    meta: dict[str, Any],
    gold: dict[str, Any] | None = None,
) -> dict[str, Any]:
    layout = out if isinstance(out, LoopLayout) else LoopLayout(resolve(out))
    layout.root.mkdirs()
    report = {**meta, "rounds": [{k: h.get(k) for k in KEYS} for h in history], "gold": gold}
    layout.report(layout.REPORT_JSON).write_text(json.dumps(report, indent=2))
    figs = _figures(history, meta, gold)
    layout.report(layout.CURVES).write_bytes(figs["learning curve"])
    layout.report(layout.REPORT_HTML).write_text(_html(history, meta, figs))
    lines = [
        f"# Active learning: {meta.get('task')}",
        "",
        f"strategy `{meta.get('strategy')}`, annotation `{meta.get('annotation')}`, "
        f"{len(history) - 1} rounds of {meta.get('query_size')}",
        "",
        "| round | labelled | test acc | micro-F1 | macro-F1 | annotation acc | human labels | LLM calls |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for h in history:
        ann = "-" if h.get("annotation_accuracy") is None else f"{h['annotation_accuracy']:.3f}"
        lines.append(
            f"| {h['round']} | {h['n_labeled']} | {h['test_accuracy']:.3f} | {h['test_micro_f1']:.3f} | "
            f"{h['test_macro_f1']:.3f} | {ann} | {h.get('n_human', '-')} | {h.get('llm_calls', '-')} |"
        )
    lines += [
        "",
        f"human labels in all: {sum(h.get('n_human', 0) for h in history)}, LLM calls in all: "
        f"{sum(h.get('llm_calls', 0) for h in history)}",
    ]
    if gold and gold.get("annotators"):
        lines += ["", "| annotator | accuracy on the queried rows (gold) | rows |", "|---|---|---|"]
        for a, v in gold["annotators"].items():
            lines.append(f"| {a} | {'-' if v['accuracy'] is None else format(v['accuracy'], '.3f')} | {v['rows']} |")
    views = [h for h in history if h.get("text_view")]
    if views:
        lines += [
            "",
            "The aggregator's text view (weight 0: the answers alone), chosen each round on the labelled rows:",
            "",
        ]
        lines += [f"- round {h['round']}: {h['text_view']['note']}" for h in views]
    header, agree = agreement_rows(history)
    if agree:
        lines += [
            "",
            "People against the mixture and each LLM (share of their labels that match):",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        lines += ["| " + " | ".join(r) + " |" for r in agree]
    layout.report(layout.SUMMARY_MD).write_text("\n".join(lines) + "\n")
    return report
