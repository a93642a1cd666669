"""The token sequences a model writes for each label, found with its own tokenizer.

A label set is written in configs one way (``entity``); a model answers another (``Entity``
after a chat template's assistant header, `` Entity`` after a prompt ending in ``Label:``). The
label probabilities must score what the model actually writes, so each label gets several
spellings (``task.label_case``), each with the leading space the prompt calls for
(``task.label_space``), tokenised *in context*: the tokens of ``prompt + spelling`` after the
prompt's own tokens, which is what a tokenizer that merges across the boundary (SentencePiece's
``▁``) would produce. A label's probability is the sum over its spellings
(:meth:`LabelTrie.label_logprobs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from molal_ray.config import TaskConfig

_CASES = {
    "as_given": lambda s: s,
    "lower": str.lower,
    "capitalized": lambda s: s[:1].upper() + s[1:],
    "title": str.title,
    "upper": str.upper,
}


@dataclass(frozen=True)
class LabelSpellings:
    """Parallel lists: the surface text, the token ids and the label index of each spelling."""

    texts: list[str]
    tokens: list[tuple[int, ...]]
    labels: list[int]


def spellings(task: TaskConfig, prompt_text: str) -> list[tuple[str, int]]:
    """(surface text, label index) for every spelling, deduplicated, in label order."""
    if task.label_space == "auto":
        # After whitespace (a chat header's newline, "Output:\n") a model starts the word; after
        # anything else ("Label:") it writes the separating space itself.
        spaces = [""] if (not prompt_text or prompt_text[-1].isspace()) else [" "]
    else:
        spaces = {"none": [""], "leading": [" "], "both": ["", " "]}[task.label_space]
    out: list[tuple[str, int]] = []
    seen: set[str] = set()
    for i, label in enumerate(task.labels):
        for case in task.label_case:
            for sp in spaces:
                text = sp + _CASES[case](label)
                if text not in seen:
                    seen.add(text)
                    out.append((text, i))
    return out


def label_spellings(tokenizer: Any, task: TaskConfig, prompt_text: str) -> LabelSpellings:
    """Every spelling's token ids right after ``prompt_text`` (a rendered prompt, as the model sees it)."""
    forms = spellings(task, prompt_text)
    ctx = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    texts, tokens, labels = [], [], []
    seen: set[tuple[int, ...]] = set()
    for text, label in forms:
        full = list(tokenizer(prompt_text + text, add_special_tokens=False)["input_ids"])
        if full[: len(ctx)] == ctx and len(full) > len(ctx):
            ids = tuple(full[len(ctx) :])
        else:  # the spelling merged with the prompt's last token: its tokens on their own
            ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
        if ids and ids not in seen:
            seen.add(ids)
            texts.append(text)
            tokens.append(ids)
            labels.append(label)
    return LabelSpellings(texts, tokens, labels)


def build_label_trie(tokenizer: Any, task: TaskConfig, prompt_text: str, end_token: int) -> tuple[Any, LabelSpellings]:
    """The label trie over every spelling, and the spellings (for constrained choices)."""
    from molal_ray.engines.label_trie import LabelTrie

    sp = label_spellings(tokenizer, task, prompt_text)
    return LabelTrie(sp.tokens, end_token, sp.labels), sp


def first_token_logprobs(trie: Any, root_row: np.ndarray) -> np.ndarray:
    """Per spelling, the log-probability of its first token only (``label_probs: first_token``).

    Each distinct first token counts once per label that starts with it; labels sharing one
    split its mass equally (spellings of one label sharing it count it once).
    """
    firsts = [seq[0] for seq in trie.seqs]
    owners: dict[int, set[int]] = {}
    for t, lab in zip(firsts, trie.seq_labels.tolist()):
        owners.setdefault(t, set()).add(lab)
    out = np.full(len(firsts), -np.inf)
    used: set[tuple[int, int]] = set()
    for i, (t, lab) in enumerate(zip(firsts, trie.seq_labels.tolist())):
        if (t, lab) not in used:
            used.add((t, lab))
            out[i] = root_row[trie.vocab_index[t]] - np.log(len(owners[t]))
    return out
