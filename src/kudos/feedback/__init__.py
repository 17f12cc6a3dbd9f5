"""LLM feedback: LLM backends, prompts, reply parsing, the label store and the asynchronous
annotation service."""

from kudos.feedback.annotator import Annotator, AnnotatorConfig, AnnotatorMetrics, Labeler
from kudos.feedback.embedded import EmbeddedLLM, ensure_embedded_model
from kudos.feedback.llm import (
    EndpointPool,
    HTTPConfig,
    LLMBackend,
    LLMError,
    LLMReply,
    LLMRequest,
    OpenAIBackend,
    make_backend,
)
from kudos.feedback.prompts import GOALS, PairwiseFromPointwise, PromptTemplate
from kudos.feedback.store import LabelRecord, LabelStore, StoreError, open_store

__all__ = [
    "GOALS",
    "Annotator",
    "AnnotatorConfig",
    "AnnotatorMetrics",
    "EmbeddedLLM",
    "EndpointPool",
    "HTTPConfig",
    "LLMBackend",
    "LLMError",
    "LLMReply",
    "LLMRequest",
    "LabelRecord",
    "LabelStore",
    "Labeler",
    "OpenAIBackend",
    "PairwiseFromPointwise",
    "PromptTemplate",
    "StoreError",
    "ensure_embedded_model",
    "make_backend",
    "open_store",
]
