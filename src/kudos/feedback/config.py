"""The LLM section of a run's configuration: which LLM labels captions, where the labels live,
and the annotator's and HTTP client's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kudos.feedback.annotator import AnnotatorConfig
from kudos.feedback.endpoints import HTTPConfig


@dataclass
class LLMConfig:
    """Which LLM labels captions and where the labels live.

    ``backend``: ``"embedded"`` (the in-process model shipped on PyPI) or comma-separated
    OpenAI-compatible endpoints (``http://host:8000/v1,http://host2:8000/v1``). ``model``: the
    endpoints' model to ask (``--llm-model``; None: the one model they serve, from
    ``GET /v1/models``); labels are keyed by it (the embedded model's threads and priority are the
    run's CPU budget's, :class:`~kudos.cpu.CPUConfig`). ``store``: SQLite path or ``postgresql://``
    URL; default: the per-user shared store. ``format``: ``"short"`` (one answer token) or
    ``"long"`` (ONI's reasoning format, for large models). ``annotator``: the annotation service
    (batch size; which pairs ranking asks about; whether ``""`` is skipped, see
    :class:`~kudos.feedback.annotator.AnnotatorConfig`). ``http``: the OpenAI-compatible client
    (timeouts, retries, ``client_error_limit_s``: how long every request may be rejected before
    the run stops with a one-line error; see :class:`~kudos.feedback.endpoints.HTTPConfig`).
    """

    backend: str = "embedded"
    model: str | None = None
    store: str | None = None
    format: Literal["short", "long"] = "short"
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
