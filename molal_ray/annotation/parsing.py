"""Parse a free-text answer into one label of the label set, or none.

Rules: case, quotes, punctuation and whitespace are normalised; the answer is valid when it
names exactly one distinct label (``"entity"``, ``Entity.``, ``numeric (year)``, ``human, human``);
an answer naming several labels (``human, entity``) or none (``date``) is an invalid vote.
Labels are matched as whole word sequences, so ``science/technology`` matches the label
``Science/Technology`` and ``human`` does not match inside ``humanity``; when one label's words
are part of another's (``technology`` and ``science technology``) the longer match wins.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

from molal_ray.exceptions import ConfigError

_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def normalise(text: str) -> str:
    """Lower-case, NFKC, every run of non-word characters (quotes, punctuation) to one space."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("_", " ")
    return _NON_WORD.sub(" ", text).strip()


class AnswerParser:
    """Maps answers to label indices (``None`` for an invalid vote)."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        forms = [normalise(label) for label in self.labels]
        if any(not f for f in forms):
            raise ConfigError(f"labels: got {self.labels!r}; expected each to contain a letter or digit")
        if len(set(forms)) != len(forms):
            raise ConfigError(f"labels: got {self.labels!r}; expected labels distinct after normalisation")
        self._exact = {f: i for i, f in enumerate(forms)}
        # Longest label first, so a label contained in another is matched only on its own.
        order = sorted(range(len(forms)), key=lambda i: -len(forms[i]))
        self._pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(forms[i]) for i in order) + r")(?!\w)")
        self.parse = lru_cache(maxsize=65536)(self._parse)  # answers repeat a lot

    def _parse(self, answer: str | None) -> int | None:
        if answer is None:
            return None
        norm = normalise(answer)
        if not norm:
            return None
        hit = self._exact.get(norm)
        if hit is not None:
            return hit
        found = {self._exact[m] for m in self._pattern.findall(norm)}
        return found.pop() if len(found) == 1 else None

    def parse_many(self, answers: Sequence[str | None]) -> list[int | None]:
        return [self.parse(a) for a in answers]
