"""Label token sequences as a trie: exact label probabilities and constrained sampling.

Definitions used by every live engine:

- The probability of a label is the model's probability of the label's whole token sequence right
  after the prompt, ``P(t_1 .. t_n | prompt) = prod_j P(t_j | prompt, t_<j)``, summed over the
  label's spellings (``entity``, ``Entity``, `` Entity``: :mod:`molal_ray.engines.label_tokens`)
  and normalised over the label set. Labels that share a first token are told apart by their
  later tokens; a spelling that is a token prefix of another gets the mass of its own sequence
  (which includes the longer one's continuations: the definition has no end-of-answer token).
- A sampled answer walks the trie from the root: at each node, the next token is drawn among the
  tokens that continue some label (plus end-of-answer where a label ends and a longer one goes
  on), from the model's distribution there restricted to them, with temperature and top-p applied
  after the restriction, as choice-constrained decoding does. Every answer is a label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from molal_ray.exceptions import AnnotatorError


@dataclass
class Node:
    prefix: tuple[int, ...]
    children: dict[int, Node]
    label: int | None  # label index that ends here


class LabelTrie:
    """The token sequences of every spelling of every label; ``seq_labels[i]`` is the label of
    ``seqs[i]`` (default: one sequence per label, in label order)."""

    def __init__(
        self, label_tokens: Sequence[Sequence[int]], end_token: int, seq_labels: Sequence[int] | None = None
    ) -> None:
        seqs = [tuple(int(t) for t in s) for s in label_tokens]
        if any(len(s) == 0 for s in seqs):
            raise AnnotatorError("a label tokenises to no token")
        if len(set(seqs)) != len(seqs):
            raise AnnotatorError(f"two labels tokenise to the same tokens: {seqs}")
        self.seq_labels = np.asarray(range(len(seqs)) if seq_labels is None else seq_labels, dtype=np.int64)
        if len(self.seq_labels) != len(seqs):
            raise AnnotatorError(f"{len(seqs)} token sequences but {len(self.seq_labels)} labels for them")
        self.num_labels = int(self.seq_labels.max()) + 1
        if set(self.seq_labels.tolist()) != set(range(self.num_labels)):
            raise AnnotatorError("every label needs at least one token sequence")
        self.seqs = seqs
        self.end_token = int(end_token)
        self.max_len = max(len(s) for s in seqs)
        self.root = Node((), {}, None)
        for i, s in enumerate(seqs):
            node = self.root
            for t in s:
                node = node.children.setdefault(t, Node(node.prefix + (t,), {}, None))
            node.label = int(self.seq_labels[i])
        # Token ids whose log-probability is needed at some node (the label tokens and the end).
        self.vocab = sorted({t for s in seqs for t in s} | {self.end_token})
        self.vocab_index = {t: i for i, t in enumerate(self.vocab)}

    def nodes(self) -> list[Node]:
        out, stack = [], [self.root]
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(n.children.values())
        return out

    def sequence_logprobs(self, step_logprobs: np.ndarray) -> np.ndarray:
        """(C,) log P(label sequence) from ``step_logprobs[c, j, v]``: log-prob of ``self.vocab[v]``
        at step j along label c's own path (j = 0 is right after the prompt)."""
        out = np.zeros(len(self.seqs))
        for c, s in enumerate(self.seqs):
            out[c] = sum(step_logprobs[c, j, self.vocab_index[t]] for j, t in enumerate(s))
        return out

    def label_logprobs(self, seq_logprobs: np.ndarray) -> np.ndarray:
        """(num_labels,) log of each label's mass: its spellings' sequence probabilities summed."""
        out = np.full(self.num_labels, -np.inf)
        np.logaddexp.at(out, self.seq_labels, np.asarray(seq_logprobs, dtype=np.float64))
        return out

    def label_probs(self, seq_logprobs: np.ndarray) -> np.ndarray:
        """The label distribution: :meth:`label_logprobs` normalised over the labels."""
        lp = self.label_logprobs(seq_logprobs)
        p = np.exp(lp - lp.max())
        return p / p.sum()

    def node_logprobs(self, step_logprobs: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
        """The next-token log-probs (over ``self.vocab``) at each internal node, read off the
        path of any label that passes through it (identical prefixes give identical rows)."""
        table: dict[tuple[int, ...], np.ndarray] = {}
        for c, s in enumerate(self.seqs):
            for j in range(len(s) + 1):
                if j < step_logprobs.shape[1]:
                    table.setdefault(s[:j], step_logprobs[c, j])
        return table

    def sample(
        self,
        node_lp: dict[tuple[int, ...], np.ndarray],
        n: int,
        temperature: float,
        top_p: float,
        rng: np.random.Generator,
    ) -> list[int]:
        """``n`` constrained answers (label indices)."""
        return [self._walk(node_lp, temperature, top_p, rng) for _ in range(n)]

    def _walk(
        self, node_lp: dict[tuple[int, ...], np.ndarray], temperature: float, top_p: float, rng: np.random.Generator
    ) -> int:
        node = self.root
        while True:
            options = list(node.children)
            if node.label is not None:
                if not options:
                    return node.label
                options.append(self.end_token)
            if len(options) == 1:
                choice = options[0]
            else:
                lp = node_lp[node.prefix][[self.vocab_index[t] for t in options]]
                choice = options[_draw(lp, temperature, top_p, rng)]
            if choice == self.end_token and node.label is not None and choice not in node.children:
                return node.label
            node = node.children[choice]


def _draw(logprobs: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Index drawn from restricted log-probs with temperature, then nucleus (top-p) truncation."""
    if temperature <= 0:
        return int(np.argmax(logprobs))
    z = logprobs / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(p[order])
    keep = order[: int(np.searchsorted(cum, top_p - 1e-12) + 1)]
    q = p[keep] / p[keep].sum()
    return int(keep[rng.choice(len(keep), p=q)])


def text_rng(seed: int | None, sample_id: str) -> np.random.Generator:
    """A generator per text: the same text gets the same votes whatever batch it is in."""
    if seed is None:
        return np.random.default_rng()
    import zlib

    return np.random.default_rng([seed, zlib.crc32(sample_id.encode("utf-8", "surrogatepass"))])
