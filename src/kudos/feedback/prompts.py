"""Prompts that ask an LLM whether a caption shows progress (classification) or which of two
captions shows more (pairwise ranking).

Two formats:

- ``short``: the model answers with one token right after the assistant-turn header ("1"/"0" for
  classification; "1"/"2"/"0" for pairs), so an embedded model scores a caption with one forward
  pass and the log-probabilities of the two answer tokens give a soft label.
- ``long``: ONI's reasoning format; the model writes what it knows and an analysis, then the label
  in a tagged span (``<label>FOO</label>`` / ``<best>1</best>``) that parse.py reads.

Everything before the caption is identical for every caption of a template (the caption comes
last), so a backend can keep the shared prefix in its KV cache. ``version_hash`` identifies the
exact question asked; it is part of every label-store key, so changing a word re-asks everything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Literal

from kudos.errors import ConfigError
from kudos.feedback.backend import LLMRequest

Kind = Literal["classify", "rank"]
Format = Literal["short", "long"]

# Label values. Classification: 1 helpful, 0 not. Pairs: the number of the better caption, 0 for
# neither (a tie), as the prompts ask for.
HELPFUL, NOT_HELPFUL = 1, 0
PAIR_NONE, PAIR_FIRST, PAIR_SECOND = 0, 1, 2

# One line of intent per preset; "none" gives the model no goal beyond the game itself.
GOALS: dict[str, str] = {
    "score": (
        "My goal is a high game score: killing monsters, reaching new experience levels, picking up "
        "gold and useful items, and going deeper into the dungeon all count as progress."
    ),
    "gold": (
        "My goal is to collect as much gold as possible. Only events that bring me gold or lead me "
        "to it count as progress; fighting monsters or going deeper do not."
    ),
    "stairs": (
        "My goal is to go as deep into the dungeon as possible. Finding stairs down and descending "
        "count as progress; fighting monsters and collecting gold do not."
    ),
    "combat": (
        "My goal is to fight: attacking and killing monsters and gaining experience count as "
        "progress; collecting gold or going deeper do not."
    ),
    "none": "Judge progress in the game in general.",
}

# Worked examples per preset: (caption, label under that goal). "none" has no examples, so it
# carries no hint of what progress means.
_EXAMPLES: dict[str, tuple[tuple[str, int], ...]] = {
    "score": (
        ("You kill the newt!", 1),
        ("$ - 14 gold pieces.", 1),
        ("There is a staircase down here.", 1),
        ("The door is locked.", 0),
        ("It's solid stone.", 0),
    ),
    "gold": (
        ("You kill the newt!", 0),
        ("$ - 14 gold pieces.", 1),
        ("You hear someone counting money.", 1),
        ("There is a staircase down here.", 0),
        ("It's solid stone.", 0),
    ),
    "stairs": (
        ("You kill the newt!", 0),
        ("$ - 14 gold pieces.", 0),
        ("There is a staircase down here.", 1),
        ("The door is locked.", 0),
        ("It's solid stone.", 0),
    ),
    "combat": (
        ("You kill the newt!", 1),
        ("You hit the jackal.", 1),
        ("$ - 14 gold pieces.", 0),
        ("There is a staircase down here.", 0),
        ("It's solid stone.", 0),
    ),
    "none": (),
}

# Opens every prompt: backends wrap the prompt as one user message in the model's chat template,
# so the role the model should take is stated here rather than in a system turn.
ROLE = "You are an expert NetHack player who judges honestly whether game events show progress."
# Small models miss that inventory lines are pickups (embedded model, short score prompt: 42/51
# hand labels agreed without this line, 44/51 with it).
PICKUP_HINT = 'In NetHack, a message like "$ - 12 gold pieces." or "f - a dagger." means I picked that item up.'

_LONG_MAX_TOKENS = 512  # room for ONI-style knowledge + analysis + label
_REASK_LONG_MAX_TOKENS = 16  # the re-ask wants the tag line only


def _quote(caption: str) -> str:
    return json.dumps(caption, ensure_ascii=False)


def _classify_text(goal: str, fmt: Format) -> str:
    """The user message up to (not including) the caption."""
    examples = _EXAMPLES[goal]
    intro = (
        f"{ROLE}\nI am playing NetHack and will show you one message the game printed.\n{GOALS[goal]}\n"
        f"{PICKUP_HINT}\n"
    )
    if fmt == "short":
        lines = [
            intro,
            "Is the event in the message clearly helpful for making progress towards my goal? "
            "Being informative is not enough: it must be good for me. Neutral, lukewarm, "
            "unhelpful or harmful events are not helpful.",
            "Answer 1 for helpful or 0 for not helpful: the single digit and nothing else.",
        ]
        if examples:
            lines += ["", "Examples:"] + [f"{_quote(c)} -> {y}" for c, y in examples]
        return "\n".join(lines) + "\n\nMessage: "
    lines = [
        intro,
        "First, say briefly what you know about NetHack that matters for this goal. Then analyse "
        "what the message means for me. Finally, label the message FOO if the event is clearly "
        "helpful for making progress towards my goal, or BAR if it is neutral, lukewarm, "
        "unhelpful or harmful. Being informative is not enough for FOO.",
    ]
    if examples:
        lines += ["", "Examples:"] + [f"{_quote(c)} is {'FOO' if y else 'BAR'}." for c, y in examples]
    lines += [
        "",
        "Write your reply in exactly this form, with one of FOO or BAR in the last line:",
        "<knowledge>what you know</knowledge>",
        "<analysis>one or two sentences about the message</analysis>",
        "<label>[FOO/BAR]</label>",
    ]
    return "\n".join(lines) + "\n\nMessage: "


def _rank_text(goal: str, fmt: Format) -> str:
    """The user message up to (not including) the first caption."""
    intro = (
        f"{ROLE}\nI am playing NetHack and will show you two messages the game printed, message 1 and "
        f"message 2.\n{GOALS[goal]}\n{PICKUP_HINT}\n"
    )
    if fmt == "short":
        return (
            f"{intro}\nWhich message shows more progress towards my goal? Answer 1 if message 1 "
            "does, 2 if message 2 does, or 0 if neither shows more than the other: the single "
            "digit and nothing else.\n\nMessage 1: "
        )
    return (
        f"{intro}\nFirst, say briefly what you know about NetHack that matters for this goal. "
        "Then analyse what each message means for me, using only what the messages say (either "
        "may be empty), and compare them. Finally, say which message is more likely to show "
        "progress towards my goal: 1, 2, or none if neither is.\n\n"
        "Write your reply in exactly this form, with one of 1, 2 or none in the last line:\n"
        "<knowledge>what you know</knowledge>\n<analysis>your comparison</analysis>\n"
        "<best>[1/2/none]</best>\n\nMessage 1: "
    )


_REASK = {
    ("classify", "short"): "Answer with the single digit 1 or 0.",
    ("classify", "long"): (
        "Your reply did not end with the label line. Reply with that line only, "
        "<label>[FOO/BAR]</label>, choosing one of FOO or BAR."
    ),
    ("rank", "short"): "Answer with the single digit 1, 2 or 0.",
    ("rank", "long"): (
        "Your reply did not end with the verdict line. Reply with that line only, "
        "<best>[1/2/none]</best>, choosing one of 1, 2 or none."
    ),
}


@dataclass(frozen=True)
class PromptTemplate:
    """One question asked of the LLM, rendered per caption (or ordered pair of captions).

    kind: "classify" (is this caption helpful for progress?) or "rank" (which of two shows more?).
    goal: a key of ``GOALS``. format: "short" (one answer token) or "long" (reasoning + tag).
    The rendered prompt is the text of one user message; the backend applies the chat template.
    """

    kind: Kind = "classify"
    goal: str = "score"
    format: Format = "short"

    def __post_init__(self) -> None:
        if self.kind not in ("classify", "rank"):
            raise ConfigError(f"unknown prompt kind {self.kind!r}; use 'classify' or 'rank'")
        if self.goal not in GOALS:
            raise ConfigError(f"unknown goal preset {self.goal!r}; use one of {', '.join(GOALS)}")
        if self.format not in ("short", "long"):
            raise ConfigError(f"unknown prompt format {self.format!r}; use 'short' or 'long'")

    @cached_property
    def prefix(self) -> str:
        """Everything before the (first) caption: identical for all captions of this template."""
        if self.kind == "classify":
            return _classify_text(self.goal, self.format)
        return _rank_text(self.goal, self.format)

    @property
    def max_tokens(self) -> int:
        return 1 if self.format == "short" else _LONG_MAX_TOKENS

    @property
    def answer_tokens(self) -> tuple[str, str] | None:
        """(negative, positive) answer tokens whose probabilities give the soft label.

        Classification: P("1") against P("0"). Pairs: P("1") against P("2"), i.e. P(first better).
        Only the short format answers at the first generated token.
        """
        if self.format == "long":
            return None
        return ("0", "1") if self.kind == "classify" else ("2", "1")

    def render(self, item: str | tuple[str, str]) -> str:
        """The prompt for a caption (classification) or an ordered pair (ranking), caption(s) last."""
        if isinstance(item, str) != (self.kind == "classify"):
            raise ValueError(f"a {self.kind} template renders {'a caption' if self.kind == 'classify' else 'a pair'}")
        if isinstance(item, str):
            return self.prefix + _quote(item)
        return f"{self.prefix}{_quote(item[0])}\nMessage 2: {_quote(item[1])}"

    def request(self, item: str | tuple[str, str]) -> LLMRequest:
        return LLMRequest(prompt=self.render(item), max_tokens=self.max_tokens, answer_tokens=self.answer_tokens)

    def reask(self, item: str | tuple[str, str], reply: str) -> LLMRequest:
        """A short follow-up after a reply with no readable label: shows that reply and asks for
        the answer alone (one user message, as every backend takes)."""
        prompt = f"{self.render(item)}\n\nYour earlier reply was:\n{reply}\n\n{_REASK[(self.kind, self.format)]}"
        max_tokens = 1 if self.format == "short" else _REASK_LONG_MAX_TOKENS
        return LLMRequest(prompt=prompt, max_tokens=max_tokens, answer_tokens=self.answer_tokens)

    @cached_property
    def version_hash(self) -> str:
        """sha256 (hex) of the rendered template and re-ask, format and preset: part of every label key."""
        probe: str | tuple[str, str] = "\0caption\0" if self.kind == "classify" else ("\0first\0", "\0second\0")
        blob = json.dumps(
            {
                "kind": self.kind,
                "goal": self.goal,
                "format": self.format,
                "template": self.render(probe),
                "reask": self.reask(probe, "\0reply\0").prompt,
                "max_tokens": self.max_tokens,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def pointwise(self) -> PromptTemplate:
        """The short classification question with the same goal."""
        return replace(self, kind="classify", format="short")


@dataclass(frozen=True)
class PairwiseFromPointwise:
    """Pair preferences derived from per-caption scores instead of asked as "A or B?".

    Small models answer the pairwise prompt with a position bias (nearly always "1"), so for them
    each caption is scored on its own with ``pointwise`` (short classification) and
    P(first better) = sigmoid(logit p_first - logit p_second); within ``tie_margin`` of 0.5 the pair
    is a tie (label 0).
    """

    pointwise: PromptTemplate
    tie_margin: float = 0.1
    kind: Kind = field(default="rank", init=False)

    def __post_init__(self) -> None:
        if self.pointwise.kind != "classify" or self.pointwise.format != "short":
            raise ConfigError("pairs derived from pointwise scores need a short classification template")
        if not 0.0 <= self.tie_margin < 0.5:
            raise ConfigError(f"tie_margin must be in [0, 0.5), got {self.tie_margin}")

    @cached_property
    def version_hash(self) -> str:
        blob = json.dumps(
            {
                "derived": "pairwise-from-pointwise",
                "pointwise": self.pointwise.version_hash,
                "tie_margin": self.tie_margin,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


LabelSpec = PromptTemplate | PairwiseFromPointwise
