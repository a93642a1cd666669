"""What `molal-ray aggregate` costs with its cross-validated report, on the TREC table (5,452
questions x 5 recorded LLMs, 50 gold labels), with and without the questions' embeddings,
measured side by side in one run:

- ``answers``: no ``--pool``: the default is ``pooled`` exactly (the text view is off);
- ``texts``: with the embeddings (MiniLM, first two tokens; as ``--pool ... --first-tokens 2``
  gives them; their own cost is printed apart, once, and then they come from the cache).

Each is timed for the fit alone (``--no-validate``) and with the report (5-fold cross-validation
of the chosen method and of every baseline on the gold rows).

    .venv/bin/python benchmarks/aggregate_report.py [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.aggregation_quality import LABELS, trec_embeddings, trec_table  # noqa: E402
from molal_ray.aggregation.api import aggregate  # noqa: E402
from molal_ray.aggregation.pooled import forget_chosen_c  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    table, gold_s = trec_table()
    t0 = time.perf_counter()
    emb = trec_embeddings()
    print(
        f"embeddings of {len(emb[0]):,} questions: {time.perf_counter() - t0:.1f} s (from the cache after the "
        "first run)"
    )
    ids = np.random.default_rng(args.seed).choice(gold_s.index.to_numpy(), 50, replace=False)
    gold_df = pd.DataFrame({"sample_id": ids, "y": [LABELS.index(gold_s[i]) for i in ids]})
    truth = gold_s.map({lab: k for k, lab in enumerate(LABELS)})
    rows = []
    for name, embeddings in (("answers", None), ("texts", emb)):
        for validate in (False, True):
            steps: list[tuple[float, str]] = []
            forget_chosen_c()  # each run as a fresh `molal-ray aggregate` process makes it
            t = time.perf_counter()
            res = aggregate(
                table,
                gold_df,
                LABELS,
                embeddings=embeddings,
                validate=validate,
                seed=args.seed,
                progress=lambda msg, s=steps, t=t: s.append((time.perf_counter() - t, msg)),
            )
            secs = time.perf_counter() - t
            out = res.table.to_pandas()
            scored = out[~out["is_gold"]]
            acc = float(
                (
                    scored["label"].map({lab: k for k, lab in enumerate(LABELS)}).to_numpy()
                    == truth[scored["sample_id"]].to_numpy()
                ).mean()
            )
            cv = res.report.get("validation", {}).get(res.report["method"], {}).get("accuracy")
            rows.append((name, "report" if validate else "fit only", secs, acc, cv, len(steps)))
            for at, msg in steps:
                print(f"  [{name}, {'report' if validate else 'fit only'}] {at:6.1f} s  {msg}", flush=True)
    print(f"\n{'inputs':<9}{'what':<10}{'seconds':>9}{'accuracy':>10}{'CV on gold':>12}")
    for name, what, secs, acc, cv, _ in rows:
        cvs = "" if cv is None else f"{cv:.3f}"
        print(f"{name:<9}{what:<10}{secs:>9.1f}{acc:>10.4f}{cvs:>12}")
    base = {what: secs for name, what, secs, *_ in rows if name == "answers"}
    for name, what, secs, *_ in rows:
        if name == "texts":
            print(f"texts / answers, {what}: {secs / base[what]:.2f}x")


if __name__ == "__main__":
    main()
