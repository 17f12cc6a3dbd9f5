"""The LLM backend interface: requests in, replies (text and P(positive answer)) out.

Every backend implements :class:`LLMBackend`: :class:`~kudos.feedback.embedded.EmbeddedLLM`
(llama.cpp in-process, the default) and :class:`~kudos.feedback.endpoints.EndpointPool`
(OpenAI-compatible HTTP endpoints); :func:`~kudos.feedback.factory.make_backend` builds one from a
command-line string. This module also holds the log-probability arithmetic both share.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Protocol, Sequence

from kudos.errors import KudosError


@dataclass(frozen=True)
class LLMRequest:
    """One question to the LLM.

    ``answer_tokens``: when set, the backend also returns the probability of ``answer_tokens[1]``
    versus ``answer_tokens[0]`` as the first generated token, if it can.
    ``max_tokens``: 1 for a direct answer; ~512 for ONI's reasoning format.
    """

    prompt: str
    max_tokens: int = 1
    answer_tokens: tuple[str, str] | None = ("0", "1")


@dataclass(frozen=True)
class LLMReply:
    """The LLM's answer to one :class:`LLMRequest`.

    ``p_positive``: P(answer_tokens[1]) / (P(a0) + P(a1)) at the first generated token, None if
    unavailable. ``latency_s``: wall time of the request, seconds.
    """

    text: str
    p_positive: float | None
    latency_s: float
    model_id: str


class LLMError(Exception):
    """The backend could not answer (after its own retries): timeouts, 5xx, refused connections.

    ``replies`` holds, per request of the failed batch, the reply if that request succeeded and
    None otherwise, so a caller keeps the answers it did get.
    """

    def __init__(self, message: str, replies: Sequence[LLMReply | None] = ()) -> None:
        super().__init__(message)
        self.replies = list(replies)


class LLMCancelled(LLMError):
    """The caller's ``cancel`` event was set: the backend stopped after the request in progress
    instead of waiting out a retry or asking the rest (``replies``: what arrived before). Not a
    fault of the backend."""


class LLMConfigError(KudosError):
    """The endpoints reject what is asked of them (an unknown model name, a wrong URL path): a
    misconfiguration to fix, not a fault to retry."""


class LLMBackend(Protocol):
    """What the annotator talks to. ``model_id`` goes into label-store keys."""

    model_id: str

    def generate(self, requests: Sequence[LLMRequest], cancel: threading.Event | None = None) -> list[LLMReply]:
        """Blocking and batched; raises :class:`LLMError` when the backend cannot answer, and
        :class:`LLMCancelled` soon after ``cancel`` is set (a caller that is shutting down)."""
        ...

    def close(self) -> None: ...


def logsumexp(values: Sequence[float]) -> float:
    """log(sum(exp(v))), stable for very negative or large values."""
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def sigmoid(x: float) -> float:
    """1 / (1 + exp(-x)), without overflow for large |x|."""
    return 0.5 * (1.0 + math.tanh(0.5 * x))


def p_from_top_logprobs(top: dict[str, float], answers: tuple[str, str]) -> float | None:
    """P(answers[1]) / (P(answers[0]) + P(answers[1])) from a first token's top log-probabilities.

    Tokens match an answer after stripping whitespace. An answer absent from the top list gets
    the lowest listed log-probability, an upper bound of its own; None if both are absent.
    """
    mass: list[list[float]] = [[], []]
    for token, logprob in top.items():
        for i, answer in enumerate(answers):
            if token.strip() == answer:
                mass[i].append(logprob)
    if not mass[0] and not mass[1]:
        return None
    floor = min(top.values())
    lp = [logsumexp(m) if m else floor for m in mass]
    return sigmoid(lp[1] - lp[0])
