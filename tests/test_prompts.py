"""Prompt templates: caption last (shared prefix), answer formats, version hashes stable and distinct."""

from __future__ import annotations

import itertools

import pytest

from kudos.errors import KudosError
from kudos.feedback.prompts import GOALS, PairwiseFromPointwise, PromptTemplate

ALL = [PromptTemplate(k, g, f) for k, g, f in itertools.product(("classify", "rank"), GOALS, ("short", "long"))]


def _item(t: PromptTemplate, i: int = 0) -> str | tuple[str, str]:
    return f"You kill the newt {i}!" if t.kind == "classify" else (f"first {i}", f"second {i}")


def test_every_goal_preset_exists() -> None:
    assert set(GOALS) == {"score", "gold", "stairs", "combat", "none"}


@pytest.mark.parametrize("template", ALL, ids=lambda t: f"{t.kind}-{t.goal}-{t.format}")
def test_prefix_is_shared_and_caption_comes_last(template: PromptTemplate) -> None:
    a, b = template.render(_item(template, 1)), template.render(_item(template, 2))
    assert a.startswith(template.prefix) and b.startswith(template.prefix)
    # Nothing after the caption: the tail differs only by the caption text itself.
    assert a.endswith('1!"') or a.endswith('"second 1"')
    assert GOALS[template.goal] in template.prefix


def test_short_format_answers_in_one_token_with_answer_tokens() -> None:
    cls = PromptTemplate("classify", "score", "short")
    rank = PromptTemplate("rank", "score", "short")
    assert (cls.request("x").max_tokens, cls.request("x").answer_tokens) == (1, ("0", "1"))
    # p_positive of a pair is P(first better): answer "1" against "2".
    assert rank.request(("a", "b")).answer_tokens == ("2", "1")
    long = PromptTemplate("classify", "score", "long")
    assert long.request("x").answer_tokens is None and long.request("x").max_tokens >= 256
    assert "<label>[FOO/BAR]</label>" in long.prefix


def test_captions_are_quoted_so_they_cannot_break_the_prompt() -> None:
    t = PromptTemplate()
    assert t.render('He says "hi"\nnow').endswith('"He says \\"hi\\"\\nnow"')


def test_kind_and_item_must_match() -> None:
    with pytest.raises(ValueError):
        PromptTemplate("classify").render(("a", "b"))
    with pytest.raises(ValueError):
        PromptTemplate("rank").render("a")


def test_reask_shows_the_reply_and_asks_for_the_answer_only() -> None:
    t = PromptTemplate("classify", "gold", "long")
    request = t.reask("5 gold pieces.", "I think it is good")
    assert request.prompt.startswith(t.render("5 gold pieces."))
    assert "I think it is good" in request.prompt and request.prompt.rstrip().endswith("FOO or BAR.")
    assert request.max_tokens < t.max_tokens


def test_version_hash_is_stable_and_a_sha256() -> None:
    t = PromptTemplate("rank", "stairs", "long")
    assert t.version_hash == PromptTemplate("rank", "stairs", "long").version_hash
    assert len(t.version_hash) == 64 and int(t.version_hash, 16) >= 0
    # Pinned: any change to the wording must change the hash (and so re-ask everything).
    assert PromptTemplate().version_hash == "b552280f82af6b7367d58716e291dce85a119b6cf684fbd193be48ff9d5dc546"


def test_version_hashes_are_distinct() -> None:
    derived = [PairwiseFromPointwise(PromptTemplate(goal=g), m) for g in GOALS for m in (0.0, 0.1)]
    hashes = [t.version_hash for t in ALL] + [d.version_hash for d in derived]
    assert len(set(hashes)) == len(hashes) == 2 * len(GOALS) * 2 + len(GOALS) * 2


def test_pointwise_twin_and_derived_spec() -> None:
    rank = PromptTemplate("rank", "combat", "long")
    twin = rank.pointwise()
    assert (twin.kind, twin.goal, twin.format) == ("classify", "combat", "short")
    with pytest.raises(KudosError):
        PairwiseFromPointwise(rank)
    with pytest.raises(KudosError):
        PairwiseFromPointwise(twin, tie_margin=0.7)


@pytest.mark.parametrize("field,value", [("kind", "judge"), ("goal", "win"), ("format", "medium")])
def test_bad_options_are_user_errors(field: str, value: str) -> None:
    with pytest.raises(KudosError, match=value):
        PromptTemplate(**{field: value})
