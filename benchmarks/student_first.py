"""Student-first labelling of the whole TREC pool after the example loop, against the mixture on
every text: whole-pool label accuracy and LLM calls.

For each seed, with the commands a user runs:

1. ``molal-ray run examples/trec/loop.yaml --seed S`` (the example loop: 50 gold rows, 8 rounds
   of 50 max-entropy queries labelled by the mixture; it exports ``model/`` and ``labels.parquet``);
2. ``molal-ray predict --model LOOP/model --pool examples/trec/pool.parquet`` (the loop's
   labelled rows keep their labels; ``classifier`` below is this table);
3. the same with ``--escalate examples/trec/label.yaml --budget B`` for B in 0.1, 0.2, 0.3, 0.5
   (one output folder: each budget asks only the rows the previous one did not);
4. the mixture on every text: ``molal-ray label examples/trec/label.yaml`` (once) and
   ``molal-ray aggregate --pool`` (the default aggregator with the texts' embeddings) fitted on the
   loop's own 50 gold rows.

LLM calls count every (text, annotator) request: the loop's annotation table, plus the
escalation's calls (its doubtful rows; the answers to the loop's gold rows, which the aggregator
is fitted on, are copied from the loop's table, ``answers_from_loop``, not asked again).
Accuracy is against the gold label of every one of the 5,452 questions; each
escalation's ``accuracy_mixture_alone`` is what ``--combine mixture`` gives on the same rows.

    .venv/bin/python benchmarks/student_first.py [--seeds 0 1 2] [--budgets 0.1 0.2 0.3 0.5]
        [--out benchmarks/results/student_first.jsonl]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from molal_ray.inference.job import read_predictions  # noqa: E402
from molal_ray.pipeline.output import read_table  # noqa: E402
from molal_ray.schema import PREDICTIONS  # noqa: E402

TREC = ROOT / "examples" / "trec"
CLI = [sys.executable, "-m", "molal_ray.cli"]


def sh(*args: str) -> float:
    t0 = time.monotonic()
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return time.monotonic() - t0


def accuracy(labels: pd.DataFrame, gold: pd.Series) -> float:
    m = labels.set_index("sample_id")["label"].reindex(gold.index)
    return float((m == gold).mean())


def table_rows(folder: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in (folder / "parts").glob("*.parquet"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--work", default=str(ROOT / "runs" / "student_first"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "student_first.jsonl"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    gold = pd.read_csv(TREC / "gold.csv", dtype=str).set_index("sample_id")["label"]
    everything = len(gold) * 5
    all_table = work / "all"
    if not (all_table / "summary.json").exists():
        sh("label", str(TREC / "label.yaml"), "--output", str(all_table))
    rows = []
    for seed in args.seeds:
        loop = work / f"loop-{seed}"
        t_loop = sh("run", str(TREC / "loop.yaml"), "--seed", str(seed), "--output", str(loop), "--overwrite")
        loop_calls = table_rows(loop / "annotations")
        labelled = pq.read_table(loop / "labels.parquet").to_pandas()
        gold_rows = labelled[labelled["source"] == "gold"][["sample_id", "label"]]
        gold_csv = work / f"gold-{seed}.csv"
        gold_rows.to_csv(gold_csv, index=False)
        pred = work / f"pred-{seed}"
        common = ["predict", "--model", str(loop / "model"), "--pool", str(TREC / "pool.parquet"), "--out", str(pred)]
        t_pred = sh(*common, "--overwrite")
        base = read_table(pred, PREDICTIONS, columns=["sample_id", "label", "source"]).to_pandas()
        row = {
            "seed": seed,
            "loop_s": round(t_loop, 1),
            "predict_s": round(t_pred, 1),
            "loop_calls": loop_calls,
            "loop_labelled": len(labelled),
            "classifier": {"accuracy": accuracy(base, gold), "calls": loop_calls},
        }
        for b in args.budgets:
            t = sh(*common, "--escalate", str(TREC / "label.yaml"), "--budget", str(b))
            summary = json.loads((pred / "summary.json").read_text())["escalation"]
            final = read_predictions(pred, columns=["sample_id", "label", "source"]).to_pandas()
            calls = loop_calls + summary["llm_calls"]
            # --combine mixture on the same rows: the escalated rows take the mixture's own label
            # (PRED/escalation/mixture.parquet), the others keep the classifier's.
            mix = pd.read_parquet(pred / "escalation" / "mixture.parquet", columns=["sample_id", "label"])
            alone = base.set_index("sample_id")["label"].copy()
            alone.loc[mix["sample_id"]] = mix["label"].to_numpy()
            row[f"escalate_{b:g}"] = {
                "accuracy": accuracy(final, gold),
                "accuracy_mixture_alone": accuracy(alone.rename("label").reset_index(), gold),
                "calls": calls,
                "share_of_mixture_calls": round(calls / everything, 4),
                "escalated": summary["escalated"],
                "answers_from_loop": summary.get("answers_from_loop", 0),
                "seconds": round(t, 1),
            }
        mix_out = work / f"mixture-{seed}.parquet"
        t_mix = sh(
            "aggregate", "--annotations", str(all_table), "--gold", str(gold_csv), "--pool", str(TREC / "pool.parquet"),
            "--out", str(mix_out), "--no-validate",
        )  # fmt: skip
        row["mixture"] = {"accuracy": accuracy(pd.read_parquet(mix_out), gold), "calls": everything}
        row["aggregate_s"] = round(t_mix, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    names = ["classifier", *[f"escalate_{b:g}" for b in args.budgets], "mixture"]
    print(f"\n{'labels':<16}{'accuracy (mean over seeds)':>28}{'min':>8}{'LLM calls':>12}{'share':>8}")
    for n in names:
        acc = [r[n]["accuracy"] for r in rows]
        calls = sum(r[n]["calls"] for r in rows) / len(rows)
        print(f"{n:<16}{sum(acc) / len(acc):>28.4f}{min(acc):>8.4f}{calls:>12.0f}{calls / everything:>8.1%}")
    print("\n--combine product against mixture (the escalated rows' labels), per seed:")
    for b in args.budgets:
        n = f"escalate_{b:g}"
        pairs = ", ".join(f"{r[n]['accuracy']:.4f} / {r[n]['accuracy_mixture_alone']:.4f}" for r in rows)
        print(f"  {b:g} escalated: {pairs}")


if __name__ == "__main__":
    main()
