from __future__ import annotations

import pytest

from molal_ray.annotation import AnswerParser, votes_from_answers
from tests.conftest import TREC_LABELS

P = AnswerParser(TREC_LABELS)


@pytest.mark.parametrize(
    "answer, label",
    [
        ("entity", "entity"),
        ("Entity", "entity"),
        ('"entity"', "entity"),
        ("  ENTITY.\n", "entity"),
        ("'numeric'", "numeric"),
        ("numeric (year)", "numeric"),
        ("human, human", "human"),
        ("Label: Location", "location"),
        ("**description**", "description"),
    ],
)
def test_valid_answers(answer, label):
    assert P.parse(answer) == TREC_LABELS.index(label)


@pytest.mark.parametrize(
    "answer",
    [
        "human, entity",
        "location, human (implied)",
        "date",
        "",
        "   ",
        None,
        "humanity",
        "entities",
        '""',
    ],
)
def test_invalid_answers(answer):
    assert P.parse(answer) is None


def test_multi_word_and_nested_labels():
    p = AnswerParser(["Science/Technology", "Technology", "World"])
    assert p.parse("science/technology") == 0
    assert p.parse("Science Technology") == 0
    assert p.parse("technology") == 1
    assert p.parse("world; technology") is None


def test_labels_must_differ_after_normalisation():
    with pytest.raises(ValueError, match="distinct"):
        AnswerParser(["Sci-Tech", "sci tech"])


def test_votes_count_invalid_and_sum_to_valid_share():
    parsed = P.parse_many(["entity", "entity", "human, entity", "human", "date"])
    votes, n_invalid = votes_from_answers(parsed, 6)
    assert n_invalid == 2
    assert votes[1] == pytest.approx(0.4) and votes[3] == pytest.approx(0.2)
    assert votes.sum() == pytest.approx(1 - 2 / 5)
