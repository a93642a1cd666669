"""The GPU check, for a machine with an accelerator: the reference-style loop against the
transformers engine's scoring (two forward passes per batch, votes drawn from the label trie) on
an 8B-shaped Llama with random weights built here, on ``cuda``, in one table.

Needs torch and transformers only (no Ray, pydantic or vLLM, no model files): the prompts are
random token ids of a TREC-like length, the labels six random token sequences in two spellings
each (12 sequences of 1-3 tokens), T=10 at temperature 0.7, top-p 0.9.

    python benchmarks/gpu_engines.py                          # 8B shape, cuda, bfloat16
    python benchmarks/gpu_engines.py --shape tiny --device cpu   # the CPU test of this script

(a) reference loop: per text, T sampled ``generate`` calls (batch one, stopping after the longest
label) plus one forward pass; (b) ``molal_ray.engines.hf_scoring``: batches of texts, one prompt
pass and one packed label pass, votes sampled from the trie's distributions; (c) what each
predictor actor of ``molal-ray predict`` runs: ``FinetunedClassifier.predict_proba`` of an exported
classifier, here a random BERT of DistilBERT's shape (6 layers, 768 wide, 12 heads; the ``tiny``
shape: 2 x 32) with a word-level tokenizer, on TREC-length texts (about 10 words).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    # Llama-3.1-8B: 32 layers, hidden 4096, 32 heads (8 KV heads) of 128, MLP 14336, vocab 128256.
    "8b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
    ),
    "tiny": dict(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=256,
        vocab_size=1024,
    ),
}


def build(shape: str, device: str, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        **SHAPES[shape],
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    return model


def reference(model, prompts: list[list[int]], T: int, max_new: int, device: str) -> float:
    import torch

    t0 = time.perf_counter()
    for p in prompts:
        ids = torch.tensor([p], device=device)
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            for _ in range(T):
                model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=0.7,
                    top_p=0.9,
                    max_new_tokens=max_new,
                    min_new_tokens=max_new,
                    pad_token_id=0,
                )
            model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
    _sync(device)
    return len(prompts) / (time.perf_counter() - t0)


def engine(model, trie, prompts: list[list[int]], batch: int, T: int, device: str) -> float:
    from molal_ray.engines.hf_scoring import annotate_steps, step_logprobs

    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        steps = step_logprobs(model, trie, chunk, 0, device)
        probs, votes = annotate_steps(
            trie, steps, T, 0.7, 0.9, [np.random.default_rng([0, i + b]) for b in range(len(chunk))]
        )
        assert np.allclose(probs.sum(1), 1) and np.allclose(votes.sum(1), 1)
    _sync(device)
    return len(prompts) / (time.perf_counter() - t0)


def classifier_rate(shape: str, device: str, n: int, batch: int) -> float:
    """(c): texts/s of ``FinetunedClassifier.predict_proba`` (the predictor's inner loop)."""
    import tempfile

    from molal_ray.products.model import FinetunedClassifier
    from molal_ray.testing.tiny_models import build_tiny_bert

    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(2000)]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(6, 15)))) for _ in range(n)]
    size = {"hidden_size": 768, "layers": 6, "heads": 12} if shape == "8b" else {}
    with tempfile.TemporaryDirectory(prefix="gpu-predict-") as tmp:
        folder = build_tiny_bert(f"{tmp}/clf", texts[:500] + [" ".join(words)], num_labels=6, **size)
        clf = FinetunedClassifier(str(folder), device=device, max_length=64)
        clf.predict_proba(texts[:batch], batch_size=batch)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        clf.predict_proba(texts, batch_size=batch)
        _sync(device)
        return n / (time.perf_counter() - t0)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n-ref", type=int, default=8, help="texts through the reference loop")
    ap.add_argument("--n", type=int, default=512, help="texts through the engine's scoring")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=250, help="mean prompt tokens (+-20%%)")
    ap.add_argument("--predict-n", type=int, default=8192, help="texts through the classifier (c)")
    ap.add_argument("--predict-batch", type=int, default=128)
    args = ap.parse_args(argv)
    import torch

    from molal_ray.engines.label_trie import LabelTrie

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    model = build(args.shape, args.device, dtype)
    built_s = time.perf_counter() - t0
    vocab = SHAPES[args.shape]["vocab_size"]
    rng = np.random.default_rng(0)
    seqs = [tuple(int(t) for t in rng.integers(10, vocab, size=n)) for n in (3, 1, 1, 1, 1, 1, 3, 1, 1, 2, 1, 1)]
    trie = LabelTrie(seqs, end_token=2, seq_labels=[0, 1, 2, 3, 4, 5] * 2)
    lens = rng.integers(int(args.prompt_len * 0.8), int(args.prompt_len * 1.2) + 1, size=args.n)
    prompts = [[1] + rng.integers(10, vocab, size=int(n) - 1).tolist() for n in lens]
    engine(model, trie, prompts[: min(args.batch, 8)], args.batch, 10, args.device)  # warm-up
    a = reference(model, prompts[: args.n_ref], 10, trie.max_len + 1, args.device)
    b = engine(model, trie, prompts, args.batch, 10, args.device)
    c = classifier_rate(args.shape, args.device, args.predict_n, args.predict_batch)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
    print(
        f"device {name}; Llama shape {args.shape} ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B "
        f"parameters, {str(dtype).removeprefix('torch.')}, built in {built_s:.0f} s); prompts {lens.mean():.0f} "
        f"tokens; T=10; 12 label sequences; peak GPU memory {peak:.1f} GiB"
    )
    print(f"{'method':44} {'texts/s':>10} {'s/text':>10} {'vs (a)':>8}")
    print(f"{'(a) reference loop (T generate + 1 forward)':44} {a:10.2f} {1 / a:10.4f} {1.0:8.1f}")
    print(f"{'(b) hf engine scoring, batch ' + str(args.batch):44} {b:10.2f} {1 / b:10.4f} {b / a:8.1f}")
    print(f"{'(c) predict: exported classifier, batch ' + str(args.predict_batch):44} {c:10.2f} {1 / c:10.4f} {'':>8}")
    return {"reference_texts_per_s": a, "engine_texts_per_s": b, "speedup": b / a, "predict_texts_per_s": c}


if __name__ == "__main__":
    main()
