"""Read labels out of LLM replies, strictly.

A label comes only from the place the prompt asks for it: the whole reply in the short format,
the *last* tagged span (``<label>..</label>`` / ``<best>..</best>``) in the long format. No
substring search: a reply that echoes the instruction ("<label>[FOO/BAR]</label>"), lists both
options or names an option in passing has no label, and the caller re-asks once and otherwise
records "unknown" (``None``), never a silent 0.
"""

from __future__ import annotations

import math
import re

from kudos.feedback.prompts import (
    HELPFUL,
    NOT_HELPFUL,
    PAIR_FIRST,
    PAIR_NONE,
    PAIR_SECOND,
    PromptTemplate,
)

# [^<]* keeps a span from swallowing a nested or unclosed tag: "<label><label>FOO</label>" reads FOO.
_SPANS = {
    "classify": re.compile(r"<label>([^<]*)</label>", re.IGNORECASE),
    "rank": re.compile(r"<best>([^<]*)</best>", re.IGNORECASE),
}
_LONG_VALUES = {
    "classify": {"foo": HELPFUL, "bar": NOT_HELPFUL},
    "rank": {"1": PAIR_FIRST, "2": PAIR_SECOND, "none": PAIR_NONE},
}
_SHORT_VALUES = {
    "classify": {"1": HELPFUL, "0": NOT_HELPFUL},
    "rank": {"1": PAIR_FIRST, "2": PAIR_SECOND, "0": PAIR_NONE},
}
# Probabilities are clipped away from 0 and 1 so hard labels (p in {0, 1}) still compare.
_EPS = 1e-6


def parse_label(template: PromptTemplate, text: str) -> int | None:
    """The label in ``text`` (a reply to ``template``), or None when it has no readable label.

    Short format: the stripped reply must be exactly one answer token (a trailing "." is allowed).
    Long format: the content of the last tagged span, stripped of spaces and square brackets, must
    be exactly one option (case-insensitive).
    """
    if template.format == "short":
        return _SHORT_VALUES[template.kind].get(text.strip().rstrip(".").strip())
    spans = _SPANS[template.kind].findall(text)
    if not spans:
        return None
    return _LONG_VALUES[template.kind].get(spans[-1].strip().strip("[]").strip().lower())


def _score(label: int | None, soft: float | None) -> float | None:
    """P(helpful) of one caption: its soft label, else its hard label, else unknown."""
    if soft is not None:
        return min(max(soft, _EPS), 1.0 - _EPS)
    if label is not None:
        return min(max(float(label), _EPS), 1.0 - _EPS)
    return None


def derive_preference(
    first: tuple[int | None, float | None],
    second: tuple[int | None, float | None],
    tie_margin: float,
) -> tuple[int | None, float | None]:
    """A pair label from two pointwise (label, soft label) results.

    Returns (label, P(first better)) with P = sigmoid(logit p_first - logit p_second), the
    Bradley-Terry preference of two independent scores; label is PAIR_FIRST/PAIR_SECOND, or
    PAIR_NONE within ``tie_margin`` of 0.5. (None, None) when either caption is unknown.
    """
    p_first, p_second = _score(*first), _score(*second)
    if p_first is None or p_second is None:
        return None, None
    logit = math.log(p_first / (1.0 - p_first)) - math.log(p_second / (1.0 - p_second))
    soft = 1.0 / (1.0 + math.exp(-logit))
    if soft > 0.5 + tie_margin:
        return PAIR_FIRST, soft
    if soft < 0.5 - tie_margin:
        return PAIR_SECOND, soft
    return PAIR_NONE, soft
