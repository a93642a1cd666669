"""The transformers engine's scoring pass, pure torch: every label spelling's step log-probs in
two forward passes per batch (no config, no Ray; the GPU check runs it on its own)."""

from __future__ import annotations

from typing import Any

import numpy as np

from molal_ray.engines.label_trie import LabelTrie


def step_logprobs(
    model: Any, trie: LabelTrie, prompt_ids: list[list[int]], pad_token_id: int, device: Any
) -> np.ndarray:
    """(B, C, L+1, |trie vocab|): log-probs of the trie's tokens at each step of each spelling's path.

    Two forward passes per batch: the left-padded prompts (filling the KV cache; logits of the
    last position only), then every spelling's tokens packed into one short sequence per text,
    with a block mask so that each spelling sees the prompt and its own earlier tokens only (no
    copy of the cache per spelling).
    """
    import torch

    B, C, L = len(prompt_ids), len(trie.seqs), trie.max_len
    P = max(len(p) for p in prompt_ids)
    ids = torch.full((B, P), pad_token_id, dtype=torch.long)
    mask = torch.zeros((B, P), dtype=torch.long)
    for b, p in enumerate(prompt_ids):  # left padding: every prompt ends at column P-1
        ids[b, P - len(p) :] = torch.tensor(p)
        mask[b, P - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    vocab = torch.tensor(trie.vocab, device=device)
    packed = [t for seq in trie.seqs for t in seq]
    starts = np.cumsum([0] + [len(seq) for seq in trie.seqs])
    n = len(packed)
    own = torch.zeros((n, n), dtype=torch.bool)  # token i sees token j of the same spelling, j <= i
    offset = []
    for c, seq in enumerate(trie.seqs):
        a, z = starts[c], starts[c + 1]
        own[a:z, a:z] = torch.tril(torch.ones((z - a, z - a), dtype=torch.bool))
        offset += list(range(len(seq)))
    with torch.inference_mode():
        first = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        lp0 = torch.log_softmax(first.logits[:, -1, :].float(), -1)[:, vocab]  # (B, V')
        full = torch.cat(
            [mask.bool()[:, None, None, :].expand(B, 1, n, P), own.to(device)[None, None].expand(B, 1, n, n)], dim=3
        )
        cont_pos = mask.sum(1, keepdim=True) + torch.tensor(offset, device=device)[None, :]
        cont = model(
            input_ids=torch.tensor(packed, device=device)[None].expand(B, n),
            attention_mask=full,
            position_ids=cont_pos,
            past_key_values=first.past_key_values,
            use_cache=False,
        )
        lpc = torch.log_softmax(cont.logits.float(), -1)[:, :, vocab].cpu().numpy()  # (B, n, V')
    lp0n = lp0.cpu().numpy()
    steps = np.zeros((B, C, L + 1, len(trie.vocab)))
    for c, seq in enumerate(trie.seqs):
        steps[:, c, 0] = lp0n
        steps[:, c, 1 : len(seq) + 1] = lpc[:, starts[c] : starts[c + 1]]
    return steps


def annotate_steps(
    trie: LabelTrie,
    steps: np.ndarray,
    n_samples: int,
    temperature: float,
    top_p: float,
    rngs: list[np.random.Generator],
) -> tuple[np.ndarray, np.ndarray]:
    """Per text of a batch: the label distribution and the T constrained votes' shares."""
    probs = np.stack([trie.label_probs(trie.sequence_logprobs(s)) for s in steps])
    votes = np.zeros_like(probs)
    for b, s in enumerate(steps):
        answers = trie.sample(trie.node_logprobs(s), n_samples, temperature, top_p, rngs[b])
        votes[b] = np.bincount(answers, minlength=trie.num_labels) / n_samples
    return probs, votes
