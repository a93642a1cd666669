"""The loop's report: report.json, a PNG of the curves and a short Markdown summary."""

from __future__ import annotations

import io
import json
from typing import Any

from molal_ray.storage import Location, resolve

KEYS = ("round", "n_labeled", "test_accuracy", "test_micro_f1", "test_macro_f1", "annotation_accuracy")


def write_report(out: str | Location, history: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    out = resolve(out)
    out.mkdirs()
    report = {**meta, "rounds": [{k: h.get(k) for k in KEYS} | {"val_accuracy": h.get("val_accuracy")}
                                 for h in history]}
    out.join("report.json").write_text(json.dumps(report, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    n = [h["n_labeled"] for h in history]
    for key, name in (("test_accuracy", "test accuracy"), ("test_macro_f1", "test macro-F1"),
                      ("annotation_accuracy", "annotation accuracy")):
        ys = [h.get(key) for h in history]
        pts = [(x, y) for x, y in zip(n, ys) if y is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xlabel("labelled samples")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{meta.get('strategy')} / annotation: {meta.get('annotation')}")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    out.join("curves.png").write_bytes(png.getvalue())
    lines = [f"# Active learning: {meta.get('task')}", "",
             f"strategy `{meta.get('strategy')}`, annotation `{meta.get('annotation')}`, "
             f"{len(history) - 1} rounds of {meta.get('query_size')}", "",
             "| round | labelled | test acc | micro-F1 | macro-F1 | annotation acc |", "|---|---|---|---|---|---|"]
    for h in history:
        ann = "-" if h.get("annotation_accuracy") is None else f"{h['annotation_accuracy']:.3f}"
        lines.append(f"| {h['round']} | {h['n_labeled']} | {h['test_accuracy']:.3f} | {h['test_micro_f1']:.3f} | "
                     f"{h['test_macro_f1']:.3f} | {ann} |")
    out.join("summary.md").write_text("\n".join(lines) + "\n")
    return report
