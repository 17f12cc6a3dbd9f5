"""Reply parsing: labels only from their tagged span; echoes, both options and garbage are unknown."""

from __future__ import annotations

import pytest

from kudos.feedback.parse import derive_preference, parse_label
from kudos.feedback.prompts import PAIR_FIRST, PAIR_NONE, PAIR_SECOND, PromptTemplate

CLS_SHORT = PromptTemplate("classify", "score", "short")
CLS_LONG = PromptTemplate("classify", "score", "long")
RANK_SHORT = PromptTemplate("rank", "score", "short")
RANK_LONG = PromptTemplate("rank", "score", "long")


@pytest.mark.parametrize(
    "text,label",
    [("1", 1), ("0", 0), (" 1\n", 1), ("0.", 0), ("", None), ("2", None), ("10", None), ("yes", None),
     ("1 or 0", None), ("FOO", None), ("<label>FOO</label>", None)],
)
def test_short_classification(text: str, label: int | None) -> None:
    assert parse_label(CLS_SHORT, text) == label


@pytest.mark.parametrize(
    "text,label",
    [("1", PAIR_FIRST), ("2", PAIR_SECOND), ("0", PAIR_NONE), ("3", None), ("none", None), ("", None)],
)
def test_short_ranking(text: str, label: int | None) -> None:
    assert parse_label(RANK_SHORT, text) == label


LONG_CASES = [
    # well-formed, as the prompt asks
    ("<knowledge>k</knowledge>\n<analysis>a kill</analysis>\n<label>FOO</label>", 1),
    ("<label>BAR</label>", 0),
    ("<label> foo </label>", 1),
    ("<label>[BAR]</label>", 0),
    ("<LABEL>Foo</LABEL>", 1),
    # reasoning that mentions labels, with the answer later: the last span decides
    ("FOO would mean helpful. It is not. <label>BAR</label>", 0),
    ("first <label>FOO</label> ... on reflection <label>BAR</label>", 0),
    ("<label><label>FOO</label>", 1),
    # echoes of the instruction, both options, or a label outside its span: unknown
    ("<label>[FOO/BAR]</label>", None),
    ("<knowledge>k</knowledge><analysis>a</analysis><label>[FOO/BAR]</label>", None),
    ("<label>FOO/BAR</label>", None),
    ("<label>FOO or BAR</label>", None),
    ("[FOO/BAR]", None),
    ("The label is FOO.", None),
    ("FOO BAR", None),
    ("<label>FOO", None),
    ("<label></label>", None),
    ("", None),
    ("\x00\xff garbage <<<>>>", None),
]


@pytest.mark.parametrize("text,label", LONG_CASES)
def test_long_classification(text: str, label: int | None) -> None:
    assert parse_label(CLS_LONG, text) == label


@pytest.mark.parametrize(
    "text,label",
    [
        ("<analysis>message 2 is a kill</analysis><best>2</best>", PAIR_SECOND),
        ("<best>1</best>", PAIR_FIRST),
        ("<best>None</best>", PAIR_NONE),
        ("<best>[1/2/none]</best>", None),
        ("<best>1 or 2</best>", None),
        ("best is 1", None),
        ('("best_description": 1)', None),
        ("<label>FOO</label>", None),
    ],
)
def test_long_ranking(text: str, label: int | None) -> None:
    assert parse_label(RANK_LONG, text) == label


def test_derived_preference() -> None:
    label, soft = derive_preference((1, 0.9), (0, 0.1), tie_margin=0.1)
    assert label == PAIR_FIRST and soft == pytest.approx(0.9 * 0.9 / (0.9 * 0.9 + 0.1 * 0.1))
    label, soft = derive_preference((0, 0.2), (1, 0.7), tie_margin=0.1)
    assert label == PAIR_SECOND and soft < 0.5
    assert derive_preference((1, 0.55), (1, 0.5), tie_margin=0.1)[0] == PAIR_NONE
    # Without soft labels the hard labels compare; equal ones tie.
    assert derive_preference((1, None), (0, None), 0.1)[0] == PAIR_FIRST
    assert derive_preference((1, None), (1, None), 0.1) == (PAIR_NONE, pytest.approx(0.5))
    # An unknown caption gives an unknown pair, never a guess.
    assert derive_preference((None, None), (1, 0.9), 0.1) == (None, None)
